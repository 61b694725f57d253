"""What a worker's stream carries, once decoded: plain data for the writer (no gRPC here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simtrack.server.domain.model import MetricKind, RunStatus


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
    last_value: float | None  # the finite value at the highest step, if any
    last_value_step: int | None
    steps: bytes
    vals: bytes
    ts: bytes


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
