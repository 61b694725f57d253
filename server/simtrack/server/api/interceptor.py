"""Per-call concerns of every simtrack RPC, in one wrapper: who is calling, decoding the
request, errors, metrics.

The wrapper covers unary calls and the whole iteration of streams, so an error raised while a
stream is running is mapped like any other. Requests are decoded here too, not by grpc before
the wrapper runs (grpc would answer bytes that are not the request message UNKNOWN): the
handlers are registered taking bytes, and a message that does not decode is INVALID_ARGUMENT
naming ``request``, also mid-stream. Calls with a stream in either direction can stay open
past the key cache: they run on a lease that ends them once their key is revoked
(``api.auth``). Unary calls are counted and timed here; a stream's length says nothing about
the service's latency, so streams have gauges of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from simtrack.errors import InvalidArgument
from simtrack.server.api.auth import CallAuthorizer, until_revoked, while_valid
from simtrack.server.api.error_mapping import abort, status_code_name
from simtrack.server.observability import ServerMetrics

_OUR_METHODS = "/simtrack.v1."

Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]
Parse = Callable[[bytes], Any]  # a generated message class's FromString
Decode = Callable[[Any], Any]  # what a handler is given, from what grpc hands over


def message_parser(parse: Parse | None) -> Parse:
    """``parse`` (a message class's FromString; None: bytes as they are) raising
    INVALID_ARGUMENT on ``request`` for bytes that are not such a message: garbage, truncated,
    invalid UTF-8 in a string, nested deeper than protobuf's decoder allows.
    """
    if parse is None:
        return lambda data: data
    message_class = getattr(parse, "__self__", None)
    name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "the request message")

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - whatever the decoder refuses is the caller's bytes
            raise InvalidArgument.of(
                "request", f"is not a valid {name} (the bytes do not decode as protobuf)"
            ) from None

    return decode


def decoded_stream(parse: Parse) -> Decode:
    """A request stream of bytes as a stream of messages, decoded as they are read."""

    async def messages(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for data in requests:
            yield parse(data)

    return messages


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Runs each simtrack handler as its authenticated caller, mapping errors to statuses.

    Health and reflection are left alone: load balancers and tools call them without keys.
    """

    def __init__(self, authorizer: CallAuthorizer, metrics: ServerMetrics) -> None:
        self.authorizer = authorizer
        self.metrics = metrics

    def _unary(
        self, method: str, behavior: Behavior, decode: Decode, *, lasting: bool = False
    ) -> Behavior:
        """A call with one response; ``lasting``: its requests are a stream (UploadArtifact)."""

        async def handler(request: Any, context: Context) -> Any:
            started = time.perf_counter()

            def done(code: str) -> None:
                # Before the status goes out: a caller that has its answer can scrape it.
                self.metrics.rpc_done(method, code, time.perf_counter() - started)

            try:
                async with self.authorizer.scope(method, context, lasting=lasting) as lease:
                    response = await until_revoked(lease, behavior(decode(request), context))
            except grpc.aio.AbortError:  # the status is already out (e.g. unauthenticated)
                done(_status_name(context))
                raise
            except asyncio.CancelledError:  # the caller went away or its deadline passed
                done("CANCELLED")
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status here, in one place
                done(status_code_name(exc))
                await abort(context, method, exc)
            else:
                done("OK")
                return response

        return handler

    def _stream(self, method: str, behavior: Behavior, decode: Decode) -> Behavior:
        async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async with self.authorizer.scope(method, context, lasting=True) as lease:
                    async for response in while_valid(lease, behavior(decode(request), context)):
                        yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await abort(context, method, exc)

        return handler

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
        # grpc hands the handlers bytes (no deserializer); they decode inside the wrapper.
        kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        parse = message_parser(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, parse), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream, parse), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary, decoded_stream(parse), lasting=True),
                **kwargs,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream, decoded_stream(parse)), **kwargs
        )


def _status_name(context: Context) -> str:
    """The code an aborted call answered with."""
    code: grpc.StatusCode | None = context.code()  # None unless aborted (or set_code)
    return code.name if code is not None else "UNKNOWN"
