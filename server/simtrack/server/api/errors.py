"""The one place simtrack errors become gRPC statuses (applied to every call by CallInterceptor).

Anything else that escapes a handler is logged with its traceback and reported as INTERNAL with
a reference, never with the traceback itself.
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


def to_status(error: SimtrackError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with BadRequest / ResourceInfo / ErrorInfo details."""
    status = status_pb2.Status(code=code_pb2.Code.Value(error.code_name), message=error.message)
    detail: Any = None
    if isinstance(error, InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
    elif isinstance(error, NotFound):
        detail = error_details_pb2.ResourceInfo(
            resource_type=error.resource_type,
            resource_name=error.resource_id,
            description=f"field {error.field}" if error.field else "",
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


async def abort(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    """End the call with the status of ``exc`` (always raises AbortError)."""
    if isinstance(exc, SimtrackError):
        await context.abort_with_status(rpc_status.to_status(to_status(exc)))
    reference = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (reference %s)", method, reference, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {reference})")
