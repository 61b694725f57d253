"""Packing: what a run logs, as the ``StreamRunRequest`` messages the spool keeps.

Pure functions (no threads, no I/O, no clock): the flusher hands them the buffer it took, the
fronts the values a caller passed. Every message is ``(kind, points, body)``: its kind
("metrics", "events", "progress", "status"), the points or events it holds, and the serialized
request *without* its ``seq`` (the spool numbers it).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Mapping
from typing import Any, Literal

from google.protobuf import struct_pb2, timestamp_pb2

from simtrack.client._convert import to_struct
from simtrack.errors import FieldViolation, InvalidArgument
from simtrack.v1 import telemetry_pb2

__all__ = [
    "HEARTBEAT",
    "KINDS",
    "MAX_EVENT_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "Column",
    "Message",
    "MetricKindName",
    "clean_points",
    "event",
    "final_status",
    "hello",
    "metric_definition",
    "pack_events",
    "pack_metrics",
    "progress",
    "progress_message",
    "status_message",
    "timestamp",
]

MAX_EVENT_BYTES = 1024 * 1024
MAX_EVENT_BATCH_BYTES = 2 * 1024 * 1024
MAX_ERROR_DETAIL_CHARS = 8000
HEARTBEAT = telemetry_pb2.StreamRunRequest(heartbeat=telemetry_pb2.Heartbeat()).SerializeToString()

MetricKindName = Literal["gauge", "counter"]
KINDS: dict[str, int] = {
    "gauge": telemetry_pb2.METRIC_KIND_GAUGE,
    "counter": telemetry_pb2.METRIC_KIND_COUNTER,
}

#: (kind, points, body): one spooled message.
Message = tuple[str, int, bytes]


class Column:
    """One metric's buffered points, as three parallel lists."""

    __slots__ = ("steps", "values", "times")

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []
        self.times: list[float] = []


def pack_metrics(
    cols: Mapping[str, Column],
    units: Mapping[str, tuple[str, int]],
    *,
    points_per_series: int,
    max_series: int,
    max_points: int,
) -> tuple[list[Message], list[InvalidArgument]]:
    """MetricBatch messages of the columns, and an error per point that is not a number.

    Each batch holds at most ``max_series`` series and ``max_points`` points, each series at
    most ``points_per_series`` points; ``units`` gives a metric its (unit, kind). Unusable
    points are left out (a series of nothing else is dropped).
    """
    messages: list[Message] = []
    rejected: list[InvalidArgument] = []
    if not cols:
        return messages, rejected
    request = telemetry_pb2.StreamRunRequest()
    names: set[str] = set()
    points = 0
    longest = max(len(col.values) for col in cols.values())
    # Chunk by chunk across the metrics, so that a batch holds many metrics' chunk k
    # (a metric may appear only once per batch).
    for start in range(0, longest, points_per_series):
        end = start + points_per_series
        for name, col in cols.items():
            total = len(col.values)
            if start >= total:
                continue
            if start == 0 and total <= points_per_series:
                steps, values, times = col.steps, col.values, col.times
            else:
                steps = col.steps[start:end]
                values = col.values[start:end]
                times = col.times[start:end]
            if names and (
                name in names or len(names) >= max_series or points + len(values) > max_points
            ):
                messages.append(("metrics", points, request.SerializeToString()))
                request = telemetry_pb2.StreamRunRequest()
                names.clear()
                points = 0
            unit, kind = units.get(name, ("", telemetry_pb2.METRIC_KIND_UNSPECIFIED))
            batch = request.metrics
            try:
                batch.series.add(
                    name=name, unit=unit, kind=kind, steps=steps, values=values, timestamps=times
                )
            except (TypeError, ValueError, OverflowError):
                steps, values, times, bad = clean_points(name, steps, values, times)
                rejected.extend(bad)
                if not values:
                    continue
                batch.series.add(
                    name=name, unit=unit, kind=kind, steps=steps, values=values, timestamps=times
                )
            names.add(name)
            points += len(values)
    if names:
        messages.append(("metrics", points, request.SerializeToString()))
    return messages, rejected


def clean_points(
    name: str, steps: list[Any], values: list[Any], times: list[Any]
) -> tuple[list[int], list[float], list[float], list[InvalidArgument]]:
    """The points of a series that are numbers, and an error for each one that is not."""
    good: tuple[list[int], list[float], list[float]] = ([], [], [])
    bad: list[InvalidArgument] = []
    for step, value, when in zip(steps, values, times, strict=True):
        try:
            if isinstance(step, bool) or isinstance(value, str | bytes):
                raise TypeError
            checked = telemetry_pb2.MetricSeries(steps=[step], values=[value], timestamps=[when])
        except (TypeError, ValueError, OverflowError):
            violation = FieldViolation(
                "metrics.series",
                f"metric {name!r}: step {step!r} value {value!r} time {when!r}: "
                "step must be an int64 and value / timestamp real numbers",
            )
            bad.append(InvalidArgument([violation]))
            continue
        good[0].append(checked.steps[0])
        good[1].append(checked.values[0])
        good[2].append(checked.timestamps[0])
    return (*good, bad)


def pack_events(
    events: list[telemetry_pb2.Event],
    *,
    max_events: int,
    max_bytes: int = MAX_EVENT_BATCH_BYTES,
) -> list[Message]:
    """EventBatch messages of at most ``max_events`` events and about ``max_bytes`` bytes (a
    batch takes one event over the limit only when it is its first).
    """
    messages: list[Message] = []
    request = telemetry_pb2.StreamRunRequest()
    size = 0
    for item in events:
        event_size = item.ByteSize()
        count = len(request.events.events)
        if count and (count >= max_events or size + event_size > max_bytes):
            messages.append(("events", count, request.SerializeToString()))
            request = telemetry_pb2.StreamRunRequest()
            size = 0
        request.events.events.append(item)
        size += event_size
    if request.events.events:
        messages.append(("events", len(request.events.events), request.SerializeToString()))
    return messages


def progress_message(message: telemetry_pb2.Progress) -> Message:
    """The spooled form of a progress report."""
    return "progress", 0, telemetry_pb2.StreamRunRequest(progress=message).SerializeToString()


def status_message(final: telemetry_pb2.FinalStatus) -> Message:
    """The spooled form of the run's final status."""
    return "status", 0, telemetry_pb2.StreamRunRequest(status=final).SerializeToString()


def hello(run_id: str, worker_id: str, last_acked_seq: int, *, replay: bool) -> bytes:
    """The first message of a StreamRun call (``replay``: a spool's upload, which must not
    revive the run a dead worker left).
    """
    message = telemetry_pb2.Hello(
        run_id=run_id, worker_id=worker_id, last_acked_seq=last_acked_seq, replay=replay
    )
    return telemetry_pb2.StreamRunRequest(hello=message).SerializeToString()


def event(
    step: int,
    type: str,
    payload: Mapping[str, Any] | None,
    agent_id: str | None,
    seconds: float,
) -> telemetry_pb2.Event:
    """An event as ``log_event`` takes it (``type`` 1-100 characters, ``payload`` a JSON
    object, at most 1 MiB in all); InvalidArgument otherwise.
    """
    if not isinstance(type, str) or not 1 <= len(type) <= 100:
        raise InvalidArgument.of("events.events.type", "must be 1-100 characters")
    message = telemetry_pb2.Event(step=step, type=type, agent_id=agent_id or "")
    message.time.CopyFrom(timestamp(seconds))
    if payload:
        struct = to_struct(payload, "events.events.payload")
        if struct is not None:
            message.payload.CopyFrom(struct)
    if message.ByteSize() > MAX_EVENT_BYTES:
        raise InvalidArgument.of("events.events.payload", "an event is limited to 1 MiB")
    return message


def progress(tick: int, total: int, percent: float) -> telemetry_pb2.Progress:
    """A progress report (tick and total >= 0, percent 0-100); InvalidArgument otherwise."""
    if tick < 0 or total < 0 or not 0.0 <= percent <= 100.0:
        raise InvalidArgument.of("progress", "tick, total >= 0 and percent 0-100")
    return telemetry_pb2.Progress(tick=tick, total=total, percent=percent)


def metric_definition(name: str, kind: MetricKindName) -> int:
    """The MetricKind of a ``define_metric`` call; InvalidArgument for a bad name or kind."""
    if kind not in KINDS:
        raise InvalidArgument.of("metrics.series.kind", "must be 'gauge' or 'counter'")
    if not 1 <= len(name) <= 200:
        raise InvalidArgument.of("metrics.series.name", "must be 1-200 characters")
    return KINDS[kind]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Unix seconds as a Timestamp (nanoseconds truncated, never rounded up to the next
    second).
    """
    stamp = timestamp_pb2.Timestamp()
    whole = int(seconds // 1)
    stamp.seconds = whole
    stamp.nanos = min(999_999_999, int((seconds - whole) * 1e9))
    return stamp


def final_status(
    exc: BaseException | None,
    *,
    cancel_requested: bool,
    results: struct_pb2.Struct | None,
) -> telemetry_pb2.FinalStatus:
    """How the run ended: completed; stopped after a cancel, Ctrl-C or the cancellation of
    the asyncio task (which is what Ctrl-C becomes under asyncio); failed otherwise.
    """
    if exc is None or isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        stopped = exc is not None or cancel_requested
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
    if results is not None:
        final.results.CopyFrom(results)
    return final


def _failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    message = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    trace = "".join(traceback.format_exception(exc))
    return message[:MAX_ERROR_DETAIL_CHARS], {
        "type": f"{exc.__class__.__module__}.{exc.__class__.__qualname__}",
        "traceback": trace[-MAX_ERROR_DETAIL_CHARS:],
    }
