"""The buffer: what ``log_*`` calls hand over until the flusher spools it, and backpressure.

The only owner of its lock: the caller's thread appends under it for a few microseconds, the
flusher swaps the whole buffer out under it, and a full buffer makes ``log_*`` wait on its
condition until the flusher has spooled the previous one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from simtrack.client.worker import _clock, _packing
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._packing import Column, MetricKindName
from simtrack.errors import InvalidArgument, SimtrackError
from simtrack.v1 import telemetry_pb2

__all__ = ["Buffer", "Taken"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """A buffer the flusher took: to pack and spool, then to hand back to :meth:`Buffer.spooled`."""

    cols: dict[str, Column]
    events: list[telemetry_pb2.Event]
    progress: telemetry_pb2.Progress | None
    final: telemetry_pb2.FinalStatus | None
    units: dict[str, tuple[str, int]]
    count: int  # points and events
    requested: int  # the flush requests it answers


class Buffer:
    """Per-metric columns, events, the latest progress and the final status, not yet spooled.

    ``wake`` wakes the flusher; ``stop`` and ``failed`` (the helper's final error) end a wait
    for room.
    """

    def __init__(
        self,
        run_id: str,
        options: WorkerOptions,
        *,
        wake: threading.Event,
        stop: threading.Event,
        failed: Callable[[], SimtrackError | None],
    ) -> None:
        self.run_id = run_id
        self.options = options
        self._wake = wake
        self._stop = stop
        self._failed = failed
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._cols: dict[str, Column] = {}
        self._events: list[telemetry_pb2.Event] = []
        self._progress: telemetry_pb2.Progress | None = None
        self._final_pending: telemetry_pb2.FinalStatus | None = None
        self._buffered = 0  # points in the current buffer
        self._since: float | None = None  # monotonic time of its oldest entry, if any
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
        self._check = False  # fast-path flag: something for raise_pending to look at

    # ------------------------------------------------------------------ the caller's side

    def log_metrics(
        self, step: int, values: Mapping[str, float], timestamp: float | None = None
    ) -> None:
        if self._check:
            self.raise_pending()
        now = _clock.now() if timestamp is None else timestamp
        with self._lock:
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
            self._touch()
            self._buffered += count
            self._unspooled += count
            if self._buffered >= self._flush_at and not self._signaled:
                self._signaled = True
                self._wake.set()

    def _touch(self) -> None:
        """Called with the lock held: the buffer holds something now (its age starts)."""
        if self._since is None:
            self._since = _clock.monotonic()

    def _new_column(self, name: str) -> Column:
        """Called with the lock held, for a metric not in the current buffer."""
        if name not in self._known:
            if not isinstance(name, str) or not 1 <= len(name) <= 200:
                raise InvalidArgument.of(
                    "metrics.series.name", f"metric name {name!r} must be 1-200 characters"
                )
            self._known.add(name)
            per_flush = len(self._known) * self.options.points_per_series
            self._flush_at = max(1, min(per_flush, self._max_buffered // 2))
        col = self._cols[name] = Column()
        return col

    def _wait_for_room(self) -> None:
        """Backpressure: called with the lock held while the buffer is full."""
        while self._unspooled >= self._max_buffered and not self._halted():
            self._wake.set()
            self._cond.wait(0.5)
        if self._halted():
            error = self._failed()
            if error is not None:
                raise error.with_traceback(None)
            self._raise_deferred_locked()  # (the lock is held: not raise_pending)

    def _halted(self) -> bool:
        return self._failed() is not None or self._stop.is_set()

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
            self.raise_pending()
        seconds = _clock.now() if timestamp is None else timestamp
        event = _packing.event(step, type, payload, agent_id, seconds)
        with self._lock:
            if self._unspooled >= self._max_buffered:
                self._wait_for_room()
            self._events.append(event)
            self._touch()
            self._buffered += 1
            self._unspooled += 1
            if len(self._events) >= self.options.max_events_per_batch and not self._signaled:
                self._signaled = True
                self._wake.set()

    def progress(self, tick: int, total: int = 0, percent: float = 0.0) -> None:
        if self._check:
            self.raise_pending()
        message = _packing.progress(tick, total, percent)
        with self._lock:
            self._progress = message
            self._touch()

    def define_metric(self, name: str, unit: str = "", kind: MetricKindName = "gauge") -> None:
        value = _packing.metric_definition(name, kind)
        with self._lock:
            self._units[name] = (unit, value)

    def raise_pending(self) -> None:
        """Raise the helper's final error, a bad point's error, or that the worker is closed."""
        error = self._failed()
        if error is not None:
            raise error.with_traceback(None)
        with self._lock:
            self._raise_deferred_locked()

    def _raise_deferred_locked(self) -> None:
        deferred, self._deferred = self._deferred, None
        self._check = self._closed or self._failed() is not None
        if deferred is not None:
            raise deferred
        if self._closed:
            raise RuntimeError(f"the worker of run {self.run_id} is closed")

    def defer(self, error: SimtrackError) -> None:
        """Report a bad point found while packing on the caller's next log_* call."""
        log.error("run %s: %s (point dropped)", self.run_id, error)
        with self._lock:
            if self._deferred is None:
                self._deferred = error
            self._check = True

    # ------------------------------------------------------------------ the flusher's side

    def flush_due(self, interval: float) -> bool:
        """Whether the flusher (woken, or every ``interval`` seconds) should spool now.

        Now: when asked to (a full buffer, a flush or close waiting on it), when the buffer
        holds ``min_flush_points``, or when its oldest entry would be older than
        ``max_flush_interval`` by the next time. A run logging a little at a time so sends
        one message a second instead of five, each carrying five times the points. (The
        flusher is also woken to trim the spool: that alone spools nothing.)
        """
        with self._lock:
            asked = self._signaled or self._flush_requested > self._flushed or self._closed
            if asked or self._unspooled >= self._max_buffered:
                return True
            if self._since is None:
                return False
            if self._buffered >= self.options.min_flush_points:
                return True
            age_at_next = _clock.monotonic() - self._since + interval
            return age_at_next > max(self.options.max_flush_interval, interval) + 1e-3

    def take(self) -> Taken:
        """Everything buffered (the buffer starts again empty); counted as unspooled until
        :meth:`spooled`.
        """
        with self._lock:
            taken = Taken(
                self._cols,
                self._events,
                self._progress,
                self._final_pending,
                dict(self._units),
                self._buffered,
                self._flush_requested,
            )
            self._cols, self._events = {}, []
            self._progress = self._final_pending = None
            self._buffered = 0
            self._since = None
            self._signaled = False
        return taken

    def spooled(self, taken: Taken) -> None:
        """``taken`` is in the spool (or lost to a broken one): room for more, flush done."""
        with self._lock:
            self._unspooled -= taken.count
            self._flushed = max(self._flushed, taken.requested)
            self._cond.notify_all()

    # ------------------------------------------------------------------ closing

    def close(self, final: telemetry_pb2.FinalStatus | None) -> None:
        """No more log_* calls; ``final`` is spooled after what is buffered."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._check = True
            self._final_pending = final
            self._flush_requested += 1
        self._wake.set()

    def wait_spooled(self, deadline: float | None, flushing: Callable[[], bool]) -> bool:
        """Ask for a flush and wait until what is buffered now is in the spool (or the flusher
        is gone, or the helper failed); False when ``deadline`` passed first.
        """
        with self._lock:
            self._flush_requested += 1
            wanted = self._flush_requested
            self._wake.set()
            while self._flushed < wanted and flushing() and self._failed() is None:
                if not self._cond.wait(_clock.remaining(deadline, 0.5)) and _clock.expired(
                    deadline
                ):
                    return False
        return True

    def release(self, *, failed: bool) -> None:
        """Wake every ``log_*`` waiting for room (``failed``: its next call raises)."""
        with self._lock:
            if failed:
                self._check = True
            self._cond.notify_all()
