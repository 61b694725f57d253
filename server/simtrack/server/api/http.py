"""The API over HTTP: every unary and server-streaming RPC by the Connect protocol (JSON and
binary), gRPC-Web and gRPC, and the dashboard's files at ``/``, on one listener.

One implementation per RPC: the Connect applications generated from our protos
(``simtrack.v1.*_connect``, connect-python) are handed a ``ConnectService`` that runs the gRPC
servicer's own method through the same ``Calls`` (caller, lease, metrics) and maps its errors
from the same ``error_mapping``, details included. StreamRun, the one bidirectional RPC, stays
on gRPC: browsers and HTTP/1.1 cannot carry a stream in both directions at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import hypercorn.asyncio
import hypercorn.config
from connectrpc import _codec  # the codec registry (see _register_checked_codecs)
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from simtrack.errors import InvalidArgument
from simtrack.server.api.calls import Calls
from simtrack.server.api.error_mapping import status_of, to_status
from simtrack.server.api.packed import unpacked
from simtrack.server.api.services import ApiService

log = logging.getLogger(__name__)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
API_PACKAGE = "simtrack."  # /simtrack.v1.RunService/...: the API's paths, never the files
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"  # the built front end
# How long streams ended by a stop get to send their last message before every request still
# running is ended too.
LAST_WORDS = 1.0
# gRPC's code names, as Connect's codes (which spell one of them with one L).
_CODES = {code.name.replace("CANCELED", "CANCELLED"): code for code in Code}


def connect_error(status: status_pb2.Status) -> ConnectError:
    """A google.rpc.Status as the Connect error carrying the same code, message and details."""
    return ConnectError(
        _CODES[code_pb2.Code.Name(status.code)], status.message, details=list(status.details)
    )


def _deadline(ctx: RequestContext[Any, Any]) -> asyncio.Timeout:
    """The caller's deadline (Connect's ``connect-timeout-ms``, gRPC's ``grpc-timeout``)."""
    remaining = ctx.timeout_ms()
    return asyncio.timeout(None if remaining is None else max(remaining, 0) / 1000)


class OpenCalls:
    """The HTTP calls in progress, so a stop ends those still running after its grace itself
    (as gRPC's stop does) rather than have the HTTP server cut their connections: a cut call
    leaves its client no status.

    Two rounds: streams first, each ending UNAVAILABLE in its own protocol; then any request
    still running (a stream that did not end, a unary call, a body that never finishes
    arriving), answered 503 if it has not answered yet.
    """

    def __init__(self) -> None:
        self.streams: set[asyncio.Timeout] = set()
        self.requests: set[asyncio.Timeout] = set()
        self.ended = False  # the streams' round has come: a stream's deadline means the stop

    def stream(self, deadline: asyncio.Timeout) -> contextlib.AbstractContextManager[None]:
        return _held(deadline, self.streams)

    def request(self, deadline: asyncio.Timeout) -> contextlib.AbstractContextManager[None]:
        return _held(deadline, self.requests)

    def end_streams(self) -> None:
        """Bring every open stream's deadline to now: each ends at its next step."""
        self.ended = True
        _expire(self.streams)

    def end_requests(self) -> None:
        """Bring every request's own deadline to now (``HttpApp`` answers it 503)."""
        _expire(self.requests)


@contextlib.contextmanager
def _held(deadline: asyncio.Timeout, deadlines: set[asyncio.Timeout]) -> Iterator[None]:
    deadlines.add(deadline)
    try:
        yield
    finally:
        deadlines.discard(deadline)


def _expire(deadlines: set[asyncio.Timeout]) -> None:
    now = asyncio.get_running_loop().time()
    for deadline in deadlines:
        deadline.reschedule(now)


class ConnectService:
    """A service's methods as connect-python calls them (``list_runs(request, ctx)``), each
    the gRPC servicer's method of that RPC run through ``Calls``.
    """

    def __init__(
        self,
        servicer: object,
        descriptor: ServiceDescriptor,
        protocol: type,
        calls: Calls,
        open_calls: OpenCalls,
    ) -> None:
        # The generated Protocol names each method in snake case (its attributes); matched to
        # the RPC it stands for by name, whatever case rule the generator follows.
        by_name = {method.name.lower(): method for method in descriptor.methods}
        for attribute in vars(protocol):
            method = by_name.get(attribute.replace("_", ""))
            if method is not None:
                setattr(self, attribute, self._bind(servicer, method, calls, open_calls))

    @staticmethod
    def _bind(
        servicer: object, method: MethodDescriptor, calls: Calls, open_calls: OpenCalls
    ) -> Any:
        path = f"/{method.containing_service.full_name}/{method.name}"
        behavior = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            return _grpc_only(method)
        if method.server_streaming:

            async def stream(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
                metadata = ctx.request_headers().allitems()
                try:
                    async with _deadline(ctx) as deadline:
                        with open_calls.stream(deadline):
                            async for response in calls.stream(
                                path, metadata, lambda: behavior(request, ctx)
                            ):
                                yield unpacked(response)
                except TimeoutError:
                    if open_calls.ended:
                        raise ConnectError(
                            Code.UNAVAILABLE, "the server is shutting down: call again"
                        ) from None
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from None
                except Exception as exc:  # noqa: BLE001 - mapped to a status, in one place
                    raise connect_error(status_of(path, exc)) from None

            return stream

        async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            metadata = ctx.request_headers().allitems()
            try:
                async with _deadline(ctx):
                    response = await calls.unary(
                        path,
                        metadata,
                        lambda: behavior(request, ctx),
                        lasting=method.client_streaming,
                    )
                return unpacked(response)  # Connect's codecs take messages
            except TimeoutError:
                raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from None
            except Exception as exc:  # noqa: BLE001
                raise connect_error(status_of(path, exc)) from None

        return unary


def _grpc_only(method: MethodDescriptor) -> Callable[..., AsyncIterator[Any]]:
    async def refuse(requests: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        raise ConnectError(
            Code.UNIMPLEMENTED,
            f"{method.name} streams in both directions and is served over gRPC only "
            "(SIMTRACK_LISTEN, default 127.0.0.1:50051)",
        )
        yield  # an async generator, as the endpoint expects

    return refuse


class _CheckedCodec:
    """A codec whose refusal of the request's bytes is INVALID_ARGUMENT naming ``request``
    (connect-python answers UNKNOWN for bytes or JSON that do not parse).
    """

    def __init__(self, codec: Any) -> None:
        self.codec = codec

    def name(self) -> str:
        return cast(str, self.codec.name())

    def encode(self, message: Message) -> bytes:
        return cast(bytes, self.codec.encode(message))

    def decode(self, data: bytes | bytearray, message: Message) -> Message:
        try:
            return cast(Message, self.codec.decode(data, message))
        except Exception as exc:  # noqa: BLE001 - whatever the parser refuses is the caller's
            kind = "JSON" if self.codec.name() == "json" else "protobuf"
            error = InvalidArgument.of(
                "request",
                f"is not a valid {message.DESCRIPTOR.full_name} in {kind}: {exc}",
            )
            raise connect_error(to_status(error)) from None


def _register_checked_codecs() -> None:
    # connect-python 0.9 looks codecs up in a module-level registry and offers no other hook
    # before it decodes; tests/e2e/test_http.py sends garbage in both encodings, so a change of
    # the library's internals shows there.
    registry: dict[str, Any] = _codec._codecs  # noqa: SLF001
    for name, codec in list(registry.items()):
        if not isinstance(codec, _CheckedCodec):
            registry[name] = _CheckedCodec(codec)


class DashboardFiles(StaticFiles):
    """The built dashboard: its scripts and styles carry their content's hash in their names
    and may be cached for good; ``index.html`` names them, so it is checked again every time
    (an upgraded server's page never asks for files it no longer has).
    """

    async def get_response(self, path: str, scope: Any) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:  # a missing file (Starlette's apps leave it to middleware)
            return PlainTextResponse(exc.detail, status_code=exc.status_code)

    def file_response(self, full_path: Any, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        immutable = Path(full_path).suffix in (".js", ".css")
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if immutable else "no-cache"
        )
        return response


class HttpApp:
    """The ASGI application: ``/simtrack.v1.<Service>/<Method>`` to that service's Connect
    application, anything else to the dashboard's files.
    """

    def __init__(
        self,
        servicers: Mapping[ApiService, object],
        calls: Calls,
        read_max_bytes: int,
        dashboard_dir: Path = DASHBOARD_DIR,
    ) -> None:
        """``servicers``: each service's gRPC servicer, which serves it over HTTP too."""
        _register_checked_codecs()
        self.open_calls = OpenCalls()
        self.services: dict[str, ConnectASGIApplication[Any]] = {
            service.full_name: service.connect_application(
                ConnectService(
                    servicer, service.descriptor, service.connect_protocol, calls, self.open_calls
                ),
                read_max_bytes=read_max_bytes,
            )
            for service, servicer in servicers.items()
        }
        self.files: ASGIApp = (
            DashboardFiles(directory=dashboard_dir, html=True)
            if (dashboard_dir / "index.html").is_file()
            else PlainTextResponse(
                "The dashboard is not built in this checkout: npm run build:dashboard",
                status_code=404,
            )
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop: the server owns it all
            while True:
                event = (await receive())["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{event}.complete"})
                if event == "shutdown":
                    return
        answered = False

        async def answer(message: Any) -> None:
            nonlocal answered
            answered = True
            await send(message)

        try:
            async with asyncio.timeout(None) as deadline:
                with self.open_calls.request(deadline):
                    await self._route(scope, receive, answer)
        except TimeoutError:  # the stop's last round (OpenCalls): a call cut short
            if not answered:
                await _plain("the server is shutting down: call again", 503, scope, receive, send)

    async def _route(self, scope: Any, receive: Any, send: Any) -> None:
        service = re.match(r"/([^/]+)/", scope.get("path", ""))
        if service is None or not service[1].startswith(API_PACKAGE):
            await self.files(scope, receive, send)
        elif (application := self.services.get(service[1])) is None:
            await _plain(f"no service {service[1]}", 404, scope, receive, send)
        elif _grpc_over_http1(scope):
            await _plain(
                "gRPC needs HTTP/2 (its status travels in trailers): connect with HTTP/2, or "
                "use gRPC-Web or Connect over HTTP/1.1",
                505,
                scope,
                receive,
                send,
            )
        else:
            await application(scope, receive, send)


def _grpc_over_http1(scope: Any) -> bool:
    """A gRPC request (not gRPC-Web) on HTTP/1.x, which cannot carry its trailers
    (connect-python would answer it UNKNOWN).
    """
    content_type = dict(scope.get("headers", ())).get(b"content-type", b"")
    grpc = content_type.startswith(b"application/grpc") and b"grpc-web" not in content_type
    return grpc and scope.get("http_version", "1.1").startswith("1")


async def _plain(text: str, status: int, scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse(text, status_code=status)(scope, receive, send)


class HttpListener:
    """``HttpApp`` served by Hypercorn (HTTP/1.1 and HTTP/2, which gRPC needs) on a socket
    bound here, so a port in use fails the start at once and port 0 tells the port it got.
    """

    def __init__(self, app: HttpApp, listen: str, grace: float) -> None:
        """Bind ``listen`` (host:port; port 0: a free one) and serve; ``grace``: how long a
        stop waits for calls in progress (streams end sooner, as on gRPC).
        """
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as bound:
            bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            bound.bind((host, int(port)))
            bound.listen(1024)
            self.address: tuple[str, int] = (host, bound.getsockname()[1])
            # Hypercorn's own socket, on a descriptor of its own: it closes it when it stops.
            listening = os.dup(bound.fileno())
        config = hypercorn.config.Config()
        config.bind = [f"fd://{listening}"]
        config.accesslog = None
        # Hypercorn's own lines at warnings and above: its "Running on ... (CTRL + C to quit)"
        # would stand beside our "simtrack http on" line, naming a key that does not stop us.
        config.errorlog = logging.getLogger("simtrack.http")
        config.errorlog.setLevel(logging.WARNING)
        # Calls still running after ``grace`` are ended by us (``stop``); Hypercorn cuts only
        # a connection that outlives that (a client that reads nothing of its answer).
        config.graceful_timeout = grace + LAST_WORDS + 2
        self.app, self.grace = app, grace
        _log_cut_connections_in_a_line(asyncio.get_running_loop())
        self._stopping = asyncio.Event()
        self._serving: asyncio.Task[None] = asyncio.create_task(
            hypercorn.asyncio.serve(app, config, shutdown_trigger=self._stopping.wait)
        )

    async def stop(self) -> None:
        """Stop accepting; calls in progress get the grace, then the streams still open are
        ended, and a moment later every request still running (``OpenCalls``).
        """
        self._stopping.set()
        if not await self._stopped_within(self.grace):
            log.warning("HTTP calls still open after the %.1fs grace: ending them", self.grace)
            self.app.open_calls.end_streams()
            if not await self._stopped_within(LAST_WORDS):
                self.app.open_calls.end_requests()
        with contextlib.suppress(Exception):
            await self._serving

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._serving)
        except TimeoutError:
            return False
        return True


def _log_cut_connections_in_a_line(loop: asyncio.AbstractEventLoop) -> None:
    """A connection Hypercorn cuts at its graceful timeout (its task cancelled) is logged as
    one warning. Python 3.11's asyncio logs a traceback for it instead, from the callback it
    runs when a connection's task ends (python/cpython#113538, fixed in 3.12).
    """
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        cancelled = isinstance(context.get("exception"), asyncio.CancelledError)
        if cancelled and "StreamReaderProtocol" in context.get("message", ""):
            log.warning("an HTTP connection still busy after the stop's grace was cut")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
