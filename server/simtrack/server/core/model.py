"""The domain's vocabulary and its pure rules: states, transitions, merging, derived status.

Nothing here touches a database or the network, so the rules are unit-tested directly.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from simtrack.errors import FailedPrecondition, FieldViolation, InvalidArgument, prefix, quote

NAME_MAX = 200
TEXT_MAX = 10_000
# PostgreSQL cannot store U+0000 in text or JSON, so no string may carry it, on any database.
NUL = "\x00"
NUL_MESSAGE = "must not contain NUL (U+0000) characters"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what a BIGINT column holds


def utcnow() -> datetime:
    return datetime.now(UTC)


class Framework(StrEnum):
    """Agent framework."""

    BASELINE = "baseline"
    LANGCHAIN = "langchain"
    CREWAI = "crewai"
    CUSTOM = "custom"


class ExperimentStatus(StrEnum):
    """Experiment status, derived from its runs (see derive_experiment_status)."""

    DRAFT = "draft"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class RunStatus(StrEnum):
    """Run lifecycle state (in lifecycle order: GetRunStats lists them so)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    # Asked to pause (PauseRun): the worker holds still until ResumeRun; it stays connected,
    # heartbeats and may end the run. A worker that (re)connects is told so in its welcome.
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


class MetricKind(StrEnum):
    """How a metric behaves."""

    GAUGE = "gauge"
    COUNTER = "counter"


class MetricAggregate(StrEnum):
    """Which summary value of a metric stands for a run (e.g. on a leaderboard)."""

    LATEST = "latest"
    MIN = "min"
    MAX = "max"


class ArtifactType(StrEnum):
    """What a stored file is."""

    REPORT = "report"
    DATA = "data"
    LOG = "log"
    CONFIG = "config"
    MODEL = "model"
    OTHER = "other"


class RankOrder(StrEnum):
    """Which end of a ranking is best."""

    HIGHEST_FIRST = "highest_first"
    LOWEST_FIRST = "lowest_first"


class SimulationStatus(StrEnum):
    """Simulation lifecycle state."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"


RUN_FINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})
# A worker is attached (or was, and may come back): liveness and cancel grace apply.
RUN_ATTACHED = frozenset({RunStatus.RUNNING, RunStatus.PAUSED})
RUN_ACTIVE = frozenset({RunStatus.PENDING, RunStatus.STARTING}) | RUN_ATTACHED

_RUN_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.STARTING, RunStatus.STOPPED}),
    RunStatus.STARTING: frozenset({RunStatus.RUNNING, RunStatus.STOPPED}),
    RunStatus.RUNNING: RUN_FINAL | {RunStatus.PAUSED},
    RunStatus.PAUSED: RUN_FINAL | {RunStatus.RUNNING},
}
_SIMULATION_MOVES: dict[SimulationStatus, frozenset[SimulationStatus]] = {
    SimulationStatus.PENDING: frozenset({SimulationStatus.RUNNING, SimulationStatus.STOPPED}),
    SimulationStatus.RUNNING: frozenset(
        {SimulationStatus.STOPPED, SimulationStatus.COMPLETED, SimulationStatus.FAILED}
    ),
}
SIMULATION_FINAL = frozenset(
    {SimulationStatus.STOPPED, SimulationStatus.COMPLETED, SimulationStatus.FAILED}
)


def check_run_transition(current: RunStatus, new: RunStatus) -> None:
    """Runs move forward: pending -> starting -> running -> final, pending/starting -> stopped;
    a running run may pause and resume (running <-> paused), and a paused run may end too.

    Raises:
        FailedPrecondition: the move is not allowed.

    """
    if new != current and new not in _RUN_MOVES.get(current, frozenset()):
        raise FailedPrecondition(f"run status cannot move from {current} to {new}")


def check_status_update(current: RunStatus, new: RunStatus) -> None:
    """A status an UpdateRun may set: any legal move but pausing and resuming, which go
    through PauseRun and ResumeRun so that the worker is told (a paused run may still end).

    Raises:
        InvalidArgument: a pause or resume (naming run.status).
        FailedPrecondition: the move is not allowed.

    """
    if new != current and new in (RunStatus.PAUSED, RunStatus.RUNNING):
        if RunStatus.PAUSED in (new, current):
            raise InvalidArgument.of(
                "run.status", "pause and resume with PauseRun and ResumeRun: they tell the worker"
            )
    check_run_transition(current, new)


class RunTimeline(Protocol):
    """What a status change touches: the ORM row, or the ingest writer's locked copy of it."""

    status: RunStatus
    started_at: datetime | None
    completed_at: datetime | None
    duration: timedelta | None


def set_run_status(run: RunTimeline, status: RunStatus) -> None:
    """Move a run to ``status``, stamping start and end times; illegal moves raise."""
    check_run_transition(run.status, status)
    if status == run.status:
        return
    now = utcnow()
    if status == RunStatus.RUNNING and run.status != RunStatus.PAUSED:  # not on resume
        run.started_at = now
    if status in RUN_FINAL:
        run.completed_at = now
        run.duration = now - run.started_at if run.started_at is not None else None
    run.status = status


class LivenessTimeline(RunTimeline, Protocol):
    """What the liveness verdict touches (the ORM row, or the ingest writer's copy)."""

    vanished_at: datetime | None


def stands_vanished(run: LivenessTimeline) -> bool:
    """Failed only by the liveness sweep's verdict, which the worker's own account overrules."""
    return run.status == RunStatus.FAILED and run.vanished_at is not None


def settle_vanished(run: LivenessTimeline, status: RunStatus) -> None:
    """The worker's own final status replaces the sweep's verdict (the end time stays)."""
    run.status = status
    run.vanished_at = None


def pause_moves(current: RunStatus, target: RunStatus) -> bool:
    """Whether pausing (``target`` paused) or resuming (``target`` running) moves the run.

    Only a running run pauses and only a paused run resumes; asking again for the state the
    run is in changes nothing (False), so a retried PauseRun or ResumeRun is harmless.

    Raises:
        FailedPrecondition: the run is in no state to pause or resume.

    """
    if current == target:
        return False
    source = RunStatus.RUNNING if target == RunStatus.PAUSED else RunStatus.PAUSED
    if current != source:
        verb = "paused" if target == RunStatus.PAUSED else "resumed"
        raise FailedPrecondition(f"only a {source} run can be {verb}; this run is {current}")
    return True


def check_simulation_transition(current: SimulationStatus, new: SimulationStatus) -> None:
    """Simulations only move forward: pending -> running -> final, pending -> stopped."""
    if new != current and new not in _SIMULATION_MOVES.get(current, frozenset()):
        raise FailedPrecondition(f"simulation status cannot move from {current} to {new}")


def derive_experiment_status(run_statuses: Iterable[RunStatus]) -> ExperimentStatus:
    """An experiment's status follows its runs.

    No runs: draft. Any run pending, starting, running or paused: running. Otherwise (all
    runs ended): completed if at least one run completed, failed if none did.
    """
    statuses = set(run_statuses)
    if not statuses:
        return ExperimentStatus.DRAFT
    if statuses & RUN_ACTIVE:
        return ExperimentStatus.RUNNING
    if RunStatus.COMPLETED in statuses:
        return ExperimentStatus.COMPLETED
    return ExperimentStatus.FAILED


def merge_params(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` over ``base``: nested objects merge key by key, override wins."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def require_id(field: str, value: str) -> str:
    """A UUID given by the caller; malformed ones are rejected rather than silently not found."""
    if not value:
        raise InvalidArgument.of(field, "is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument.of(field, f"{quote(value, 60)} is not a UUID") from None


def optional_id(field: str, value: str) -> str | None:
    """An optional UUID reference; empty means none."""
    return require_id(field, value) if value else None


def require_name(field: str, value: str, *, max_len: int = NAME_MAX) -> str:
    """A required, trimmed, bounded name."""
    name = bounded_text(field, value.strip(), max_len=max_len)
    if not name:
        raise InvalidArgument.of(field, "is required")
    return name


def distinct(field: str, values: list[str]) -> list[str]:
    """``values`` if none repeats; INVALID_ARGUMENT naming the first repetition otherwise."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            raise InvalidArgument.of(f"{field}[{i}]", f"repeats {field}[{seen[value]}]")
        seen[value] = i
    return values


def bounded_text(field: str, value: str, *, max_len: int = TEXT_MAX) -> str:
    """Optional free text with a size limit."""
    if len(value) > max_len:
        raise InvalidArgument.of(field, f"is longer than {max_len} characters")
    if NUL in value:
        raise InvalidArgument.of(field, NUL_MESSAGE)
    return value


def json_object(field: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object a caller sent: only finite numbers, so it round-trips through any database."""
    problems = list(_non_json(field, value))
    if problems:
        raise InvalidArgument(problems)
    return dict(value)


def _non_json(path: str, value: Any) -> Iterable[FieldViolation]:
    if isinstance(value, float) and not math.isfinite(value):
        yield FieldViolation(path, f"{value} is not a JSON number")
    elif isinstance(value, str) and NUL in value:
        yield FieldViolation(path, NUL_MESSAGE)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if NUL in key:
                yield FieldViolation(f"{path}.{quote(key)}", f"key {NUL_MESSAGE}")
            else:
                yield from _non_json(f"{path}.{prefix(key)}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_json(f"{path}[{index}]", item)


def check_range(field: str, value: float, low: float, high: float | None = None) -> None:
    """A number within [low, high]."""
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise InvalidArgument.of(field, f"must be {bound}, got {value}")
