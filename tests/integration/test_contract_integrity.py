"""The contract of the domain services, on SQLite and on PostgreSQL alike: references and cascades,
and the constraints the database itself enforces (raw SQL around the services).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from simtrack.errors import FailedPrecondition, NotFound
from simtrack.server.core.model import (
    ExperimentStatus,
    Framework,
    RunStatus,
)
from simtrack.server.db import models
from tests.support import Services
from tests.support.contract import assert_touched, count, missing_id

SCENARIO_ID = "tier0-tutorial"
OTHER_SCENARIO_ID = "tier2-supply-shock"


# --------------------------------------------------------------------------------------------
# References and cascades


async def test_agent_used_by_an_experiment_cannot_be_deleted(services: Services) -> None:
    experiment = await services.experiment()
    with pytest.raises(FailedPrecondition):
        await services.agents.delete(experiment.agent_id)
    assert (await services.agents.get(experiment.agent_id)).id == experiment.agent_id
    await services.experiments.delete(experiment.id)
    await services.agents.delete(experiment.agent_id)
    assert await count(services, "agents") == 0


async def test_agent_used_by_a_participant_cannot_be_deleted(services: Services) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    agent = await services.agent()
    participant = await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="", config_override={}
    )
    with pytest.raises(FailedPrecondition):
        await services.agents.delete(agent.id)
    assert (await services.agents.get(agent.id)).name == agent.name
    await services.participants.delete(participant.id)
    await services.agents.delete(agent.id)
    with pytest.raises(NotFound):
        await services.agents.get(agent.id)


async def test_restrict_foreign_keys_hold_in_the_database(services: Services) -> None:
    """Even a raw DELETE cannot remove an agent that a participant refers to."""
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    agent = await services.agent()
    await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="", config_override={}
    )
    for agent_id in (agent.id, experiment.agent_id):
        with pytest.raises(IntegrityError):
            await services.execute("DELETE FROM agents WHERE id = :id", id=agent_id)
    assert await count(services, "agents") == 2


async def test_deleting_an_experiment_cascades_and_detaches(services: Services) -> None:
    experiment = await services.experiment()
    keep = await services.experiment(experiment.agent_id)
    helper = await services.agent()
    runs = [await services.run(experiment.id) for _ in range(2)]
    participants = [
        await services.participants.create(
            run_id=run.id, agent_id=helper.id, role="", config_override={}
        )
        for run in runs
    ]
    simulation = await services.simulations.create(
        experiment_id=experiment.id,
        status=None,
        parameters={"p": 1},
        metadata={},
        results_summary={},
    )
    kept_run = await services.run(keep.id)
    kept_participant = await services.participants.create(
        run_id=kept_run.id, agent_id=experiment.agent_id, role="", config_override={}
    )
    kept_simulation = await services.simulations.create(
        experiment_id=keep.id, status=None, parameters={}, metadata={}, results_summary={}
    )

    await services.experiments.delete(experiment.id)

    for run in runs:
        with pytest.raises(NotFound):
            await services.runs.get(run.id)
    for participant in participants:
        with pytest.raises(NotFound):
            await services.participants.get(participant.id)
    assert await count(services, "runs", experiment_id=experiment.id) == 0
    assert await count(services, "run_participants", agent_id=helper.id) == 0
    survivor = await services.simulations.get(simulation.id)
    assert survivor.experiment_id is None
    assert survivor.parameters == {"p": 1}
    # Nothing of the other experiment was touched.
    assert (await services.runs.get(kept_run.id)).experiment_id == keep.id
    assert (await services.participants.get(kept_participant.id)).run_id == kept_run.id
    assert (await services.simulations.get(kept_simulation.id)).experiment_id == keep.id
    # The cascade really removed the participants: their agent is free to go.
    await services.agents.delete(helper.id)


# --------------------------------------------------------------------------------------------
# Constraints enforced by the database itself


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("progress_percent", 150),
        ("progress_percent", -0.5),
        ("current_tick", -1),
        ("total_ticks", -1),
        ("status", "exploded"),
    ],
)
async def test_check_constraints_hold_in_the_database(
    services: Services, column: str, value: Any
) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    await services.execute("UPDATE runs SET progress_percent = 25 WHERE id = :id", id=run.id)
    with pytest.raises(IntegrityError):
        await services.execute(
            f"UPDATE runs SET {column} = :value WHERE id = :id", id=run.id, value=value
        )
    stored = await services.runs.get(run.id)
    assert (stored.progress_percent, stored.current_tick, stored.status) == (
        25,
        0,
        RunStatus.PENDING,
    )


async def test_enum_columns_are_checked_in_the_database(services: Services) -> None:
    await services.agent("enum-agent")
    with pytest.raises(IntegrityError):
        await services.execute("UPDATE agents SET framework = 'skynet'")
    with pytest.raises(IntegrityError):
        await services.execute(
            "INSERT INTO simulations (tenant_id, id, status, created_at, updated_at) "
            "VALUES (:tenant, :id, 'paused', :now, :now)",
            id=missing_id(),
        )
    assert await services.scalar(select(models.Agent.framework)) == Framework.BASELINE
    assert await count(services, "simulations") == 0


async def test_foreign_keys_are_enforced(services: Services) -> None:
    """On SQLite too: every connection of the engine turns foreign keys on."""
    experiment = await services.experiment()
    insert_run = (
        "INSERT INTO runs (tenant_id, id, experiment_id, run_number, scenario_id, scenario_hash, "
        "status, "
        "current_tick, total_ticks, progress_percent, error_message, worker_id, created_at, "
        "updated_at) VALUES (:tenant, :id, :exp, :number, :scenario, :hash, 'pending', 0, 0, 0, "
        "'', '', "
        ":now, :now)"
    )
    with pytest.raises(IntegrityError):
        await services.execute(
            insert_run,
            id=missing_id(),
            exp=missing_id(),
            number=1,
            scenario=SCENARIO_ID,
            hash="0" * 64,
        )
    with pytest.raises(IntegrityError):
        await services.execute(
            "INSERT INTO simulations (tenant_id, id, experiment_id, status, created_at, "
            "updated_at) "
            "VALUES (:tenant, :id, :exp, 'pending', :now, :now)",
            id=missing_id(),
            exp=missing_id(),
        )
    with pytest.raises(IntegrityError):
        await services.execute(
            "UPDATE experiments SET agent_id = :agent WHERE id = :id",
            agent=missing_id(),
            id=experiment.id,
        )
    # The same statement with a real experiment works, so the failures above are the FK's.
    await services.execute(
        insert_run,
        id=missing_id(),
        exp=experiment.id,
        number=1,
        scenario=SCENARIO_ID,
        hash="0" * 64,
    )
    with pytest.raises(IntegrityError):  # (experiment_id, run_number) is unique
        await services.execute(
            insert_run,
            id=missing_id(),
            exp=experiment.id,
            number=1,
            scenario=SCENARIO_ID,
            hash="0" * 64,
        )
    assert await count(services, "runs") == 1
    assert await count(services, "simulations") == 0
    if services.backend == "sqlite":
        assert await services.scalar("PRAGMA foreign_keys") == 1


async def test_timestamps_are_maintained_by_the_models(services: Services) -> None:
    """updated_at moves on an indirect change too (a new run re-derives the experiment)."""
    experiment = await services.experiment()
    before = await services.experiments.get(experiment.id)
    await services.run(experiment.id)  # changes the experiment's status (and run counter)
    after = await services.experiments.get(experiment.id)
    assert after.status == ExperimentStatus.RUNNING
    assert_touched((before.created_at, before.updated_at), after.created_at, after.updated_at)
    rows = await services.fetch(
        select(func.count())
        .select_from(models.Experiment)
        .where(models.Experiment.updated_at < models.Experiment.created_at)
    )
    assert rows[0][0] == 0
