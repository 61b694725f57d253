"""What a worker's stream carries, once decoded: plain data for the writer (no gRPC here)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtrack.server.core.model import MetricKind, RunStatus
from simtrack.server.db.chunks import (
    FLOAT,
    STEP,
    Array,
    extremes,
    pack_steps,
    pack_timestamps,
)


@dataclass(slots=True)
class SeriesChunk:
    """One metric's points of one batch, packed little-endian (int64 steps, float64 values)."""

    name: str
    unit: str
    kind: MetricKind
    n: int
    first_step: int
    last_step: int
    vmin: float | None  # finite values only; None when there are none
    vmax: float | None
    vmin_step: int | None  # the lowest step holding vmin (the first in history order)
    vmax_step: int | None
    vmin_ts: float | None  # the timestamp of that point; None unless every value is finite
    vmax_ts: float | None
    last_value: float | None  # the finite value at the highest step, if any
    last_value_step: int | None
    steps: bytes
    vals: bytes
    ts: bytes


def pack_series(
    *,
    name: str,
    unit: str,
    kind: MetricKind,
    steps: Array,
    values: Array,
    stamps: Array | None,
    now: float,
) -> SeriesChunk:
    """One metric's checked points (int64 steps, float64 values and Unix-second timestamps, at
    least one, all as long; no timestamps: ``now``) packed for storage, with the summaries its
    metric row keeps (finite values only).
    """
    # The stored byte order; no copy where it is the machine's.
    steps, values = steps.astype(STEP, copy=False), values.astype(FLOAT, copy=False)
    stamps = None if stamps is None else stamps.astype(FLOAT, copy=False)
    packed = pack_steps(steps)
    last_value: float | None
    last_step: int | None
    found = extremes(steps, values, np.full(1, now) if stamps is None else stamps)
    if found.vmin_ts is not None:  # every value finite: the common case
        last_step, last_value = packed.last, float(values[packed.top])
    elif found.vmin is not None:  # NaN or an infinity among the values: the summaries skip them
        finite = np.isfinite(values)
        index = int(np.flatnonzero(finite)[steps[finite].argmax()])
        last_step, last_value = int(steps[index]), float(values[index])
    else:
        last_value = last_step = None
    return SeriesChunk(
        name=name,
        unit=unit,
        kind=kind,
        n=len(values),
        first_step=packed.first,
        last_step=packed.last,
        vmin=found.vmin,
        vmax=found.vmax,
        vmin_step=found.vmin_step,
        vmax_step=found.vmax_step,
        vmin_ts=found.vmin_ts,
        vmax_ts=found.vmax_ts,
        last_value=last_value,
        last_value_step=last_step,
        steps=packed.packed,
        vals=values.tobytes(),
        ts=pack_timestamps(stamps, now),
    )


SMALL_SERIES = 32  # points: below this, Python on lists beats numpy's per-call cost
_DOUBLES = [struct.Struct(f"<{n}d") for n in range(SMALL_SERIES)]
_LONGS = [struct.Struct(f"<{n}q") for n in range(SMALL_SERIES)]


def pack_small_series(
    *,
    name: str,
    unit: str,
    kind: MetricKind,
    steps: list[int],
    values: list[float],
    stamps: list[float] | None,
    now: float,
) -> SeriesChunk:
    """`pack_series` of fewer than ``SMALL_SERIES`` points, in plain Python: the same chunk.

    A fleet's worker sends a few points per metric per flush; numpy's fixed cost per call
    (~1 µs, a dozen calls per series) would be most of the server's work per point.
    """
    n = len(values)
    first, last = steps[0], steps[-1]
    consecutive = last - first == n - 1 and steps == list(range(first, last + 1))  # C speed
    if consecutive:
        lowest_step, highest_step, top, packed = first, last, n - 1, b""
    else:
        highest_step = max(steps)
        lowest_step, top = min(steps), steps.index(highest_step)
        packed = _LONGS[n].pack(*steps)
    vmin: float | None
    vmax: float | None
    last_value: float | None
    vmin_ts: float | None = None
    vmax_ts: float | None = None
    # Every value finite (a NaN or an infinity would show in the sum; so may an overflow)
    if math.isfinite(sum(values)) or all(map(math.isfinite, values)):
        vmin, vmax, last_step, last_value = min(values), max(values), highest_step, values[top]
        if consecutive:  # list order is step order: the first occurrence has the lowest step
            at_min, at_max = values.index(vmin), values.index(vmax)
        else:  # the first point of the lowest step holding the value
            at_min = min(range(n), key=lambda i: (values[i] != vmin, steps[i], i))
            at_max = min(range(n), key=lambda i: (values[i] != vmax, steps[i], i))
        # The points' own values: equal to min/max, and -0.0 or 0.0 as they are.
        vmin, vmax, vmin_step, vmax_step = (
            values[at_min],
            values[at_max],
            steps[at_min],
            steps[at_max],
        )
        if stamps is None:
            vmin_ts = vmax_ts = now
        else:
            vmin_ts, vmax_ts = stamps[at_min], stamps[at_max]
    else:
        vmin, vmax, vmin_step, vmax_step, last_step, last_value = _finite_summaries(steps, values)
    if stamps is None:
        ts = _DOUBLES[1].pack(now)
    elif stamps.count(stamps[0]) == n:
        ts = _DOUBLES[1].pack(stamps[0])
    else:
        ts = _DOUBLES[n].pack(*stamps)
    return SeriesChunk(
        name, unit, kind, n, lowest_step, highest_step, vmin, vmax, vmin_step, vmax_step,
        vmin_ts, vmax_ts, last_value, last_step, packed, _DOUBLES[n].pack(*values), ts,
    )  # fmt: skip


def _finite_summaries(steps: list[int], values: list[float]) -> tuple[Any, ...]:
    """(vmin, vmax, vmin_step, vmax_step, last_step, last_value) over the finite values only
    (all None when there are none), as `pack_series` has them.
    """
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None, None, None, None, None, None
    low, high = min(values[i] for i in finite), max(values[i] for i in finite)
    at_min = min(finite, key=lambda i: (values[i] != low, steps[i], i))
    at_max = min(finite, key=lambda i: (values[i] != high, steps[i], i))
    top = min(finite, key=lambda i: (-steps[i], i))  # numpy's argmax: the first such point
    return values[at_min], values[at_max], steps[at_min], steps[at_max], steps[top], values[top]


@dataclass(slots=True)
class EventData:
    step: int
    time_ns: int  # nanoseconds since the Unix epoch
    type: str
    agent_id: str | None
    payload: dict[str, Any]


@dataclass(slots=True)
class ProgressData:
    tick: int
    total: int
    percent: float | None


@dataclass(slots=True)
class FinalData:
    status: RunStatus
    error_message: str
    error_details: dict[str, Any]
    results: dict[str, Any]


@dataclass(slots=True)
class Batch:
    """One sequenced message of a run's stream; exactly one of the payloads is set."""

    seq: int
    metrics: list[SeriesChunk] = field(default_factory=list)
    events: list[EventData] = field(default_factory=list)
    progress: ProgressData | None = None
    final: FinalData | None = None
