"""gRPC statuses back to simtrack's exceptions (the inverse of the server's ``to_status``).

The server reports every :class:`~simtrack.errors.SimtrackError` as a gRPC status whose code is
the class's ``code_name``, with a ``google.rpc.BadRequest`` detail for invalid arguments, a
``google.rpc.ResourceInfo`` detail for missing objects and an ``ErrorInfo`` for a sequence
gap. :func:`from_rpc_error` rebuilds the exception a caller can catch; codes simtrack does
not define (UNKNOWN, INTERNAL, DEADLINE_EXCEEDED, ...) become a plain :class:`SimtrackError`
whose ``code_name`` says which.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from simtrack.errors import (
    ERRORS_BY_CODE_NAME,
    FieldViolation,
    InvalidArgument,
    NotFound,
    SequenceGap,
    SimtrackError,
)

__all__ = ["from_rpc_error", "status_code", "RETRYABLE_CODES"]

# Codes after which a worker's stream reconnects (with backoff); anything else is final.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN when the error carries none)."""
    code = getattr(error, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    if callable(details):
        text = details()
        if isinstance(text, str):
            return text
    return str(error)


def _rich_details(error: grpc.RpcError) -> list[Any]:
    """The unpacked google.rpc.Status details of a call, or [] when it has none."""
    if not hasattr(error, "trailing_metadata"):
        return []
    try:
        status = rpc_status.from_call(error)
    except (ValueError, TypeError, AttributeError):
        return []
    if status is None:
        return []
    found: list[Any] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.ErrorInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                found.append(detail)
    return found


def from_rpc_error(error: grpc.RpcError) -> SimtrackError:
    """The simtrack exception a failed gRPC call stands for (raise it ``from error``)."""
    code = status_code(error)
    message = _details(error)
    details = _rich_details(error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        violations = [
            FieldViolation(v.field, v.description)
            for d in details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        return InvalidArgument(violations, message or None)
    if code is grpc.StatusCode.NOT_FOUND:
        info = next((d for d in details if isinstance(d, error_details_pb2.ResourceInfo)), None)
        field = ""
        if info is not None and info.description.startswith("field "):
            field = info.description.removeprefix("field ")
        not_found = NotFound(
            info.resource_type if info is not None else "resource",
            info.resource_name if info is not None else "",
            field,
        )
        if message:  # keep the server's wording
            not_found.message = message
            not_found.args = (message,)
        return not_found
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        for info in details:
            if isinstance(info, error_details_pb2.ErrorInfo) and info.reason == SequenceGap.reason:
                with contextlib.suppress(KeyError, ValueError):
                    expected = int(info.metadata["expected_seq"])
                    return SequenceGap(expected, int(info.metadata["received_seq"]), message)
    cls = ERRORS_BY_CODE_NAME.get(code.name)
    if cls is not None:
        return cls(message)
    generic = SimtrackError(message)
    generic.code_name = code.name
    return generic
