"""The worker helper's tuning and the commands it hands to a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Command", "CommandCallback", "WorkerOptions"]


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning of the worker helper; the defaults suit most runs."""

    #: Seconds between time-based flushes of the in-memory buffer to the spool, for a run
    #: that logged ``min_flush_points`` points and events since the last flush.
    flush_interval: float = 0.2
    #: A run that logs less waits until its oldest unspooled point is this many seconds old
    #: (at least ``flush_interval``): fewer, larger messages, each much cheaper for the server
    #: per point, for a second of live view and of points held only in memory at most.
    max_flush_interval: float = 1.0
    #: Points and events that make a time-based flush worth sending at ``flush_interval``.
    min_flush_points: int = 500
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
        for name in (
            "flush_interval",
            "max_flush_interval",
            "backoff_base",
            "backoff_cap",
            "stall_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "points_per_series",
            "min_flush_points",
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
