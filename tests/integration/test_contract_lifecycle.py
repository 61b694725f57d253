"""The contract of the domain services, on SQLite and on PostgreSQL alike: run numbers, run status
transitions and the experiment status they drive, parameters, templates and scenarios.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from simtrack.errors import FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.model import (
    ExperimentStatus,
    RunStatus,
)
from simtrack.server.db import models
from tests.support import Services
from tests.support.contract import assert_aware, count, missing_id, violation_fields

SCENARIO_ID = "tier0-tutorial"
OTHER_SCENARIO_ID = "tier2-supply-shock"


# --------------------------------------------------------------------------------------------
# Run numbers


async def test_run_numbers_count_per_experiment_and_are_never_reused(services: Services) -> None:
    first = await services.experiment()
    second = await services.experiment(first.agent_id)
    numbers: list[tuple[str, int]] = []
    for experiment in (first, second, first, first, second):
        run = await services.run(experiment.id)
        numbers.append((experiment.name, run.run_number))
    assert numbers == [
        (first.name, 1),
        (second.name, 1),
        (first.name, 2),
        (first.name, 3),
        (second.name, 2),
    ]

    page = await services.runs.list(100, "", f'experiment_id = "{first.id}"')
    by_number = {r.run_number: r for r in page.items}
    assert sorted(by_number) == [1, 2, 3]
    await services.runs.delete(by_number[3].id)
    assert (await services.run(first.id)).run_number == 4
    await services.runs.delete(by_number[1].id)
    assert (await services.run(first.id)).run_number == 5
    assert (await services.run(second.id)).run_number == 3
    stored = sorted(
        r.run_number
        for r in (await services.runs.list(100, "", f'experiment_id = "{first.id}"')).items
    )
    assert stored == [2, 4, 5]


# --------------------------------------------------------------------------------------------
# Run status transitions and the experiment status derived from them


LEGAL_PATHS = [
    pytest.param([RunStatus.STARTING, RunStatus.RUNNING, RunStatus.COMPLETED], id="to-completed"),
    pytest.param([RunStatus.STARTING, RunStatus.RUNNING, RunStatus.FAILED], id="to-failed"),
    pytest.param([RunStatus.STARTING, RunStatus.RUNNING, RunStatus.STOPPED], id="running-stopped"),
    pytest.param([RunStatus.STOPPED], id="pending-stopped"),
    pytest.param([RunStatus.STARTING, RunStatus.STOPPED], id="starting-stopped"),
]
FINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED}


@pytest.mark.parametrize("path", LEGAL_PATHS)
async def test_legal_run_transitions_stamp_times(services: Services, path: list[RunStatus]) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    assert (run.started_at, run.completed_at, run.duration) == (None, None, None)
    started_at: datetime | None = None
    for status in path:
        before = await services.runs.get(run.id)
        returned = await services.runs.update(run.id, {"status": status})
        stored = await services.runs.get(run.id)
        assert stored.status == returned.status == status
        assert stored.updated_at > before.updated_at
        if status == RunStatus.RUNNING:
            assert_aware(stored.started_at)
            assert stored.started_at is not None and stored.started_at >= run.created_at
            started_at = stored.started_at
        assert stored.started_at == started_at
        if status in FINAL:
            assert_aware(stored.completed_at)
            assert stored.completed_at is not None
            if started_at is None:
                assert stored.duration is None
            else:
                assert stored.completed_at >= started_at
                assert stored.duration == stored.completed_at - started_at
        else:
            assert (stored.completed_at, stored.duration) == (None, None)
    # Setting the status a run already has is a no-op, not an error.
    again = await services.runs.update(run.id, {"status": path[-1]})
    assert again.completed_at == stored.completed_at


ILLEGAL_MOVES = [
    pytest.param([], RunStatus.COMPLETED, id="pending-completed"),
    pytest.param([], RunStatus.FAILED, id="pending-failed"),
    pytest.param([RunStatus.STARTING], RunStatus.PENDING, id="starting-pending"),
    pytest.param([RunStatus.STARTING], RunStatus.COMPLETED, id="starting-completed"),
    pytest.param([RunStatus.STARTING, RunStatus.RUNNING], RunStatus.PENDING, id="running-pending"),
    pytest.param(
        [RunStatus.STARTING, RunStatus.RUNNING], RunStatus.STARTING, id="running-starting"
    ),
    pytest.param(
        [RunStatus.STARTING, RunStatus.RUNNING, RunStatus.COMPLETED],
        RunStatus.RUNNING,
        id="completed-running",
    ),
    pytest.param(
        [RunStatus.STARTING, RunStatus.RUNNING, RunStatus.COMPLETED],
        RunStatus.FAILED,
        id="completed-failed",
    ),
    pytest.param(
        [RunStatus.STARTING, RunStatus.RUNNING, RunStatus.FAILED],
        RunStatus.STOPPED,
        id="failed-stopped",
    ),
    pytest.param([RunStatus.STOPPED], RunStatus.STARTING, id="stopped-starting"),
    pytest.param(
        [],
        RunStatus.RUNNING,
        id="pending-running",
    ),
]


def run_snapshot(run: models.Run) -> tuple[Any, ...]:
    return (
        run.status,
        run.progress_percent,
        run.current_tick,
        run.started_at,
        run.completed_at,
        run.duration,
        run.updated_at,
    )


@pytest.mark.parametrize(("path", "target"), ILLEGAL_MOVES)
async def test_illegal_run_transitions_change_nothing(
    services: Services, path: list[RunStatus], target: RunStatus
) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    for status in path:
        await services.runs.update(run.id, {"status": status})
    before = await services.runs.get(run.id)
    experiment_before = await services.experiments.get(experiment.id)
    # The other fields of the same update come first: they must be rolled back too.
    with pytest.raises(FailedPrecondition):
        await services.runs.update(
            run.id, {"progress_percent": 42.0, "current_tick": 7, "status": target}
        )
    after = await services.runs.get(run.id)
    assert run_snapshot(after) == run_snapshot(before)
    experiment_after = await services.experiments.get(experiment.id)
    assert (experiment_after.status, experiment_after.updated_at) == (
        experiment_before.status,
        experiment_before.updated_at,
    )


async def test_experiment_status_follows_its_runs(services: Services) -> None:
    experiment = await services.experiment()

    async def status() -> ExperimentStatus:
        return (await services.experiments.get(experiment.id)).status

    assert await status() == ExperimentStatus.DRAFT
    first = await services.run(experiment.id)
    assert await status() == ExperimentStatus.RUNNING
    second = await services.run(experiment.id)
    for step in (RunStatus.STARTING, RunStatus.RUNNING, RunStatus.COMPLETED):
        await services.runs.update(first.id, {"status": step})
    assert await status() == ExperimentStatus.RUNNING  # the second run is still pending
    await services.runs.update(second.id, {"status": RunStatus.STOPPED})
    assert await status() == ExperimentStatus.COMPLETED  # all ended, one completed
    third = await services.run(experiment.id)
    assert await status() == ExperimentStatus.RUNNING
    await services.runs.delete(third.id)
    assert await status() == ExperimentStatus.COMPLETED
    for run in (first, second):
        await services.runs.delete(run.id)
    assert await status() == ExperimentStatus.DRAFT

    failing = await services.experiment(experiment.agent_id)
    run = await services.run(failing.id)
    for step in (RunStatus.STARTING, RunStatus.RUNNING, RunStatus.FAILED):
        await services.runs.update(run.id, {"status": step})
    assert (await services.experiments.get(failing.id)).status == ExperimentStatus.FAILED
    stopped = await services.run(failing.id)
    await services.runs.update(stopped.id, {"status": RunStatus.STOPPED})
    assert (await services.experiments.get(failing.id)).status == ExperimentStatus.FAILED

    listed = await services.experiments.list(0, "", "status = failed")
    assert [e.id for e in listed.items] == [failing.id]


# --------------------------------------------------------------------------------------------
# Parameters, templates and scenarios


async def test_template_config_is_merged_under_explicit_params(services: Services) -> None:
    config = {
        "seed": 1,
        "pricing": {"strategy": "fixed", "margin": 0.2, "bounds": {"low": 1, "high": 9}},
        "tags": ["a", "b"],
    }
    template = await services.templates.create(name="tpl", description="", config=config)
    experiment = await services.experiment(
        template_id=template.id,
        params={"pricing": {"margin": 0.35, "bounds": {"high": 12}}, "tags": ["c"], "extra": True},
    )
    expected = {
        "seed": 1,
        "pricing": {"strategy": "fixed", "margin": 0.35, "bounds": {"low": 1, "high": 12}},
        "tags": ["c"],
        "extra": True,
    }
    assert experiment.params == expected
    assert (await services.experiments.get(experiment.id)).params == expected
    # The template itself is untouched by the merge.
    assert (await services.templates.get(template.id)).config == config

    only_template = await services.experiment(template_id=template.id)
    assert only_template.params == config

    with pytest.raises(NotFound):
        await services.experiment(template_id=missing_id())


async def test_run_params_merge_experiment_params_under_run_params(services: Services) -> None:
    experiment = await services.experiment(
        params={"seed": 1, "pricing": {"strategy": "fixed", "margin": 0.2}, "n": 3}
    )
    run = await services.run(
        experiment.id, params={"pricing": {"margin": 0.5}, "n": None, "new": [1]}
    )
    expected = {"seed": 1, "pricing": {"strategy": "fixed", "margin": 0.5}, "n": None, "new": [1]}
    assert run.params == expected
    assert (await services.runs.get(run.id)).params == expected
    assert (await services.experiments.get(experiment.id)).params == {
        "seed": 1,
        "pricing": {"strategy": "fixed", "margin": 0.2},
        "n": 3,
    }
    plain = await services.run(experiment.id)
    assert plain.params == (await services.experiments.get(experiment.id)).params


async def test_runs_record_the_scenario_and_its_ticks(services: Services) -> None:
    tutorial = services.catalogue.get(SCENARIO_ID)
    shock = services.catalogue.get(OTHER_SCENARIO_ID)
    assert tutorial is not None and shock is not None
    assert tutorial.duration != shock.duration

    for spec in (tutorial, shock):
        experiment = await services.experiment(scenario_id=spec.id)
        run = await services.run(experiment.id)
        stored = await services.runs.get(run.id)
        assert (stored.scenario_id, stored.scenario_hash, stored.total_ticks) == (
            spec.id,
            spec.content_hash,
            spec.duration,
        )
        explicit = await services.run(experiment.id, total_ticks=12345)
        assert (await services.runs.get(explicit.id)).total_ticks == 12345


async def test_unknown_scenario_is_not_found(services: Services) -> None:
    with pytest.raises(NotFound) as excinfo:
        await services.experiment(scenario_id="no-such-scenario")
    assert (excinfo.value.resource_type, excinfo.value.field) == (
        "scenario",
        "experiment.scenario_id",
    )
    with pytest.raises(InvalidArgument) as invalid:
        await services.experiment(scenario_id="")
    assert violation_fields(invalid.value) == ["experiment.scenario_id"]
    assert await count(services, "experiments") == 0


async def test_unknown_references_are_not_found(services: Services) -> None:
    with pytest.raises(NotFound):
        await services.experiment(agent_id=missing_id())
    with pytest.raises(NotFound):
        await services.run(missing_id())
    with pytest.raises(NotFound):
        await services.simulations.create(
            experiment_id=missing_id(), status=None, parameters={}, metadata={}, results_summary={}
        )
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    with pytest.raises(NotFound):
        await services.participants.create(
            run_id=run.id, agent_id=missing_id(), role="", config_override={}
        )
    with pytest.raises(NotFound):
        await services.participants.create(
            run_id=missing_id(), agent_id=experiment.agent_id, role="", config_override={}
        )
    assert await count(services, "simulations") == 0
    assert await count(services, "run_participants") == 0
    assert await count(services, "runs") == 1
