"""The domain's pure rules: status transitions, derived experiment status, merging, validation."""

from __future__ import annotations

import itertools
import math

import pytest

from simtrack.errors import FailedPrecondition, InvalidArgument
from simtrack.server.core.model import (
    ExperimentStatus,
    RunStatus,
    SimulationStatus,
    check_range,
    check_run_transition,
    check_simulation_transition,
    check_status_update,
    derive_experiment_status,
    json_object,
    merge_params,
    pause_moves,
    require_id,
    require_name,
)

S = RunStatus
LEGAL_RUN_MOVES = {
    (S.PENDING, S.STARTING),
    (S.PENDING, S.STOPPED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.STOPPED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.STOPPED),
    (S.RUNNING, S.PAUSED),
    (S.PAUSED, S.RUNNING),
    (S.PAUSED, S.COMPLETED),  # the worker may end a paused run
    (S.PAUSED, S.FAILED),  # or the liveness sweep
    (S.PAUSED, S.STOPPED),  # or a cancel
}


@pytest.mark.parametrize(("current", "new"), [(a, b) for a, b in itertools.product(S, S) if a != b])
def test_run_transitions_follow_the_table(current: RunStatus, new: RunStatus) -> None:
    if (current, new) in LEGAL_RUN_MOVES:
        check_run_transition(current, new)
    else:
        with pytest.raises(FailedPrecondition, match=f"from {current} to {new}"):
            check_run_transition(current, new)


@pytest.mark.parametrize("status", list(S))
def test_staying_in_the_same_run_status_is_allowed(status: RunStatus) -> None:
    check_run_transition(status, status)


def test_final_run_states_are_final() -> None:
    for final, other in itertools.product((S.COMPLETED, S.FAILED, S.STOPPED), S):
        if final != other:
            with pytest.raises(FailedPrecondition):
                check_run_transition(final, other)


@pytest.mark.parametrize("current", list(S))
def test_only_a_running_run_pauses_and_only_a_paused_one_resumes(current: RunStatus) -> None:
    for target, source in ((S.PAUSED, S.RUNNING), (S.RUNNING, S.PAUSED)):
        if current == target:
            assert pause_moves(current, target) is False  # asked again: nothing changes
        elif current == source:
            assert pause_moves(current, target) is True
        else:
            with pytest.raises(FailedPrecondition, match=f"this run is {current}"):
                pause_moves(current, target)


def test_update_run_neither_pauses_nor_resumes_but_may_end_a_paused_run() -> None:
    for current, new in ((S.RUNNING, S.PAUSED), (S.PAUSED, S.RUNNING), (S.PENDING, S.PAUSED)):
        with pytest.raises(InvalidArgument, match="PauseRun") as error:
            check_status_update(current, new)
        assert error.value.violations[0].field == "run.status"
    for current, new in ((S.PAUSED, S.PAUSED), (S.PAUSED, S.COMPLETED), (S.RUNNING, S.FAILED)):
        check_status_update(current, new)
    with pytest.raises(FailedPrecondition):
        check_status_update(S.PAUSED, S.STARTING)


def test_simulation_transitions() -> None:
    check_simulation_transition(SimulationStatus.PENDING, SimulationStatus.RUNNING)
    check_simulation_transition(SimulationStatus.RUNNING, SimulationStatus.COMPLETED)
    check_simulation_transition(SimulationStatus.PENDING, SimulationStatus.STOPPED)
    with pytest.raises(FailedPrecondition):
        check_simulation_transition(SimulationStatus.PENDING, SimulationStatus.COMPLETED)
    with pytest.raises(FailedPrecondition):
        check_simulation_transition(SimulationStatus.COMPLETED, SimulationStatus.RUNNING)


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([], ExperimentStatus.DRAFT),
        ([S.PENDING], ExperimentStatus.RUNNING),
        ([S.COMPLETED, S.RUNNING], ExperimentStatus.RUNNING),
        ([S.PAUSED], ExperimentStatus.RUNNING),
        ([S.COMPLETED, S.PAUSED, S.FAILED], ExperimentStatus.RUNNING),
        ([S.COMPLETED, S.FAILED], ExperimentStatus.COMPLETED),
        ([S.FAILED, S.STOPPED], ExperimentStatus.FAILED),
        ([S.STOPPED], ExperimentStatus.FAILED),
    ],
)
def test_experiment_status_follows_runs(runs: list[RunStatus], expected: ExperimentStatus) -> None:
    assert derive_experiment_status(runs) == expected


def test_merge_params_explicit_wins_and_nested_objects_merge() -> None:
    base = {"a": 1, "nested": {"x": 1, "y": 2}, "list": [1, 2], "keep": True}
    override = {"a": 2, "nested": {"y": 3, "z": 4}, "list": [9]}
    merged = merge_params(base, override)
    assert merged == {"a": 2, "nested": {"x": 1, "y": 3, "z": 4}, "list": [9], "keep": True}
    # Inputs are not modified, and the result shares no nested objects with them.
    assert base["nested"] == {"x": 1, "y": 2}
    merged["nested"]["x"] = 100
    assert base["nested"]["x"] == 1


def test_merge_params_object_replaces_scalar_and_back() -> None:
    assert merge_params({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert merge_params({"a": {"b": 2}}, {"a": 1}) == {"a": 1}


def test_require_id_normalises_and_rejects() -> None:
    upper = "8C2D6F2E-6B7A-4D1B-9E1F-2A3B4C5D6E7F"
    assert require_id("id", upper) == upper.lower()
    with pytest.raises(InvalidArgument) as missing:
        require_id("agent.id", "")
    assert missing.value.violations[0].field == "agent.id"
    with pytest.raises(InvalidArgument, match="not a UUID"):
        require_id("id", "abc")


def test_require_name_trims_and_bounds() -> None:
    assert require_name("agent.name", "  bob ") == "bob"
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(InvalidArgument) as error:
            require_name("agent.name", bad)
        assert error.value.violations[0].field == "agent.name"


def test_json_object_rejects_non_finite_numbers_with_their_path() -> None:
    assert json_object("c", {"a": [1, {"b": 2.5}]}) == {"a": [1, {"b": 2.5}]}
    with pytest.raises(InvalidArgument) as error:
        json_object("agent.config", {"a": [1, {"b": math.nan}], "c": math.inf})
    fields = sorted(v.field for v in error.value.violations)
    assert fields == ["agent.config.a[1].b", "agent.config.c"]


def test_check_range() -> None:
    check_range("p", 0, 0, 100)
    check_range("p", 100, 0, 100)
    for bad in (-0.1, 100.1, math.nan):
        with pytest.raises(InvalidArgument):
            check_range("run.progress_percent", bad, 0, 100)
