"""The gRPC side of every simtrack RPC, in one wrapper: decoding the request, then ``Calls``
(who is calling, the lease, metrics), then errors as gRPC statuses.

The wrapper covers unary calls and the whole iteration of streams, so an error raised while a
stream is running is mapped like any other. Requests are decoded here too, not by grpc before
the wrapper runs (grpc would answer bytes that are not the request message UNKNOWN): the
handlers are registered taking bytes, and a message that does not decode is INVALID_ARGUMENT
naming ``request``, also mid-stream. Calls with a stream in either direction can stay open
past the key cache: they run on a lease that ends them once their key is revoked
(``api.auth``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from simtrack.errors import InvalidArgument
from simtrack.server.api.calls import Calls
from simtrack.server.api.error_mapping import abort
from simtrack.server.api.packed import sending_packed

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
    """Runs each simtrack handler through ``Calls`` (its caller, its lease, its metrics),
    mapping errors to statuses.

    Health and reflection are left alone: load balancers and tools call them without keys.
    """

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        # Each method's wrapped handler, made at its first call: a method's handler does not
        # change, and wrapping it again at each call cost a unary call 2% of its time.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def _unary(
        self, method: str, behavior: Behavior, decode: Decode, *, lasting: bool = False
    ) -> Behavior:
        """A call with one response; ``lasting``: its requests are a stream (UploadArtifact)."""

        async def handler(request: Any, context: Context) -> Any:
            try:
                return await self.calls.unary(
                    method,
                    context.invocation_metadata(),
                    lambda: behavior(decode(request), context),
                    lasting=lasting,
                )
            except grpc.aio.AbortError:  # the status is already out
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status here, in one place
                await abort(context, method, exc)

        return handler

    def _stream(self, method: str, behavior: Behavior, decode: Decode) -> Behavior:
        async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                responses = self.calls.stream(
                    method,
                    context.invocation_metadata(),
                    lambda: behavior(decode(request), context),
                )
                async for response in responses:
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
        method: str = handler_call_details.method
        if (wrapped := self._wrapped.get(method)) is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_OUR_METHODS):
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # grpc hands the handlers bytes (no deserializer); they decode inside the wrapper.
        serialize = sending_packed(handler.response_serializer)
        kwargs = {"request_deserializer": None, "response_serializer": serialize}
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
