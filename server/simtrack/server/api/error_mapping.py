"""The one place simtrack errors become statuses (google.rpc.Status, on gRPC as on HTTP).

Anything else that escapes a handler is logged with its traceback and reported as INTERNAL with
a reference, never with the traceback itself.

A status travels in the call's trailing metadata, which gRPC limits (8 KiB soft, 16 KiB hard:
beyond it the caller sees RESOURCE_EXHAUSTED instead of our answer). Messages quote callers'
values short already (``simtrack.errors.quote``); ``to_status`` bounds what is left whatever
an error holds: the message, the number of field violations and every string in the details,
in UTF-8 bytes (grpc-message percent-encodes, details are base64: at most ~6.5 KiB in all).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from simtrack.errors import InvalidArgument, NotFound, SequenceGap, SimtrackError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "simtrack.v1"  # google.rpc.ErrorInfo.domain of simtrack's own reasons
MESSAGE_MAX_BYTES = 512
VIOLATIONS_MAX = 10
FIELD_MAX_BYTES = 100
DESCRIPTION_MAX_BYTES = 200


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (on a character boundary), "…" when cut."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode(errors="ignore") + "…"


def to_status(error: SimtrackError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with BadRequest / ResourceInfo / ErrorInfo details,
    bounded.
    """
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code_name),
        message=_clip(error.message, MESSAGE_MAX_BYTES),
    )
    detail: Any = None
    if isinstance(error, InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(v.field, FIELD_MAX_BYTES),
                    description=_clip(v.description, DESCRIPTION_MAX_BYTES),
                )
                for v in error.violations[:VIOLATIONS_MAX]
            ]
        )
    elif isinstance(error, NotFound):
        detail = error_details_pb2.ResourceInfo(
            resource_type=_clip(error.resource_type, FIELD_MAX_BYTES),
            resource_name=_clip(error.resource_id, DESCRIPTION_MAX_BYTES),
            description=_clip(f"field {error.field}" if error.field else "", FIELD_MAX_BYTES),
        )
    elif isinstance(error, SequenceGap):
        detail = error_details_pb2.ErrorInfo(
            reason=error.reason,
            domain=ERROR_DOMAIN,
            metadata={"expected_seq": str(error.expected), "received_seq": str(error.received)},
        )
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def status_code_name(exc: Exception) -> str:
    """The name of the status code ``abort`` answers ``exc`` with."""
    return exc.code_name if isinstance(exc, SimtrackError) else "INTERNAL"


def status_of(method: str, exc: Exception) -> status_pb2.Status:
    """The status a call of ``method`` that raised ``exc`` ends with, on any transport. What
    is not a simtrack error is logged with its traceback and answered INTERNAL with a reference.
    """
    if isinstance(exc, SimtrackError):
        return to_status(exc)
    reference = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (reference %s)", method, reference, exc_info=exc)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (reference {reference})"
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    """End the gRPC call with the status of ``exc`` (always raises AbortError)."""
    await context.abort_with_status(rpc_status.to_status(status_of(method, exc)))
