"""The one place simtrack errors become gRPC statuses, for unary calls and streams alike.

Anything else that escapes a handler is logged with its traceback and reported as INTERNAL with
a reference, never with the traceback itself.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from simtrack.errors import InvalidArgument, NotFound, SimtrackError

log = logging.getLogger(__name__)

_OUR_METHODS = "/simtrack.v1."


def to_status(error: SimtrackError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with BadRequest / ResourceInfo details."""
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
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    """End the call with the status of ``exc`` (always raises AbortError)."""
    if isinstance(exc, SimtrackError):
        await context.abort_with_status(rpc_status.to_status(to_status(exc)))
    reference = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (reference %s)", method, reference, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {reference})")


Behavior = Callable[..., Any]


def _wrap_unary_response(method: str, behavior: Behavior) -> Behavior:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, in one place
            await abort(context, method, exc)

    return handler


def _wrap_stream_response(method: str, behavior: Behavior) -> Behavior:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, method, exc)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every simtrack handler (the call and, for streams, its iteration)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_OUR_METHODS):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(method, handler.unary_unary), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(method, handler.unary_stream), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(method, handler.stream_unary), **kwargs
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(method, handler.stream_stream), **kwargs
        )
