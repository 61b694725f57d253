"""The stream session: StreamRun calls that send the spool and read acks, reconnecting.

The only owner of its condition, which guards the sequencing (the last spooled seq, the
server's watermark, the final status's seq), the send cache, the current call and the helper's
final error. Three threads meet on it: the flusher appends to the spool, the stream thread
reads responses (hello, welcome, acks, commands, going-away) and reconnects with backoff, and
gRPC's request thread sends the spool within the window, with heartbeats when idle.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc

from simtrack.client.rpc_errors import RETRYABLE_CODES, from_rpc_error, status_code
from simtrack.client.worker import _clock, _packing
from simtrack.client.worker._commands import Commands
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._packing import Message
from simtrack.client.worker._spool import Spool, wire_bytes
from simtrack.errors import FailedPrecondition, SimtrackError
from simtrack.v1 import telemetry_pb2

__all__ = ["TRIM_EVERY", "Stream", "default_worker_id"]

log = logging.getLogger(__name__)

TRIM_EVERY = 16  # acknowledged messages deleted from the spool per transaction (at least)


def default_worker_id() -> str:
    """``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


class _Session:
    """One attempt at a StreamRun call."""

    def __init__(self, heartbeat: float) -> None:
        self.welcomed = False
        self.closed = False
        self.going_away = False
        self.progressed = False  # an ack moved the watermark on this stream
        self.next_send = 0
        self.heartbeat = heartbeat
        now = _clock.monotonic()
        self.started = now
        self.last_sent = now
        self.last_received = now
        self.call: Any = None


class Stream:
    """The run's sequenced messages on their way from the spool to the server.

    ``call`` is the StreamRun callable; ``fail`` stops the whole helper with a final error
    (it calls :meth:`set_error`); ``wake`` wakes the flusher (to trim the spool).
    ``mode="sync"`` only uploads what the spool holds (a replay, done once it is all acked).
    """

    def __init__(
        self,
        call: Any,
        run_id: str,
        *,
        metadata: tuple[tuple[str, str], ...],
        worker_id: str,
        spool: Spool,
        options: WorkerOptions,
        mode: Literal["worker", "sync"],
        commands: Commands,
        stop: threading.Event,
        wake: threading.Event,
        fail: Callable[[SimtrackError], None],
    ) -> None:
        self.run_id = run_id
        self.spool = spool
        self.options = options
        self._call = call
        self._metadata = metadata
        self._worker_id = worker_id
        self._mode = mode
        self._commands = commands
        self._stop = stop
        self._wake = wake
        self._fail = fail
        self._cond = threading.Condition()
        self._acked = spool.acked_seq
        self._last_seq = spool.next_seq - 1
        self._final_seq: int | None = None
        self._error: SimtrackError | None = None
        self._session: _Session | None = None
        self._cache: dict[int, bytes] = {}
        self._cache_bytes = 0
        self._first_watermark: int | None = None
        # Sync mode: (seq, kind, points) of what there was to send after the first welcome.
        self._inventory: list[tuple[int, str, int]] | None = None
        self._trimmed_at = _clock.monotonic()
        self.thread = threading.Thread(
            target=self._run, name=f"simtrack-stream-{run_id[:8]}", daemon=True
        )

    @property
    def error(self) -> SimtrackError | None:
        """The error that stopped the helper, if any."""
        return self._error

    @property
    def acked(self) -> int:
        """The server's watermark: every seq up to it is committed."""
        return self._acked

    # ------------------------------------------------------------------ the flusher's side

    def append(self, messages: list[Message], final: bool) -> None:
        """Spool ``messages`` (``final``: the last is the final status) and have them sent."""
        with self._cond:
            seqs = self.spool.append(messages)
            self._last_seq = seqs[-1]
            if final:
                self._final_seq = seqs[-1]
            if self._cache_bytes < self.options.send_cache_bytes:
                for seq, (_, _, body) in zip(seqs, messages, strict=True):
                    self._cache[seq] = body
                    self._cache_bytes += len(body)
            self._cond.notify_all()

    def trim(self, force: bool = False) -> None:
        """Delete acknowledged messages from the spool, a batch at a time (flusher thread).

        Acknowledged messages left in the spool by a death are harmless: the next welcome's
        watermark says to skip them.
        """
        acked = self._acked
        trimmed = self.spool.acked_seq
        if acked > trimmed and (
            force or acked - trimmed >= TRIM_EVERY or _clock.monotonic() - self._trimmed_at >= 1.0
        ):
            self.spool.trim(acked)
            self._trimmed_at = _clock.monotonic()

    def watchdog(self) -> None:
        """Cancel a stream that stopped answering (the stream thread then reconnects)."""
        with self._cond:
            session = self._session
            if session is None or session.closed or session.call is None:
                return
            now = _clock.monotonic()
            stall = self.options.stall_timeout
            waiting_welcome = not session.welcomed and now - session.started > stall
            in_flight = session.welcomed and session.next_send - 1 > self._acked
            stalled = in_flight and now - session.last_received > stall
            call = session.call
        if waiting_welcome or stalled:
            log.warning("run %s: stream unresponsive for %.0f s; reconnecting", self.run_id, stall)
            call.cancel()

    # ------------------------------------------------------------------ the stream thread

    def _finished_locked(self) -> bool:
        """Whether there is nothing left to do (called with the condition held)."""
        if self._mode == "sync":
            return self._first_watermark is not None and self._acked >= self._last_seq
        return self._final_seq is not None and self._acked >= self._final_seq

    def _run(self) -> None:
        attempt = 0
        options = self.options
        while not self._stop.is_set():
            with self._cond:
                if self._finished_locked() or self._error is not None:
                    break
                session = _Session(options.heartbeat_interval)
                self._session = session
            error: grpc.RpcError | None = None
            try:
                call = self._call(self._requests(session), metadata=self._metadata)
                with self._cond:
                    session.call = call
                for response in call:
                    session.last_received = _clock.monotonic()
                    self._on_response(session, response)
            except grpc.RpcError as exc:
                error = exc
            except Exception:  # a bug of ours: drop this stream, keep the data, try again
                log.exception("run %s: stream handling failed", self.run_id)
                if session.call is not None:
                    session.call.cancel()
            finally:
                with self._cond:
                    session.closed = True
                    self._cond.notify_all()
            if session.progressed or session.going_away:
                attempt = 0  # backoff grows only while streams get nowhere
            with self._cond:
                if self._finished_locked() or self._error is not None:
                    break
            if self._stop.is_set():
                break
            if error is not None:
                code = status_code(error)
                if code not in RETRYABLE_CODES:
                    self._fail(from_rpc_error(error))
                    break
                log.info(
                    "run %s: stream broke (%s: %s); reconnecting",
                    self.run_id,
                    code.name,
                    from_rpc_error(error).message,
                )
            else:
                log.info("run %s: stream ended by the server; reconnecting", self.run_id)
            delay = random.uniform(0, min(options.backoff_cap, options.backoff_base * 2**attempt))
            attempt = min(attempt + 1, 30)
            self._stop.wait(delay)

    def _requests(self, session: _Session) -> Iterator[bytes]:
        """The request stream of one call (runs on gRPC's thread): hello, then the spool."""
        yield _packing.hello(
            self.run_id,
            self._worker_id,
            self._acked,
            replay=self._mode == "sync",  # a dead worker's spool must not revive its run
        )
        session.last_sent = _clock.monotonic()
        window = self.options.max_in_flight
        while True:
            body: bytes | None = None
            with self._cond:
                while True:
                    if session.closed or self._stop.is_set() or self._error is not None:
                        return
                    if session.welcomed:
                        if self._finished_locked():
                            return  # half-close: the server ends the call
                        sendable = (
                            not session.going_away
                            and session.next_send <= self._last_seq
                            and session.next_send - self._acked <= window
                        )
                        if sendable:
                            seq = session.next_send
                            session.next_send += 1
                            body = self._cache.get(seq)
                            break
                        if session.going_away and self._acked >= session.next_send - 1:
                            return  # everything sent is acknowledged: let the server go
                        idle = _clock.monotonic() - session.last_sent
                        if idle >= session.heartbeat:
                            seq = 0
                            body = _packing.HEARTBEAT
                            break
                        self._cond.wait(session.heartbeat - idle)
                    else:
                        self._cond.wait(1.0)
            if body is None:
                body = self.spool.get(seq)
                if body is None:
                    if seq <= self._acked:
                        continue
                    log.error("run %s: message %d is missing from the spool", self.run_id, seq)
                    return
            session.last_sent = _clock.monotonic()
            yield wire_bytes(seq, body)

    def _on_response(self, session: _Session, response: telemetry_pb2.StreamRunResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "ack":
            if self._on_ack(response.ack.committed_seq):
                session.progressed = True
        elif kind == "welcome":
            self._on_welcome(session, response.welcome)
            self._commands.welcome(response.welcome.pending_commands)
        elif kind == "command":
            self._commands.dispatch(response.command)
        elif kind == "going_away":
            log.info("run %s: server going away (%s)", self.run_id, response.going_away.reason)
            with self._cond:
                session.going_away = True
                self._cond.notify_all()

    def _on_welcome(self, session: _Session, welcome: telemetry_pb2.Welcome) -> None:
        watermark = welcome.committed_seq
        if welcome.run_outcome and self._mode == "worker":
            outcome = telemetry_pb2.RunOutcome.Name(welcome.run_outcome).removeprefix(
                "RUN_OUTCOME_"
            )
            log.warning(
                "run %s already ended on the server (%s): what this worker sends is still "
                "stored, but the run's status stays",
                self.run_id,
                outcome.lower(),
            )
        with self._cond:
            if not self.spool.based:
                offset = self.spool.rebase(watermark)
                if offset:
                    log.info(
                        "run %s: numbering continues after the server's watermark %d",
                        self.run_id,
                        watermark,
                    )
                    self._cache = {seq + offset: body for seq, body in self._cache.items()}
                    self._last_seq += offset
                    if self._final_seq is not None:
                        self._final_seq += offset
            if watermark < self._acked:
                error = FailedPrecondition(
                    f"the server's watermark of run {self.run_id} went back from "
                    f"{self._acked} to {watermark}: acknowledged data was lost"
                )
                self._error = error
                self._cond.notify_all()
            else:
                self._acked = watermark
                self.spool.trim(watermark)
                self._last_seq = max(self._last_seq, self.spool.next_seq - 1)
                self._drop_cached(watermark)
                if self._first_watermark is None:
                    self._first_watermark = watermark
                    if self._mode == "sync":
                        self._inventory = self.spool.inventory()
                session.next_send = watermark + 1
                if welcome.heartbeat_interval_seconds > 0:
                    session.heartbeat = welcome.heartbeat_interval_seconds
                session.welcomed = True
                self._cond.notify_all()
        if self._error is not None:
            self._fail(self._error)

    def _on_ack(self, committed: int) -> bool:
        with self._cond:
            if committed <= self._acked:
                return False
            self._acked = committed
            self._drop_cached(committed)
            self._cond.notify_all()
            if committed - self.spool.acked_seq >= TRIM_EVERY:
                self._wake.set()  # the flusher deletes acknowledged messages from the spool
        return True

    def _drop_cached(self, acked: int) -> None:
        """Called with the condition held."""
        if not self._cache:
            return
        for seq in [s for s in self._cache if s <= acked]:
            self._cache_bytes -= len(self._cache.pop(seq))

    # ------------------------------------------------------------------ stopping

    def set_error(self, error: SimtrackError) -> None:
        """Record the helper's final error (the first one stays)."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def cancel_call(self) -> None:
        """End the current call, if any (the stream thread then sees the stop, or retries)."""
        with self._cond:
            session = self._session
            self._cond.notify_all()
        if session is not None and session.call is not None:
            session.call.cancel()

    def wait_acked(self, deadline: float | None) -> bool:
        """Wait until the server acknowledged everything spooled so far (or the helper
        stopped); False when ``deadline`` passed first.
        """
        with self._cond:
            target = self._last_seq
            while self._acked < target and self._error is None and not self._stop.is_set():
                if not self._cond.wait(_clock.remaining(deadline, 0.5)) and _clock.expired(
                    deadline
                ):
                    break
            return self._acked >= target

    def wait_finished(self, stall: float) -> bool:
        """Wait until everything is acknowledged, for as long as acknowledgements keep coming.

        Gives up after ``stall`` seconds in which the watermark did not move: a busy server
        that acks slowly is waited for, a gone or stuck one is not.
        """
        with self._cond:
            watermark, moved = self._acked, _clock.monotonic()
            while not self._finished_locked() and self._error is None:
                now = _clock.monotonic()
                if self._acked != watermark:
                    watermark, moved = self._acked, now
                remaining = moved + stall - now
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            return self._finished_locked()

    def uploaded(self) -> tuple[list[tuple[str, int]], int | None]:
        """Sync mode: (kind, points) of each spooled message the server acknowledged, and how
        many there were to send after its first welcome (None: never welcomed).
        """
        with self._cond:
            inventory = self._inventory
            if inventory is None:
                return [], None
            acked = [(kind, points) for seq, kind, points in inventory if seq <= self._acked]
            return acked, len(inventory)
