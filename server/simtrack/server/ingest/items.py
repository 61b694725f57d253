"""What a worker's stream carries, once decoded: plain data for the writer (no gRPC here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtrack.server.core.model import MetricKind, RunStatus
from simtrack.server.db.chunks import (
    FLOAT,
    STEP,
    Array,
    extreme_step,
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
    vmin: float | None
    vmax: float | None
    last_value: float | None
    last_step: int | None
    lowest, highest = float(values.min()), float(values.max())
    if math.isfinite(lowest) and math.isfinite(highest):  # the common case (NaN propagates)
        vmin, vmax, last_step, last_value = lowest, highest, packed.last, float(values[packed.top])
    else:  # NaN or an infinity among the values: the summaries skip them
        finite = np.isfinite(values)
        if finite.any():
            vmin, vmax = float(values[finite].min()), float(values[finite].max())
            index = int(np.flatnonzero(finite)[steps[finite].argmax()])
            last_step, last_value = int(steps[index]), float(values[index])
        else:
            vmin = vmax = last_value = last_step = None
    return SeriesChunk(
        name=name,
        unit=unit,
        kind=kind,
        n=len(values),
        first_step=packed.first,
        last_step=packed.last,
        vmin=vmin,
        vmax=vmax,
        vmin_step=extreme_step(steps, values, vmin),
        vmax_step=extreme_step(steps, values, vmax),
        last_value=last_value,
        last_value_step=last_step,
        steps=packed.packed,
        vals=values.tobytes(),
        ts=pack_timestamps(stamps, now),
    )


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
