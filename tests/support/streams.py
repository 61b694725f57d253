"""A raw ``TelemetryService.StreamRun`` client (``RawStream``) as a worker drives it, message by
message, and how a refused call is read (its status and the BadRequest fields it names).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from simtrack.v1 import (
    runs_pb2,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

STREAM_WINDOW = 32  # unacknowledged sequenced messages a worker keeps in flight
# Reconnect quickly: a test's server comes back (or the proxy lets through) within a second.
AIO_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Statuses after which a worker reconnects and resends; anything else ends its upload.
RECONNECTABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


# grpc aio (grpc/grpc#36066): a client write that loses the race with the server's end of the
# call replaces the server's status with this one, on the client side only.
WRITE_RACE_DETAILS = "Internal error from Core"


class StreamEnded(Exception):
    """The stream ended while the test still expected something of it."""

    def __init__(self, stream: RawStream, waiting_for: str) -> None:
        self.code = stream.code
        self.details = stream.details
        super().__init__(
            f"stream of run {stream.run_id} ended with {self.code}: {self.details!r} "
            f"while waiting for {waiting_for}"
        )


class RawStream:
    """One ``TelemetryService.StreamRun`` call, driven message by message as a worker would.

    A reader task records everything the server says (welcome, acks, commands, going away)
    and how the call ended. ``send`` keeps at most ``window`` sequenced messages beyond the
    last ack in flight; every wait is bounded and fails fast when the call has ended.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        run_id: str,
        worker_id: str = "e2e-worker",
        window: int = STREAM_WINDOW,
        authorization: str | None = None,
    ) -> None:
        self.stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        self.metadata = (("authorization", authorization),) if authorization is not None else None
        self.run_id = run_id
        self.worker_id = worker_id
        self.window = window
        self.call: (
            grpc.aio.StreamStreamCall[
                telemetry_pb2.StreamRunRequest, telemetry_pb2.StreamRunResponse
            ]
            | None
        ) = None
        self.welcome: telemetry_pb2.Welcome | None = None
        self.committed = 0  # the highest watermark the server reported (welcome or ack)
        self.acks: list[int] = []
        self.commands: list[runs_pb2.Command] = []
        self.going_away: telemetry_pb2.GoingAway | None = None
        self.sent = 0  # the highest seq written
        self.code: grpc.StatusCode | None = None  # set once the call ended
        self.details = ""
        self.error: grpc.aio.AioRpcError | None = None
        self.violations: list[str] = []  # protocol breaches seen in the server's answers
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._cancelled = False

    async def open(
        self, last_acked: int = 0, timeout: float = 10.0, replay: bool = False
    ) -> telemetry_pb2.Welcome:
        """Say hello (as a live worker, or ``replay``ing a dead one's spool); the welcome."""
        hello = telemetry_pb2.Hello(
            run_id=self.run_id, worker_id=self.worker_id, last_acked_seq=last_acked, replay=replay
        )
        return await self.start(telemetry_pb2.StreamRunRequest(hello=hello), timeout)

    async def start(
        self, first: telemetry_pb2.StreamRunRequest, timeout: float = 10.0
    ) -> telemetry_pb2.Welcome:
        """Open the call with ``first`` as its first message (hello, or not); the welcome."""
        self.call = self.stub.StreamRun(metadata=self.metadata)
        self._reader = asyncio.create_task(self._read(), name=f"stream-{self.run_id}")
        await self._write(first, "the first message")
        await self.wait(lambda: self.welcome is not None, timeout, "the welcome")
        assert self.welcome is not None
        return self.welcome

    async def send(self, message: telemetry_pb2.StreamRunRequest, timeout: float = 20.0) -> None:
        """Write ``message`` once the window has room for its seq.

        After a GoingAway nothing more is sent (the server would drop it): StreamEnded once
        the server has ended the call, as a worker would wait for that before reconnecting.
        """
        seq = message.seq
        if seq > 0:
            await self.wait(
                lambda: seq - self.committed <= self.window or self.going_away is not None,
                timeout,
                f"room to send seq {seq}",
            )
        if self.going_away is not None:
            with contextlib.suppress(TimeoutError):
                await self.wait_end(timeout)
            raise StreamEnded(self, f"sending seq {seq} after GoingAway")
        await self._write(message, f"sending seq {seq}")
        self.sent = max(self.sent, seq)

    async def send_all(
        self, messages: Iterable[telemetry_pb2.StreamRunRequest], timeout: float = 20.0
    ) -> None:
        for message in messages:
            await self.send(message, timeout)

    async def heartbeat(self) -> None:
        heartbeat = telemetry_pb2.StreamRunRequest(heartbeat=telemetry_pb2.Heartbeat())
        await self._write(heartbeat, "a heartbeat")

    async def keep_alive(self, every: float) -> None:
        """Heartbeats until cancelled or the stream ends (which the test sees by itself).

        Each heartbeat is shielded: grpc aio cancels the whole call when a write is cancelled,
        which the kit would count as a stream ended without a status.
        """
        while self.code is None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.heartbeat())
            await asyncio.sleep(every)

    async def wait_acked(self, seq: int, timeout: float = 20.0) -> None:
        await self.wait(lambda: self.committed >= seq, timeout, f"the ack of seq {seq}")

    async def wait_command(self, name: str, timeout: float = 10.0) -> runs_pb2.Command:
        """The first command called ``name`` the server pushed (waiting for it if need be)."""

        def found() -> runs_pb2.Command | None:
            return next((c for c in self.commands if c.name == name), None)

        await self.wait(lambda: found() is not None, timeout, f"a {name!r} command")
        command = found()
        assert command is not None
        return command

    async def wait_end(self, timeout: float = 10.0) -> grpc.StatusCode:
        """How the call ended (waiting for the end)."""
        async with asyncio.timeout(timeout):
            while self.code is None:
                await self._next_change()
        return self.code

    async def finish(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Half-close (no more messages) and wait for the server to end the call."""
        assert self.call is not None
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.done_writing()
        return await self.wait_end(timeout)

    @property
    def write_race(self) -> bool:
        """Whether the status seen is grpc aio's stand-in for the server's (see above): after a
        write that failed, or (seen once, a refused hello) one that returned as the call ended.
        The server never answers it (its answers are checked: ``Server.check_clean``).
        """
        return self.code == grpc.StatusCode.INTERNAL and self.details == WRITE_RACE_DETAILS

    def cancel(self) -> None:
        """Vanish: drop the call without a word (as a dying worker's connection would)."""
        self._cancelled = True
        if self.call is not None:
            self.call.cancel()

    async def close(self) -> None:
        """End the call if it still runs, politely (half-close, as a worker that is done),
        cancelling it only if the server does not end it; stop the reader (teardown).
        """
        if self.call is not None and self.code is None:
            with contextlib.suppress(TimeoutError):
                await self.finish(timeout=5)
        if self.code is None:
            self.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader

    def bad_request_fields(self) -> list[str]:
        """The fields the google.rpc.BadRequest of the call's error status names."""
        return bad_request_fields(self.error) if self.error is not None else []

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds; StreamEnded if the call ends first."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    assert not self.violations, self.violations
                    if self.code is not None:
                        raise StreamEnded(self, what)
                    await self._next_change()
        except TimeoutError:
            raise TimeoutError(
                f"run {self.run_id}: no {what} within {timeout}s (committed {self.committed}, "
                f"sent {self.sent}, ended {self.code})"
            ) from None

    async def _next_change(self) -> None:
        event = self._changed
        await event.wait()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _write(self, message: telemetry_pb2.StreamRunRequest, what: str) -> None:
        assert self.call is not None
        try:
            await self.call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            with contextlib.suppress(TimeoutError):
                await self.wait_end(5)
            raise StreamEnded(self, what) from None

    async def _read(self) -> None:
        assert self.call is not None
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                assert isinstance(response, telemetry_pb2.StreamRunResponse)
                kind = response.WhichOneof("kind")
                if kind == "welcome":
                    if self.welcome is not None:
                        self.violations.append("a second welcome")
                    self.welcome = response.welcome
                    self.committed = response.welcome.committed_seq
                    self.commands.extend(response.welcome.pending_commands)
                elif kind == "ack":
                    seq = response.ack.committed_seq
                    if seq < self.committed:
                        self.violations.append(f"the watermark went back: {self.committed}, {seq}")
                    self.acks.append(seq)
                    self.committed = max(self.committed, seq)
                elif kind == "command":
                    self.commands.append(response.command)
                elif kind == "going_away":
                    self.going_away = response.going_away
                self._changed_now()
            self.code = await self.call.code()
            self.details = await self.call.details() or ""
        except grpc.aio.AioRpcError as error:
            self.error = error
            self.code = error.code()
            self.details = error.details() or ""
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self.code = grpc.StatusCode.CANCELLED
        finally:
            if self.code is None:
                self.code = grpc.StatusCode.UNKNOWN
            self._changed_now()


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of ``error``."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    fields: list[str] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


def refusal(call: Callable[[Any], object], request: Any) -> tuple[grpc.StatusCode, list[str]]:
    """The status code and the BadRequest fields named by a unary call that must fail (the
    test fails if it succeeds): ``refusal(stub.Method, request)``.
    """
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    error = cast(grpc.aio.AioRpcError, caught.value)  # a sync RpcError is a grpc.Call too
    return error.code(), bad_request_fields(error)


Refusal = Callable[[Callable[[Any], object], Any], tuple[grpc.StatusCode, list[str]]]
