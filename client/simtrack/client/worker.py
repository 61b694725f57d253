"""The worker helper: stream a run's telemetry to simtrack from inside a simulation.

::

    from simtrack.client import Worker

    with Worker("127.0.0.1:50051", run_id) as run:
        for tick in range(total):
            ...
            run.log_metrics(tick, {"profit": profit, "inventory": stock})  # never waits on I/O
            run.log_event(tick, "agent_action", {"price": 9.99})
            run.progress(tick + 1, total)
            if run.cancel_requested:
                break
    # completed; stopped after a cancel; failed (and re-raised) when an exception escaped

How it works
------------
* ``log_metrics`` appends to per-metric columns (steps, values, timestamps) in memory; it takes
  a lock for a few microseconds and returns. It does no I/O.
* A background *flusher* thread takes the columns when a size threshold is reached
  (``points_per_series`` points per metric, default 1,000) or every ``flush_interval`` seconds
  (default 0.2), packs them into ``MetricBatch`` messages (at most ``max_series_per_batch``
  series and ``points_per_series`` points per series each), gives each message the run's next
  sequence number and writes it to the *spool*, an SQLite file on disk
  (:mod:`simtrack.client.spool`), before anything is sent.
* A background *stream* thread (the helper's thread) keeps ``TelemetryService.StreamRun`` open:
  hello, then everything in the spool above the watermark the server's welcome reports, with at
  most ``max_in_flight`` (32) messages unacknowledged; each ack deletes what it covers from the
  spool. Commands arrive on this thread and callbacks run on it. When the stream breaks (or
  the server says it is going away) the thread reconnects with exponential backoff and full
  jitter (capped at ``backoff_cap``, 1 s; gRPC's own reconnect backoff is capped at 1 s on the
  channels the helper opens, so a restarted server has its workers back within a second or
  two), says hello again and resends whatever is not acknowledged. Heartbeats keep an idle
  stream alive at the interval the welcome asks for.
* Exiting the ``with`` block sends the final status and waits until the server acknowledged
  everything, then deletes the spool file. It waits as long as acks keep coming (a loaded
  server is slow, not gone) and gives up after ``close_timeout`` seconds without one, with a
  warning that says what it left in the spool (messages, points, whether the final status).

Durability: what is in the spool survives the death of the worker process (even ``kill -9``):
a later ``Worker`` for the same run with the same ``spool_dir``, or ``simtrack sync``
(:func:`sync_spool`), uploads what the server never acknowledged, exactly once. So does any
worker that starts with the same ``spool_dir``: it uploads the spools other runs left there
in the background (``upload_leftovers``), each spool by one process at a time (its file
lock). Only points logged in the last ``flush_interval`` before the death (never more than
``max_buffered_points``) are in memory alone.

Backpressure: memory is bounded. Points logged but not yet written to the spool are counted;
when they reach ``max_buffered_points`` (default 100,000), ``log_metrics`` / ``log_event``
**block** until the flusher has written the previous batch to the spool (milliseconds, unless
the disk is stuck), so the buffer never exceeds that bound by more than one call's points. The
network never blocks the caller: a slow or absent server only makes the spool file grow.

Errors: transient stream failures are retried for ever (the data waits in the spool). Final
ones (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION,
ABORTED -- another worker took the run over --, UNIMPLEMENTED, ...) stop the helper: the mapped
:class:`~simtrack.errors.SimtrackError` is raised by the next ``log_*`` call and on exit, and
the unsent messages stay in the spool. A key revoked while the stream is open ends it with
UNAUTHENTICATED (within the server's key cache interval); ``simtrack sync`` with a valid key
uploads what waits in the spool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from simtrack.client.errors import RETRYABLE_CODES, from_rpc_error, status_code
from simtrack.client.spool import (
    Spool,
    SpoolLocked,
    default_spool_dir,
    spool_path,
    spooled_runs,
    wire_bytes,
)
from simtrack.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    SimtrackError,
    Unavailable,
)
from simtrack.v1 import runs_pb2, telemetry_pb2

__all__ = [
    "AsyncWorker",
    "Command",
    "Leftover",
    "SyncError",
    "SyncedRun",
    "Worker",
    "WorkerOptions",
    "sync_spool",
]

log = logging.getLogger(__name__)

STREAM_METHOD = "/simtrack.v1.TelemetryService/StreamRun"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_MAX_EVENT_BYTES = 1024 * 1024
_MAX_EVENT_BATCH_BYTES = 2 * 1024 * 1024
_MAX_ERROR_DETAIL_CHARS = 8000
RECONNECT_BACKOFF_MS = (100, 1000)  # gRPC's (initial, max) backoff between connection attempts
_TRIM_EVERY = 16  # acknowledged messages deleted from the spool per transaction (at least)
_HEARTBEAT = telemetry_pb2.StreamRunRequest(heartbeat=telemetry_pb2.Heartbeat()).SerializeToString()
_now = time.time
_monotonic = time.monotonic

MetricKindName = Literal["gauge", "counter"]
_KINDS: dict[str, int] = {
    "gauge": telemetry_pb2.METRIC_KIND_GAUGE,
    "counter": telemetry_pb2.METRIC_KIND_COUNTER,
}
_BUILTIN_COMMANDS = frozenset({"cancel", "pause", "resume"})
_KEY_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})  # a valid key would do


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning of the worker helper; the defaults suit most runs."""

    #: Seconds between time-based flushes of the in-memory buffer to the spool.
    flush_interval: float = 0.2
    #: Points per metric per message (a flush starts when the metrics average this many).
    points_per_series: int = 1000
    #: Series per MetricBatch message.
    max_series_per_batch: int = 10
    #: Points per MetricBatch message (the server's limit is 100,000).
    max_points_per_batch: int = 100_000
    #: Events per EventBatch message (the server's limit is 10,000).
    max_events_per_batch: int = 10_000
    #: Points (and events) logged but not yet spooled before ``log_*`` blocks.
    max_buffered_points: int = 100_000
    #: Sequenced messages sent but not yet acknowledged.
    max_in_flight: int = 32
    #: Reconnect backoff: the n-th retry waits uniform(0, min(cap, base * 2**n)) seconds. The
    #: cap is low so that a worker is back within a second or two of its server (gRPC's own
    #: reconnect backoff is capped too, on the channels the helper opens).
    backoff_base: float = 0.1
    backoff_cap: float = 1.0
    #: Leaving the ``with`` block (and ``simtrack sync``) waits as long as acknowledgements keep
    #: coming, and gives up after this many seconds without one (not a deadline for the whole).
    close_timeout: float = 30.0
    #: A stream with messages in flight but no answer for this long is reconnected.
    stall_timeout: float = 30.0
    #: Heartbeat interval until a welcome names one.
    heartbeat_interval: float = 10.0
    #: Bytes of spooled messages also kept in memory for sending (beyond it, read back).
    send_cache_bytes: int = 64 * 1024 * 1024
    #: Upload, in the background, the spools other runs left in the spool directory (a closing
    #: that gave up, a killed worker) when the worker starts (``target`` a ``host:port``).
    upload_leftovers: bool = True

    def __post_init__(self) -> None:
        for name in ("flush_interval", "backoff_base", "backoff_cap", "stall_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "points_per_series",
            "max_series_per_batch",
            "max_points_per_batch",
            "max_events_per_batch",
            "max_buffered_points",
            "max_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_series_per_batch > 100 or self.max_points_per_batch > 100_000:
            raise ValueError("a MetricBatch holds at most 100 series and 100,000 points")
        if self.max_events_per_batch > 10_000:
            raise ValueError("an EventBatch holds at most 10,000 events")


@dataclass(frozen=True)
class Command:
    """A command the server pushed to this worker (cancel, pause, resume or a custom one)."""

    id: str
    name: str
    args: dict[str, Any]


CommandCallback = Callable[[Command], object]


@dataclass(frozen=True)
class SyncedRun:
    """What uploading one run's spool did (:func:`sync_spool`, or a worker at start-up)."""

    run_id: str
    #: Messages the server acknowledged in this upload, and what they held.
    messages: int = 0
    metric_batches: int = 0
    points: int = 0
    event_batches: int = 0
    events: int = 0
    final_status: bool = False
    #: Messages the server had committed before (a lost ack): not sent again.
    already_stored: int = 0
    #: What stays in the spool; None when the spool was removed (everything acknowledged).
    left: Leftover | None = None
    #: Why not everything was uploaded.
    error: Exception | None = None
    #: Another process holds the spool (a live worker, or another upload): not touched.
    in_use: bool = False

    @classmethod
    def of(
        cls,
        run_id: str,
        uploaded: list[tuple[str, int]],
        *,
        already_stored: int,
        left: Leftover | None,
        error: Exception | None,
    ) -> SyncedRun:
        def count(kind: str) -> tuple[int, int]:
            sizes = [points for k, points in uploaded if k == kind]
            return len(sizes), sum(sizes)

        metric_batches, points = count("metrics")
        event_batches, events = count("events")
        return cls(
            run_id,
            messages=len(uploaded),
            metric_batches=metric_batches,
            points=points,
            event_batches=event_batches,
            events=events,
            final_status=count("status")[0] > 0,
            already_stored=already_stored,
            left=left,
            error=error,
        )

    def __str__(self) -> str:
        if self.in_use:
            return f"{self.run_id}: in use by another process (a live worker or upload); skipped"
        final = ", the final status" if self.final_status else ""
        text = (
            f"{self.run_id}: {self.messages} message(s) uploaded: {self.metric_batches} metric "
            f"batch(es) ({self.points} points), {self.event_batches} event batch(es) "
            f"({self.events} events){final}"
        )
        if self.already_stored:
            text += f"; {self.already_stored} were already stored"
        if self.error is not None:
            reason = getattr(self.error, "code_name", type(self.error).__name__)
            text += f"; {reason}: {self.error}"
        return text + (f"; {self.left}" if self.left is not None else "; spool removed")


class SyncError(SimtrackError):
    """:func:`sync_spool` could not upload everything; ``reports`` says per run what it did."""

    def __init__(self, reports: dict[str, SyncedRun]) -> None:
        self.reports = reports
        self.errors = {run: r.error for run, r in reports.items() if r.error is not None}
        text = "; ".join(f"{run}: {err}" for run, err in self.errors.items())
        super().__init__(f"could not sync {len(self.errors)} run(s): {text}")


def default_worker_id() -> str:
    """``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def _channel(target: str | grpc.Channel, credentials: grpc.ChannelCredentials | None) -> Any:
    if not isinstance(target, str):
        return target
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # gRPC backs off up to 120 s between connection attempts by default: a server back
        # after a restart would wait that long for its workers. (The minimum is left alone:
        # gRPC uses it as the connect timeout, which a loaded machine needs.)
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def _struct(value: Mapping[str, Any] | None, field: str) -> struct_pb2.Struct | None:
    if value is None:
        return None
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument.of(field, f"must be a JSON object: {exc}") from None
    return struct


class _Column:
    """One metric's buffered points, as three parallel lists."""

    __slots__ = ("steps", "values", "times")

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []
        self.times: list[float] = []


@dataclass(frozen=True)
class Leftover:
    """What a closed worker (or upload) left in its spool: unacknowledged messages."""

    messages: int
    points: int
    final_status: bool  # the run's final status is among them
    path: Path

    def __str__(self) -> str:
        final = " and the final status" if self.final_status else ""
        return (
            f"{self.messages} message(s) ({self.points} points{final}) not acknowledged, "
            f"kept in {self.path}"
        )


class _Session:
    """One attempt at a StreamRun call."""

    def __init__(self, heartbeat: float) -> None:
        self.welcomed = False
        self.closed = False
        self.going_away = False
        self.progressed = False  # an ack moved the watermark on this stream
        self.next_send = 0
        self.heartbeat = heartbeat
        now = _monotonic()
        self.started = now
        self.last_sent = now
        self.last_received = now
        self.call: Any = None


class _Engine:
    """Batching, spool and stream of one run; Worker and AsyncWorker are fronts over it.

    ``mode="worker"`` is a live run; ``mode="sync"`` only uploads what a spool holds.
    Threads: the caller's (``log_*``), the flusher (buffer -> spool, stall watchdog), the stream
    thread (connect, read responses, run command callbacks) and gRPC's own request thread, which
    runs :meth:`_requests` (spool -> wire).
    """

    def __init__(
        self,
        channel: Any,
        run_id: str,
        *,
        metadata: tuple[tuple[str, str], ...],
        worker_id: str,
        spool: Spool,
        options: WorkerOptions,
        mode: Literal["worker", "sync"] = "worker",
    ) -> None:
        self.run_id = run_id
        self.spool = spool
        self.options = options
        self._mode = mode
        self._metadata = metadata
        self._worker_id = worker_id
        self._stream: Any = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=None,  # the spool holds serialized messages: sent as they are
            response_deserializer=telemetry_pb2.StreamRunResponse.FromString,
        )

        # Buffer (guarded by _buf_lock; _buf_cond waits on it for room / flush completion).
        self._buf_lock = threading.Lock()
        self._buf_cond = threading.Condition(self._buf_lock)
        self._cols: dict[str, _Column] = {}
        self._events: list[telemetry_pb2.Event] = []
        self._progress: telemetry_pb2.Progress | None = None
        self._final_pending: telemetry_pb2.FinalStatus | None = None
        self._buffered = 0  # points in the current buffer
        self._unspooled = 0  # points in the current buffer + being written to the spool
        self._max_buffered = options.max_buffered_points
        self._flush_at = min(options.points_per_series, max(1, self._max_buffered // 2))
        self._signaled = False
        self._flush_requested = 0
        self._flushed = 0
        self._units: dict[str, tuple[str, int]] = {}
        self._known: set[str] = set()
        self._deferred: SimtrackError | None = None
        self._closed = False
        self._check = False  # fast-path flag: something for _raise_pending to look at

        # Sequencing and stream state (guarded by _cond).
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
        self._trimmed_at = _monotonic()

        # Commands.
        self._callbacks: dict[str, list[CommandCallback]] = {}
        self._seen_commands: set[str] = set()
        self._cancel = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._abandoned = False
        self.left: Leftover | None = None  # what shutdown left in the spool
        self._flusher = threading.Thread(
            target=self._flush_loop, name=f"simtrack-flush-{run_id[:8]}", daemon=True
        )
        self._streamer = threading.Thread(
            target=self._stream_loop, name=f"simtrack-stream-{run_id[:8]}", daemon=True
        )

    # ------------------------------------------------------------------ the caller's side

    def start(self) -> None:
        self._flusher.start()
        self._streamer.start()

    def log_metrics(
        self, step: int, values: Mapping[str, float], timestamp: float | None = None
    ) -> None:
        if self._check:
            self._raise_pending()
        now = _now() if timestamp is None else timestamp
        with self._buf_lock:
            if self._unspooled >= self._max_buffered:
                self._wait_for_room()
            cols = self._cols
            for name, value in values.items():
                col = cols.get(name)
                if col is None:
                    col = self._new_column(name)
                col.steps.append(step)
                col.values.append(value)
                col.times.append(now)
            count = len(values)
            self._buffered += count
            self._unspooled += count
            if self._buffered >= self._flush_at and not self._signaled:
                self._signaled = True
                self._wake.set()

    def _new_column(self, name: str) -> _Column:
        """Called with _buf_lock held, for a metric not in the current buffer."""
        if name not in self._known:
            if not isinstance(name, str) or not 1 <= len(name) <= 200:
                raise InvalidArgument.of(
                    "metrics.series.name", f"metric name {name!r} must be 1-200 characters"
                )
            self._known.add(name)
            per_flush = len(self._known) * self.options.points_per_series
            self._flush_at = max(1, min(per_flush, self._max_buffered // 2))
        col = self._cols[name] = _Column()
        return col

    def _wait_for_room(self) -> None:
        """Backpressure: called with _buf_lock held while the buffer is full."""
        while self._unspooled >= self._max_buffered and not (self._error or self._stop.is_set()):
            self._wake.set()
            self._buf_cond.wait(0.5)
        if self._error or self._stop.is_set():
            self._raise_pending()

    def log_event(
        self,
        step: int,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        agent_id: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        if self._check:
            self._raise_pending()
        if not isinstance(type, str) or not 1 <= len(type) <= 100:
            raise InvalidArgument.of("events.events.type", "must be 1-100 characters")
        event = telemetry_pb2.Event(step=step, type=type, agent_id=agent_id or "")
        event.time.CopyFrom(_timestamp(_now() if timestamp is None else timestamp))
        if payload:
            struct = _struct(payload, "events.events.payload")
            if struct is not None:
                event.payload.CopyFrom(struct)
        if event.ByteSize() > _MAX_EVENT_BYTES:
            raise InvalidArgument.of("events.events.payload", "an event is limited to 1 MiB")
        with self._buf_lock:
            if self._unspooled >= self._max_buffered:
                self._wait_for_room()
            self._events.append(event)
            self._buffered += 1
            self._unspooled += 1
            if len(self._events) >= self.options.max_events_per_batch and not self._signaled:
                self._signaled = True
                self._wake.set()

    def progress(self, tick: int, total: int = 0, percent: float = 0.0) -> None:
        if self._check:
            self._raise_pending()
        if tick < 0 or total < 0 or not 0.0 <= percent <= 100.0:
            raise InvalidArgument.of("progress", "tick, total >= 0 and percent 0-100")
        message = telemetry_pb2.Progress(tick=tick, total=total, percent=percent)
        with self._buf_lock:
            self._progress = message

    def define_metric(self, name: str, unit: str = "", kind: MetricKindName = "gauge") -> None:
        if kind not in _KINDS:
            raise InvalidArgument.of("metrics.series.kind", "must be 'gauge' or 'counter'")
        if not 1 <= len(name) <= 200:
            raise InvalidArgument.of("metrics.series.name", "must be 1-200 characters")
        with self._buf_lock:
            self._units[name] = (unit, _KINDS[kind])

    def _raise_pending(self) -> None:
        error = self._error
        if error is not None:
            raise error.with_traceback(None)
        with self._buf_lock:
            deferred, self._deferred = self._deferred, None
            self._check = self._closed or self._error is not None
        if deferred is not None:
            raise deferred
        if self._closed:
            raise RuntimeError(f"the worker of run {self.run_id} is closed")

    def _defer(self, error: SimtrackError) -> None:
        """Report a bad point found while packing on the caller's next log_* call."""
        log.error("run %s: %s (point dropped)", self.run_id, error)
        with self._buf_lock:
            if self._deferred is None:
                self._deferred = error
            self._check = True

    # ------------------------------------------------------------------ commands

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (and not cancelled); True when running again."""
        deadline = None if timeout is None else _monotonic() + timeout
        while not self._resumed.is_set() and not self._cancel.is_set():
            if self._error is not None or self._stop.is_set():
                break
            remaining = 0.2 if deadline is None else min(0.2, deadline - _monotonic())
            if remaining <= 0:
                break
            self._resumed.wait(remaining)
        return self._resumed.is_set() or self._cancel.is_set()

    def on_command(self, name: str, callback: CommandCallback) -> None:
        with self._cond:
            self._callbacks.setdefault(name, []).append(callback)

    def _dispatch(self, message: runs_pb2.Command) -> None:
        if message.id:
            if message.id in self._seen_commands:
                return
            self._seen_commands.add(message.id)
        command = Command(message.id, message.name, json_format.MessageToDict(message.args))
        if self._mode == "sync":
            log.info("run %s: command %r ignored while syncing a spool", self.run_id, command.name)
            return
        log.info("run %s: command %r (id %s)", self.run_id, command.name, command.id)
        if command.name == "cancel":
            self._cancel.set()
            self._resumed.set()  # a paused loop must see the cancel
        elif command.name == "pause":
            self._resumed.clear()
        elif command.name == "resume":
            self._resumed.set()
        with self._cond:
            callbacks = list(self._callbacks.get(command.name, ()))
        if not callbacks and command.name not in _BUILTIN_COMMANDS:
            log.warning(
                "run %s: unknown command %r (id %s, args %s): no callback registered",
                self.run_id,
                command.name,
                command.id,
                command.args,
            )
        for callback in callbacks:
            try:
                callback(command)
            except Exception:
                log.exception("run %s: callback for command %r failed", self.run_id, command.name)

    # ------------------------------------------------------------------ flusher thread

    def _flush_loop(self) -> None:
        interval = self.options.flush_interval
        try:
            while not self._stop.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                self._flush_once()
                self._trim()
                self._watchdog()
            if not self._abandoned:
                self._flush_once()  # keep what is buffered: the spool outlives us
        except Exception as exc:  # a broken spool: nothing can be made durable any more
            log.exception("run %s: flusher failed", self.run_id)
            self._fail(SimtrackError(f"worker spool failed: {exc}"))

    def _flush_once(self) -> None:
        with self._buf_lock:
            cols, self._cols = self._cols, {}
            events, self._events = self._events, []
            progress, self._progress = self._progress, None
            final, self._final_pending = self._final_pending, None
            units = dict(self._units)
            count = self._buffered
            self._buffered = 0
            self._signaled = False
            requested = self._flush_requested
        try:
            messages: list[tuple[str, int, bytes]] = []
            if cols:
                messages.extend(self._pack_metrics(cols, units))
            if events:
                messages.extend(self._pack_events(events))
            if progress is not None:
                body = telemetry_pb2.StreamRunRequest(progress=progress).SerializeToString()
                messages.append(("progress", 0, body))
            if final is not None:
                body = telemetry_pb2.StreamRunRequest(status=final).SerializeToString()
                messages.append(("status", 0, body))
            if messages:
                self._spool_messages(messages, final is not None)
        finally:
            with self._buf_lock:
                self._unspooled -= count
                self._flushed = max(self._flushed, requested)
                self._buf_cond.notify_all()

    def _spool_messages(self, messages: list[tuple[str, int, bytes]], final: bool) -> None:
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

    def _pack_metrics(
        self, cols: dict[str, _Column], units: dict[str, tuple[str, int]]
    ) -> Iterator[tuple[str, int, bytes]]:
        per_series = self.options.points_per_series
        max_series = self.options.max_series_per_batch
        max_points = self.options.max_points_per_batch
        request = telemetry_pb2.StreamRunRequest()
        names: set[str] = set()
        points = 0
        longest = max(len(col.values) for col in cols.values())
        # Chunk by chunk across the metrics, so that a batch holds many metrics' chunk k
        # (a metric may appear only once per batch).
        for start in range(0, longest, per_series):
            end = start + per_series
            for name, col in cols.items():
                total = len(col.values)
                if start >= total:
                    continue
                if start == 0 and total <= per_series:
                    steps, values, times = col.steps, col.values, col.times
                else:
                    steps = col.steps[start:end]
                    values = col.values[start:end]
                    times = col.times[start:end]
                if names and (
                    name in names or len(names) >= max_series or points + len(values) > max_points
                ):
                    yield "metrics", points, request.SerializeToString()
                    request = telemetry_pb2.StreamRunRequest()
                    names.clear()
                    points = 0
                unit, kind = units.get(name, ("", telemetry_pb2.METRIC_KIND_UNSPECIFIED))
                batch = request.metrics
                try:
                    batch.series.add(
                        name=name,
                        unit=unit,
                        kind=kind,
                        steps=steps,
                        values=values,
                        timestamps=times,
                    )
                except (TypeError, ValueError, OverflowError):
                    steps, values, times = self._clean_points(name, steps, values, times)
                    if not values:
                        continue
                    batch.series.add(
                        name=name,
                        unit=unit,
                        kind=kind,
                        steps=steps,
                        values=values,
                        timestamps=times,
                    )
                names.add(name)
                points += len(values)
        if names:
            yield "metrics", points, request.SerializeToString()

    def _clean_points(
        self, name: str, steps: list[Any], values: list[Any], times: list[Any]
    ) -> tuple[list[int], list[float], list[float]]:
        """The points of a series that are numbers; the first bad one is reported."""
        good: tuple[list[int], list[float], list[float]] = ([], [], [])
        for step, value, when in zip(steps, values, times, strict=True):
            try:
                if isinstance(step, bool) or isinstance(value, str | bytes):
                    raise TypeError
                checked = telemetry_pb2.MetricSeries(
                    steps=[step], values=[value], timestamps=[when]
                )
            except (TypeError, ValueError, OverflowError):
                self._defer(
                    InvalidArgument(
                        [
                            FieldViolation(
                                "metrics.series",
                                f"metric {name!r}: step {step!r} value {value!r} time {when!r}: "
                                "step must be an int64 and value / timestamp real numbers",
                            )
                        ]
                    )
                )
                continue
            good[0].append(checked.steps[0])
            good[1].append(checked.values[0])
            good[2].append(checked.timestamps[0])
        return good

    def _pack_events(self, events: list[telemetry_pb2.Event]) -> Iterator[tuple[str, int, bytes]]:
        request = telemetry_pb2.StreamRunRequest()
        size = 0
        for event in events:
            event_size = event.ByteSize()
            count = len(request.events.events)
            if count and (
                count >= self.options.max_events_per_batch
                or size + event_size > _MAX_EVENT_BATCH_BYTES
            ):
                yield "events", count, request.SerializeToString()
                request = telemetry_pb2.StreamRunRequest()
                size = 0
            request.events.events.append(event)
            size += event_size
        if request.events.events:
            yield "events", len(request.events.events), request.SerializeToString()

    def _trim(self, force: bool = False) -> None:
        """Delete acknowledged messages from the spool, a batch at a time (flusher thread).

        Acknowledged messages left in the spool by a death are harmless: the next welcome's
        watermark says to skip them.
        """
        acked = self._acked
        trimmed = self.spool.acked_seq
        if acked > trimmed and (
            force or acked - trimmed >= _TRIM_EVERY or _monotonic() - self._trimmed_at >= 1.0
        ):
            self.spool.trim(acked)
            self._trimmed_at = _monotonic()

    def _watchdog(self) -> None:
        """Cancel a stream that stopped answering (the stream thread then reconnects)."""
        with self._cond:
            session = self._session
            if session is None or session.closed or session.call is None:
                return
            now = _monotonic()
            stall = self.options.stall_timeout
            waiting_welcome = not session.welcomed and now - session.started > stall
            in_flight = session.welcomed and session.next_send - 1 > self._acked
            stalled = in_flight and now - session.last_received > stall
            call = session.call
        if waiting_welcome or stalled:
            log.warning("run %s: stream unresponsive for %.0f s; reconnecting", self.run_id, stall)
            call.cancel()

    # ------------------------------------------------------------------ stream thread

    def _finished_locked(self) -> bool:
        """Whether there is nothing left to do (called with _cond held)."""
        if self._mode == "sync":
            return self._first_watermark is not None and self._acked >= self._last_seq
        return self._final_seq is not None and self._acked >= self._final_seq

    def _stream_loop(self) -> None:
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
                call = self._stream(self._requests(session), metadata=self._metadata)
                with self._cond:
                    session.call = call
                for response in call:
                    session.last_received = _monotonic()
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
        hello = telemetry_pb2.StreamRunRequest(
            hello=telemetry_pb2.Hello(
                run_id=self.run_id,
                worker_id=self._worker_id,
                last_acked_seq=self._acked,
                replay=self._mode == "sync",  # a dead worker's spool must not revive its run
            )
        )
        yield hello.SerializeToString()
        session.last_sent = _monotonic()
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
                        idle = _monotonic() - session.last_sent
                        if idle >= session.heartbeat:
                            seq = 0
                            body = _HEARTBEAT
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
            session.last_sent = _monotonic()
            yield wire_bytes(seq, body)

    def _on_response(self, session: _Session, response: telemetry_pb2.StreamRunResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "ack":
            if self._on_ack(response.ack.committed_seq):
                session.progressed = True
        elif kind == "welcome":
            self._on_welcome(session, response.welcome)
            pending = response.welcome.pending_commands
            if all(command.name != "pause" for command in pending):
                self._resumed.set()  # the welcome tells the run's state: not paused
            for command in pending:
                self._dispatch(command)
        elif kind == "command":
            self._dispatch(response.command)
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
            if committed - self.spool.acked_seq >= _TRIM_EVERY:
                self._wake.set()  # the flusher deletes acknowledged messages from the spool
        return True

    def _drop_cached(self, acked: int) -> None:
        """Called with _cond held."""
        if not self._cache:
            return
        for seq in [s for s in self._cache if s <= acked]:
            self._cache_bytes -= len(self._cache.pop(seq))

    def _fail(self, error: SimtrackError) -> None:
        log.error("run %s: %s: %s", self.run_id, error.code_name, error.message)
        if error.code_name in _KEY_REFUSED and self._mode == "worker":
            log.error(
                "run %s: what the server did not acknowledge stays in %s: `simtrack sync` "
                "with a valid API key uploads it",
                self.run_id,
                self.spool.path,
            )
        with self._cond:
            if self._error is None:
                self._error = error
            session = self._session
            self._cond.notify_all()
        self._stop.set()
        self._wake.set()
        with self._buf_lock:
            self._check = True
            self._buf_cond.notify_all()
        if session is not None and session.call is not None:
            session.call.cancel()

    # ------------------------------------------------------------------ closing

    @property
    def error(self) -> SimtrackError | None:
        return self._error

    def request_final(self, final: telemetry_pb2.FinalStatus | None) -> None:
        """No more log_* calls; spool ``final`` after what is buffered."""
        with self._buf_lock:
            if self._closed:
                return
            self._closed = True
            self._check = True
            self._final_pending = final
            self._flush_requested += 1
        self._wake.set()

    def flush(self, timeout: float | None) -> bool:
        """Spool what is buffered and wait until the server acknowledged all of it."""
        deadline = None if timeout is None else _monotonic() + timeout
        with self._buf_lock:
            self._flush_requested += 1
            wanted = self._flush_requested
            self._wake.set()
            while self._flushed < wanted and self._flusher.is_alive() and self._error is None:
                if not self._buf_cond.wait(_remaining(deadline, 0.5)) and _expired(deadline):
                    return False
        with self._cond:
            target = self._last_seq
            while self._acked < target and self._error is None and not self._stop.is_set():
                if not self._cond.wait(_remaining(deadline, 0.5)) and _expired(deadline):
                    break
            return self._acked >= target

    def wait_finished(self, stall: float) -> bool:
        """Wait until everything is acknowledged, for as long as acknowledgements keep coming.

        Gives up after ``stall`` seconds in which the watermark did not move: a busy server
        that acks slowly is waited for, a gone or stuck one is not.
        """
        with self._cond:
            watermark, moved = self._acked, _monotonic()
            while not self._finished_locked() and self._error is None:
                now = _monotonic()
                if self._acked != watermark:
                    watermark, moved = self._acked, now
                remaining = moved + stall - now
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            return self._finished_locked()

    def shutdown(self, *, graceful: bool) -> bool:
        """Stop the threads and close the spool; True if the spool file was deleted."""
        if graceful:  # let the server end the call after our half-close
            self._streamer.join(timeout=2.0)
        self._stop.set()
        self._wake.set()
        with self._cond:
            session = self._session
            self._cond.notify_all()
        if session is not None and session.call is not None:
            session.call.cancel()
        for thread in (self._streamer, self._flusher):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10.0)
        if not self._abandoned:
            if not self._flusher.is_alive():
                # Never started, or a log_* call that raced a final error's stop of the
                # flusher (after its last flush) left points in the buffer: spool them too.
                self._flush_once()
            self.spool.trim(self._acked)
        with self._buf_lock:
            self._buf_cond.notify_all()
        self.left = self._leftover()
        return self.spool.close(delete_if_empty=not self._abandoned)

    def _leftover(self) -> Leftover:
        """What the spool holds beyond the last acknowledgement (read before it is closed)."""
        messages, points, _ = self.spool.stats()
        final = messages > 0 and self.spool.has_final_status()
        return Leftover(messages, points, final, self.spool.path)

    def abandon(self) -> None:
        """Die like a killed process would: nothing more is flushed or sent (for tests)."""
        self._abandoned = True
        self.shutdown(graceful=False)

    def uploaded(self) -> tuple[list[tuple[str, int]], int | None]:
        """Sync mode: (kind, points) of each spooled message the server acknowledged, and how
        many there were to send after its first welcome (None: never welcomed)."""
        with self._cond:
            inventory = self._inventory
            if inventory is None:
                return [], None
            return [(kind, points) for seq, kind, points in inventory if seq <= self._acked], len(
                inventory
            )

    def pending(self) -> tuple[int, int]:
        """(messages, points) in the spool and not acknowledged (as left, once it is closed)."""
        left = self.left
        if left is None:
            left = self._leftover()
        return left.messages, left.points


def _remaining(deadline: float | None, cap: float) -> float:
    return cap if deadline is None else max(0.0, min(cap, deadline - _monotonic()))


def _expired(deadline: float | None) -> bool:
    return deadline is not None and _monotonic() >= deadline


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    whole = int(seconds // 1)
    stamp.seconds = whole
    stamp.nanos = min(999_999_999, int((seconds - whole) * 1e9))
    return stamp


def _failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    message = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    trace = "".join(traceback.format_exception(exc))
    return message[:_MAX_ERROR_DETAIL_CHARS], {
        "type": f"{exc.__class__.__module__}.{exc.__class__.__qualname__}",
        "traceback": trace[-_MAX_ERROR_DETAIL_CHARS:],
    }


def _open_spool(root: Path, run_id: str) -> Spool:
    """The run's spool, once an upload of it (by ``simtrack sync`` or another worker) is over.

    An upload lets go by itself (when done, or after ``close_timeout`` without an ack); a
    worker streaming the run does not: SpoolLocked.
    """
    waiting = False
    while True:
        try:
            return Spool(root, run_id)
        except SpoolLocked as exc:
            if not exc.by_upload:
                raise
            if not waiting:
                log.info("run %s: waiting for the upload of its spool (%s)", run_id, exc.holder)
                waiting = True
        time.sleep(0.1)


@dataclass(frozen=True)
class _LeftoverScan:
    """Where a starting worker looks for the spools of other runs, and how to upload them."""

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]
    root: Path
    own_run: str
    options: WorkerOptions


class _LeftoverUploads:
    """Uploads, on a background thread, the spools other runs left in a spool directory.

    A worker that starts looks for them (``WorkerOptions.upload_leftovers``): what a closing
    that gave up left, or a killed worker. One scan per directory at a time in a process; a
    spool is uploaded or refused once per process (one whose upload stalled is tried again by
    the next worker that starts); the spool's file lock keeps two processes (or a worker of the
    run, or ``simtrack sync``) off a spool being uploaded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scanning: set[Path] = set()
        self._settled: set[Path] = set()  # spool files uploaded or refused by the server

    def start(self, scan: _LeftoverScan) -> threading.Thread | None:
        with self._lock:
            if scan.root in self._scanning:
                return None
            runs = [
                run_id
                for run_id in spooled_runs(scan.root)
                if run_id != scan.own_run and spool_path(scan.root, run_id) not in self._settled
            ]
            if not runs:
                return None
            self._scanning.add(scan.root)
        thread = threading.Thread(
            target=self._upload, args=(scan, runs), name="simtrack-leftovers", daemon=True
        )
        thread.start()
        return thread

    def _upload(self, scan: _LeftoverScan, runs: list[str]) -> None:
        channel = _channel(scan.target, scan.credentials)
        try:
            for run_id in runs:
                report = _upload_spool(
                    channel,
                    scan.root,
                    run_id,
                    metadata=scan.metadata,
                    options=scan.options,
                    stall=scan.options.close_timeout,
                )
                if report.in_use:
                    continue
                if not isinstance(report.error, Unavailable):  # done, or refused for good
                    with self._lock:
                        self._settled.add(spool_path(scan.root, run_id))
                if report.error is None:
                    log.info("uploaded the spool a previous worker left: %s", report)
                else:
                    log.warning(
                        "could not upload the spool a previous worker left: %s "
                        "(`simtrack sync` tries again)",
                        report,
                    )
        except Exception:  # a bug of ours must not reach the run; the spools stay
            log.exception("uploading the spools left in %s failed", scan.root)
        finally:
            channel.close()
            with self._lock:
                self._scanning.discard(scan.root)


_LEFTOVERS = _LeftoverUploads()


class _RunHandle:
    """What the body of a ``with Worker(...)`` / ``async with AsyncWorker(...)`` block uses."""

    def __init__(
        self,
        target: str | grpc.Channel,
        run_id: str,
        api_key: str | None = None,
        worker_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        options: WorkerOptions | None = None,
        flush_interval: float | None = None,
        max_buffered_points: int | None = None,
        close_timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        options = options or WorkerOptions()
        overrides: dict[str, Any] = {
            "flush_interval": flush_interval,
            "max_buffered_points": max_buffered_points,
            "close_timeout": close_timeout,
        }
        options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
        self.run_id = run_id
        self.options = options
        self._owns_channel = isinstance(target, str)
        self._channel = _channel(target, credentials)
        spool_root = Path(spool_dir).expanduser() if spool_dir is not None else default_spool_dir()
        try:
            spool = _open_spool(spool_root, run_id)
        except SpoolLocked as exc:
            self._close_channel()
            raise FailedPrecondition(f"{exc}: another worker is streaming this run") from None
        except BaseException:
            self._close_channel()
            raise
        if spool.has_final_status():
            spool.close()
            self._close_channel()
            raise FailedPrecondition(
                f"run {run_id} already ended: its final status waits in {spool.path}; "
                "upload it with `simtrack sync`"
            )
        self._engine = _Engine(
            self._channel,
            run_id,
            metadata=_metadata(api_key),
            worker_id=worker_id or default_worker_id(),
            spool=spool,
            options=options,
        )
        self._results: struct_pb2.Struct | None = None
        self._started = False
        self._finished = False
        self._leftovers: _LeftoverScan | None = None
        if options.upload_leftovers and isinstance(target, str):
            self._leftovers = _LeftoverScan(
                target, credentials, _metadata(api_key), spool_root, run_id, options
            )

    @property
    def spool_path(self) -> Path:
        """The run's spool file."""
        return self._engine.spool.path

    def log_metrics(
        self, step: int, values: Mapping[str, float], *, timestamp: float | None = None
    ) -> None:
        """Buffer one point per metric at ``step`` (non-blocking but for backpressure).

        ``values`` maps metric names (1-200 characters) to numbers; ``timestamp`` (Unix seconds)
        defaults to now. Blocks only while ``max_buffered_points`` points wait to be spooled.
        Raises the helper's final error, if it had one, or an InvalidArgument for a point found
        unusable (not a number) since the last call.
        """
        self._engine.log_metrics(step, values, timestamp)

    def log_event(
        self,
        step: int,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        agent_id: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Buffer an event (``type`` 1-100 characters, ``payload`` a JSON object)."""
        self._engine.log_event(step, type, payload, agent_id=agent_id, timestamp=timestamp)

    def progress(self, tick: int, total: int = 0, percent: float = 0.0) -> None:
        """Report progress (the latest call per flush is sent)."""
        self._engine.progress(tick, total, percent)

    def define_metric(self, name: str, unit: str = "", kind: MetricKindName = "gauge") -> None:
        """Give a metric a unit and kind; call it before the metric's first point."""
        self._engine.define_metric(name, unit, kind)

    def set_results(self, results: Mapping[str, Any]) -> None:
        """Results (a JSON object) to store on the run with its final status."""
        self._results = _struct(results, "status.results")

    def on_command(self, name: str, callback: CommandCallback) -> None:
        """Call ``callback(command)`` for each command ``name`` (on the helper's thread).

        Keep callbacks short: acks are read on the same thread. "cancel", "pause" and "resume"
        also set :attr:`cancel_requested` / :attr:`paused`; a command with no callback and no
        built-in meaning is logged and otherwise ignored.
        """
        self._engine.on_command(name, callback)

    @property
    def cancel_requested(self) -> bool:
        """A cancel command arrived: stop soon; leaving the block then reports *stopped*."""
        return self._engine.cancel_requested

    @property
    def paused(self) -> bool:
        """A pause command arrived and no resume since."""
        return self._engine.paused

    @property
    def error(self) -> SimtrackError | None:
        """The error that stopped the helper, if any."""
        return self._engine.error

    def pending(self) -> tuple[int, int]:
        """(messages, points) written to the spool and not yet acknowledged."""
        return self._engine.pending()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._engine.start()
            if self._leftovers is not None:
                _LEFTOVERS.start(self._leftovers)

    def _finish(
        self,
        exc: BaseException | None,
        timeout: float | None = None,
    ) -> None:
        """Send the final status, wait for the acks, stop. Raises the helper's error, if any."""
        if self._finished:
            return
        self._finished = True
        engine = self._engine
        if not self._started:  # never streamed: keep what was logged in the spool, send nothing
            engine.request_final(None)
            engine.shutdown(graceful=False)
            self._close_channel()
            return
        stall = self.options.close_timeout if timeout is None else timeout
        final = None if engine.error is not None else self._final_status(exc)
        engine.request_final(final)
        finished = engine.wait_finished(stall) if final is not None else False
        deleted = engine.shutdown(graceful=finished)
        self._close_channel()
        if not deleted and engine.error is None and engine.left is not None:
            log.warning(
                "run %s: no acknowledgement for %g s while closing: %s%s; the next worker "
                "started with this spool directory, or `simtrack sync`, uploads them",
                self.run_id,
                stall,
                engine.left,
                "" if engine.left.final_status else " (the run stays running until then)",
            )
        if engine.error is not None and engine.error is not exc:
            if exc is None:
                raise engine.error.with_traceback(None)
            log.error("run %s: the helper failed too: %s", self.run_id, engine.error)

    def _final_status(self, exc: BaseException | None) -> telemetry_pb2.FinalStatus:
        """How the run ended: completed; stopped after a cancel, Ctrl-C or the cancellation of
        the asyncio task (which is what Ctrl-C becomes under asyncio); failed otherwise."""
        if exc is None or isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            stopped = exc is not None or self._engine.cancel_requested
            final = telemetry_pb2.FinalStatus(
                outcome=telemetry_pb2.RUN_OUTCOME_STOPPED
                if stopped
                else telemetry_pb2.RUN_OUTCOME_COMPLETED,
                error_message="" if exc is None else exc.__class__.__name__,
            )
        else:
            message, details = _failure(exc)
            final = telemetry_pb2.FinalStatus(
                outcome=telemetry_pb2.RUN_OUTCOME_FAILED, error_message=message
            )
            final.error_details.update(details)
        if self._results is not None:
            final.results.CopyFrom(self._results)
        return final

    def _close_channel(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _simulate_crash(self) -> None:
        """Stop like a killed process: no final flush, no final status (tests only)."""
        self._finished = True
        self._engine.abandon()
        self._close_channel()


class Worker(_RunHandle):
    """A run's telemetry stream, used as a context manager (see the module docstring).

    ``target`` is ``host:port`` (or a ``grpc.Channel`` to share), ``api_key`` goes out as
    ``authorization: Bearer <key>``, ``worker_id`` defaults to ``host:pid``, ``spool_dir``
    to ``$SIMTRACK_SPOOL_DIR`` or ``~/.cache/simtrack/spool``. ``options``
    (:class:`WorkerOptions`) tunes batching, backpressure and reconnects;
    ``flush_interval``, ``max_buffered_points`` and ``close_timeout`` override its fields.

    Opening a Worker for a run whose spool holds unacknowledged messages (a worker of it died)
    resends them first. Leaving the block sends the final status: *completed*; *stopped* when a
    cancel was requested; *failed* with the exception's message and traceback when one escapes
    (it is re-raised). A final helper error (e.g. PermissionDenied) is raised on exit too.
    """

    def __enter__(self) -> Worker:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    def start(self) -> Worker:
        """Start streaming (what ``with`` does on entry)."""
        self._start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Finish the run as *completed* (or *stopped* after a cancel) and wait for the acks."""
        self._finish(None, timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Spool everything logged so far and wait until the server acknowledged it.

        True when everything is acknowledged, False on timeout or after a helper error.
        """
        return self._engine.flush(timeout)

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while the run is paused; True when it may go on (resumed or cancelled)."""
        return self._engine.wait_if_paused(timeout)


class AsyncWorker(_RunHandle):
    """:class:`Worker` for asyncio code: ``async with AsyncWorker(...) as run:``.

    The same engine runs on the same background threads; ``log_metrics`` / ``log_event`` /
    ``progress`` stay plain calls (they do no I/O; under backpressure they block the loop for
    the few milliseconds the flusher needs). ``on_command`` also accepts coroutine functions,
    which run on the event loop that entered the block; an error they raise is logged, like a
    plain callback's. The task's cancellation (what Ctrl-C becomes under ``asyncio.run``) ends
    the run *stopped*, as ``KeyboardInterrupt`` does with :class:`Worker`.
    """

    _loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncWorker:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._finish, exc)

    def on_command(
        self, name: str, callback: Callable[[Command], object | Awaitable[object]]
    ) -> None:
        """Like :meth:`Worker.on_command`; what a callback returns that is awaitable (a
        coroutine function's coroutine) runs on the event loop. An error is logged either way.
        """

        def schedule(command: Command) -> None:
            result = callback(command)  # a plain callback runs here, on the helper's thread
            if inspect.isawaitable(result):
                self._run_on_loop(command, result)

        super().on_command(name, schedule)

    def _run_on_loop(self, command: Command, awaitable: Awaitable[object]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never to run: no "never awaited" warning on top
            log.error(
                "run %s: no event loop to run the callback for command %r",
                self.run_id,
                command.name,
            )
            return

        async def call() -> object:
            return await awaitable

        def report(future: concurrent.futures.Future[object]) -> None:
            if not future.cancelled() and (error := future.exception()) is not None:
                log.error(
                    "run %s: callback for command %r failed",
                    self.run_id,
                    command.name,
                    exc_info=error,
                )

        asyncio.run_coroutine_threadsafe(call(), loop).add_done_callback(report)

    async def flush(self, timeout: float | None = None) -> bool:
        """Spool everything logged so far and wait until the server acknowledged it."""
        return await asyncio.to_thread(self._engine.flush, timeout)

    async def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Wait while the run is paused; True when it may go on."""
        return await asyncio.to_thread(self._engine.wait_if_paused, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Finish the run (completed, or stopped after a cancel) and wait for the acks."""
        await asyncio.to_thread(self._finish, None, timeout)


def sync_spool(
    target: str | grpc.Channel,
    spool_dir: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    *,
    timeout: float = 60.0,
    options: WorkerOptions | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> dict[str, SyncedRun]:
    """Upload every run left in a spool directory; what was done, per run.

    Runs whose spool another process holds (a live worker, another upload) are skipped and
    reported ``in_use``. A spool is removed only once the server acknowledged every message in
    it; each run's upload gives up after ``timeout`` seconds without an acknowledgement.
    Nothing is added to a run: if its worker died before sending a final status, the run ends
    by the server's heartbeat timeout (or by a new worker for it). Raises :class:`SyncError`
    (with every run's report) when something could not be uploaded.
    """
    root = Path(spool_dir).expanduser() if spool_dir is not None else default_spool_dir()
    options = options or WorkerOptions()
    channel = _channel(target, credentials)
    try:
        reports = {
            run_id: _upload_spool(
                channel, root, run_id, metadata=_metadata(api_key), options=options, stall=timeout
            )
            for run_id in spooled_runs(root)
        }
    finally:
        if isinstance(target, str):
            channel.close()
    if any(report.error is not None for report in reports.values()):
        raise SyncError(reports)
    return reports


def _upload_spool(
    channel: Any,
    root: Path,
    run_id: str,
    *,
    metadata: tuple[tuple[str, str], ...],
    options: WorkerOptions,
    stall: float,
) -> SyncedRun:
    """Upload what one run's spool holds (unless another process holds it)."""
    try:
        spool = Spool(root, run_id, holder="upload")
    except SpoolLocked:
        return SyncedRun(run_id, in_use=True)
    except (ValueError, OSError) as exc:
        return SyncedRun(run_id, error=exc)
    waiting = spool.stats()[0]
    if waiting == 0:
        spool.close(delete_if_empty=True)
        return SyncedRun(run_id)
    engine = _Engine(
        channel,
        run_id,
        metadata=metadata,
        worker_id=f"sync:{default_worker_id()}",
        spool=spool,
        options=options,
        mode="sync",
    )
    engine.start()
    finished = engine.wait_finished(stall)
    deleted = engine.shutdown(graceful=finished)
    error: Exception | None = engine.error
    if error is None and not finished:
        error = Unavailable(f"no acknowledgement for {stall:g} s")
    uploaded, to_send = engine.uploaded()
    return SyncedRun.of(
        run_id,
        uploaded,
        already_stored=0 if to_send is None else waiting - to_send,
        left=None if deleted else engine.left,
        error=error,
    )
