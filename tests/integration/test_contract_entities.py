"""The contract of the domain services, on SQLite and on PostgreSQL alike: each entity's CRUD and
timestamps, and JSON columns defaulting to {}.

Every test runs once per backend (the ``backend`` fixture) on a fresh migrated database of its own.
Raw SQL checks go around the services to prove the database itself enforces the schema.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from simtrack.errors import FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.model import (
    ExperimentStatus,
    Framework,
    RunStatus,
    SimulationStatus,
)
from tests.support import Services
from tests.support.contract import assert_aware, assert_touched, count, missing_id, violation_fields

SCENARIO_ID = "tier0-tutorial"
OTHER_SCENARIO_ID = "tier2-supply-shock"


# --------------------------------------------------------------------------------------------
# CRUD of every entity, with timestamps


async def test_agent_crud(services: Services) -> None:
    agent = await services.agents.create(
        name="  alpha  ", framework=Framework.LANGCHAIN, config={"model": "m1", "n": [1, 2]}
    )
    assert str(uuid.UUID(agent.id)) == agent.id
    assert agent.name == "alpha"  # trimmed
    assert_aware(agent.created_at, agent.updated_at)
    assert agent.updated_at >= agent.created_at

    got = await services.agents.get(agent.id)
    assert (got.id, got.name, got.framework, got.config) == (
        agent.id,
        "alpha",
        Framework.LANGCHAIN,
        {"model": "m1", "n": [1, 2]},
    )
    assert got.created_at == agent.created_at

    updated = await services.agents.update(
        agent.id, {"name": "beta", "framework": Framework.CUSTOM, "config": {"model": "m2"}}
    )
    assert_touched((got.created_at, got.updated_at), updated.created_at, updated.updated_at)
    stored = await services.agents.get(agent.id)
    assert (stored.name, stored.framework, stored.config) == (
        "beta",
        Framework.CUSTOM,
        {"model": "m2"},
    )
    assert stored.updated_at == updated.updated_at

    page = await services.agents.list(0, "", "")
    assert [a.id for a in page.items] == [agent.id]

    await services.agents.delete(agent.id)
    with pytest.raises(NotFound):
        await services.agents.get(agent.id)
    with pytest.raises(NotFound):
        await services.agents.delete(agent.id)
    assert await count(services, "agents") == 0


async def test_template_crud(services: Services) -> None:
    template = await services.templates.create(
        name="baseline-pricing", description="d1", config={"pricing": {"margin": 0.2}}
    )
    assert_aware(template.created_at, template.updated_at)
    got = await services.templates.get(template.id)
    assert (got.name, got.description, got.config) == (
        "baseline-pricing",
        "d1",
        {"pricing": {"margin": 0.2}},
    )

    updated = await services.templates.update(
        template.id, {"description": "d2", "config": {"pricing": {"margin": 0.3}}}
    )
    assert_touched((got.created_at, got.updated_at), updated.created_at, updated.updated_at)
    stored = await services.templates.get(template.id)
    assert (stored.name, stored.description, stored.config) == (
        "baseline-pricing",
        "d2",
        {"pricing": {"margin": 0.3}},
    )

    await services.templates.delete(template.id)
    with pytest.raises(NotFound):
        await services.templates.get(template.id)
    assert await count(services, "templates") == 0


async def test_experiment_crud(services: Services) -> None:
    agent = await services.agent()
    other_agent = await services.agent()
    experiment = await services.experiments.create(
        name="exp",
        description="what we try",
        agent_id=agent.id,
        scenario_id=SCENARIO_ID,
        params={"seed": 7},
        hypothesis="it works",
        results_summary={"note": "none yet"},
    )
    assert experiment.status == ExperimentStatus.DRAFT
    assert_aware(experiment.created_at, experiment.updated_at)

    got = await services.experiments.get(experiment.id)
    assert (
        got.name,
        got.description,
        got.agent_id,
        got.scenario_id,
        got.params,
        got.hypothesis,
        got.results_summary,
        got.status,
    ) == (
        "exp",
        "what we try",
        agent.id,
        SCENARIO_ID,
        {"seed": 7},
        "it works",
        {"note": "none yet"},
        ExperimentStatus.DRAFT,
    )

    updated = await services.experiments.update(
        experiment.id,
        {
            "name": "exp2",
            "description": "d",
            "hypothesis": "h",
            "agent_id": other_agent.id,
            "params": {"seed": 8},
            "results_summary": {"best": 1.5},
        },
    )
    assert_touched((got.created_at, got.updated_at), updated.created_at, updated.updated_at)
    stored = await services.experiments.get(experiment.id)
    assert (
        stored.name,
        stored.description,
        stored.hypothesis,
        stored.agent_id,
        stored.params,
        stored.results_summary,
    ) == ("exp2", "d", "h", other_agent.id, {"seed": 8}, {"best": 1.5})

    with pytest.raises(NotFound):
        await services.experiments.update(experiment.id, {"agent_id": missing_id()})
    assert (await services.experiments.get(experiment.id)).agent_id == other_agent.id

    await services.experiments.delete(experiment.id)
    with pytest.raises(NotFound):
        await services.experiments.get(experiment.id)
    assert await count(services, "experiments") == 0


async def test_simulation_crud(services: Services) -> None:
    experiment = await services.experiment()
    simulation = await services.simulations.create(
        experiment_id=experiment.id,
        status=None,
        parameters={"ticks": 10},
        metadata={"host": "h1"},
        results_summary={},
    )
    assert simulation.status == SimulationStatus.PENDING
    assert simulation.started_at is None and simulation.ended_at is None
    got = await services.simulations.get(simulation.id)
    assert (got.experiment_id, got.parameters, got.metadata_, got.results_summary) == (
        experiment.id,
        {"ticks": 10},
        {"host": "h1"},
        {},
    )

    running = await services.simulations.update(
        simulation.id, {"status": SimulationStatus.RUNNING, "metadata": {"host": "h2"}}
    )
    assert_touched((got.created_at, got.updated_at), running.created_at, running.updated_at)
    assert_aware(running.started_at)
    assert running.ended_at is None

    done = await services.simulations.update(
        simulation.id,
        {"status": SimulationStatus.COMPLETED, "results_summary": {"profit": 12.5}},
    )
    stored = await services.simulations.get(simulation.id)
    assert stored.status == SimulationStatus.COMPLETED
    assert stored.started_at == running.started_at
    assert_aware(stored.ended_at)
    assert stored.ended_at is not None and running.started_at is not None
    assert stored.ended_at >= running.started_at
    assert (stored.metadata_, stored.results_summary) == ({"host": "h2"}, {"profit": 12.5})
    assert stored.updated_at == done.updated_at

    with pytest.raises(FailedPrecondition):
        await services.simulations.update(simulation.id, {"status": SimulationStatus.RUNNING})

    detached = await services.simulations.update(simulation.id, {"experiment_id": ""})
    assert detached.experiment_id is None
    assert (await services.simulations.get(simulation.id)).experiment_id is None

    await services.simulations.delete(simulation.id)
    with pytest.raises(NotFound):
        await services.simulations.get(simulation.id)
    assert await count(services, "simulations") == 0


async def test_run_crud(services: Services) -> None:
    experiment = await services.experiment()
    run = await services.runs.create(
        experiment_id=experiment.id,
        status=None,
        params={"seed": 1},
        total_ticks=100,
        worker_id="worker-1",
    )
    assert (run.run_number, run.status, run.total_ticks, run.current_tick, run.worker_id) == (
        1,
        RunStatus.PENDING,
        100,
        0,
        "worker-1",
    )
    assert run.progress_percent == 0
    assert_aware(run.created_at, run.updated_at)
    got = await services.runs.get(run.id)
    assert (got.experiment_id, got.params, got.scenario_id) == (
        experiment.id,
        {"seed": 1},
        SCENARIO_ID,
    )

    updated = await services.runs.update(
        run.id,
        {
            "current_tick": 50,
            "progress_percent": 50.0,
            "metrics_summary": {"profit": 1.5},
            "results": {"rank": 2},
            "error_message": "warn",
            "error_details": {"why": "x"},
            "worker_id": "worker-2",
        },
    )
    assert_touched((got.created_at, got.updated_at), updated.created_at, updated.updated_at)
    stored = await services.runs.get(run.id)
    assert (
        stored.current_tick,
        stored.progress_percent,
        stored.metrics_summary,
        stored.results,
        stored.error_message,
        stored.error_details,
        stored.worker_id,
    ) == (50, 50.0, {"profit": 1.5}, {"rank": 2}, "warn", {"why": "x"}, "worker-2")

    with pytest.raises(InvalidArgument) as excinfo:
        await services.runs.update(run.id, {"progress_percent": 100.5})
    assert violation_fields(excinfo.value) == ["run.progress_percent"]
    assert (await services.runs.get(run.id)).progress_percent == 50.0

    participant = await services.participants.create(
        run_id=run.id, agent_id=experiment.agent_id, role="player", config_override={}
    )
    await services.runs.delete(run.id)
    with pytest.raises(NotFound):
        await services.runs.get(run.id)
    with pytest.raises(NotFound):
        await services.participants.get(participant.id)
    assert await count(services, "runs") == 0
    assert await count(services, "run_participants") == 0


async def test_participant_crud(services: Services) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    agent = await services.agent()
    participant = await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="seller", config_override={"temperature": 0.1}
    )
    assert_aware(participant.created_at, participant.updated_at)
    got = await services.participants.get(participant.id)
    assert (got.run_id, got.agent_id, got.role, got.config_override) == (
        run.id,
        agent.id,
        "seller",
        {"temperature": 0.1},
    )
    page = await services.participants.list(run.id, 0, "", "")
    assert [p.id for p in page.items] == [participant.id]

    updated = await services.participants.update(
        participant.id, {"role": "buyer", "config_override": {"temperature": 0.9}}
    )
    assert_touched((got.created_at, got.updated_at), updated.created_at, updated.updated_at)
    stored = await services.participants.get(participant.id)
    assert (stored.role, stored.config_override) == ("buyer", {"temperature": 0.9})

    await services.participants.delete(participant.id)
    with pytest.raises(NotFound):
        await services.participants.get(participant.id)
    assert (await services.participants.list(run.id, 0, "", "")).items == []
    # The agent is free again once nothing refers to it.
    await services.agents.delete(agent.id)


@pytest.mark.parametrize(
    "entity", ["agents", "templates", "experiments", "simulations", "runs", "participants"]
)
async def test_unknown_ids_are_not_found(services: Services, entity: str) -> None:
    service: Any = getattr(services, entity)
    unknown = missing_id()
    with pytest.raises(NotFound) as excinfo:
        await service.get(unknown)
    assert excinfo.value.resource_id == unknown
    with pytest.raises(NotFound):
        await service.delete(unknown)
    with pytest.raises(NotFound):
        await service.update(unknown, {})


# --------------------------------------------------------------------------------------------
# JSON columns default to {}


async def test_json_columns_default_to_empty_objects(services: Services) -> None:
    agent = await services.agent()
    template = await services.templates.create(name="t", description="", config={})
    experiment = await services.experiment(agent.id)
    simulation = await services.simulations.create(
        experiment_id="", status=None, parameters={}, metadata={}, results_summary={}
    )
    run = await services.run(experiment.id)
    participant = await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="", config_override={}
    )
    assert (await services.agents.get(agent.id)).config == {}
    assert (await services.templates.get(template.id)).config == {}
    stored_experiment = await services.experiments.get(experiment.id)
    assert (stored_experiment.params, stored_experiment.results_summary) == ({}, {})
    stored_simulation = await services.simulations.get(simulation.id)
    assert (
        stored_simulation.parameters,
        stored_simulation.metadata_,
        stored_simulation.results_summary,
    ) == ({}, {}, {})
    stored_run = await services.runs.get(run.id)
    assert (
        stored_run.params,
        stored_run.metrics_summary,
        stored_run.results,
        stored_run.error_details,
    ) == ({}, {}, {}, {})
    assert (await services.participants.get(participant.id)).config_override == {}


def json_type_sql(backend: str, column: str) -> str:
    """SQL naming the JSON type of ``column`` as the database sees it ('object' expected)."""
    return f"jsonb_typeof({column})" if backend == "postgresql" else f"json_type({column})"


async def test_json_server_defaults_apply_to_raw_inserts(services: Services) -> None:
    """Rows written without the ORM (other tools, psql) still get {} in every JSON column."""
    ids = {name: missing_id() for name in ("agent", "template", "exp", "sim", "run", "part")}
    await services.execute(
        "INSERT INTO agents (tenant_id, id, name, framework, created_at, updated_at) "
        "VALUES (:tenant, :id, 'raw-agent', 'custom', :now, :now)",
        id=ids["agent"],
    )
    await services.execute(
        "INSERT INTO templates (tenant_id, id, name, description, created_at, updated_at) "
        "VALUES (:tenant, :id, 'raw-template', '', :now, :now)",
        id=ids["template"],
    )
    await services.execute(
        "INSERT INTO experiments (tenant_id, id, name, description, agent_id, scenario_id, "
        "hypothesis, "
        "status, created_at, updated_at) "
        "VALUES (:tenant, :id, 'raw-exp', '', :agent, :scenario, '', 'draft', :now, :now)",
        id=ids["exp"],
        agent=ids["agent"],
        scenario=SCENARIO_ID,
    )
    await services.execute(
        "INSERT INTO simulations (tenant_id, id, status, created_at, updated_at) "
        "VALUES (:tenant, :id, 'pending', :now, :now)",
        id=ids["sim"],
    )
    await services.execute(
        "INSERT INTO runs (tenant_id, id, experiment_id, run_number, scenario_id, scenario_hash, "
        "status, "
        "current_tick, total_ticks, progress_percent, error_message, worker_id, created_at, "
        "updated_at) VALUES (:tenant, :id, :exp, 7, :scenario, :hash, 'pending', 0, 0, 0, '', '', "
        ":now, :now)",
        id=ids["run"],
        exp=ids["exp"],
        scenario=SCENARIO_ID,
        hash="0" * 64,
    )
    await services.execute(
        "INSERT INTO run_participants (tenant_id, id, run_id, agent_id, role, created_at, "
        "updated_at) "
        "VALUES (:tenant, :id, :run, :agent, '', :now, :now)",
        id=ids["part"],
        run=ids["run"],
        agent=ids["agent"],
    )

    json_columns = {
        ("agents", "agent"): ["config"],
        ("templates", "template"): ["config"],
        ("experiments", "exp"): ["params", "results_summary"],
        ("simulations", "sim"): ["parameters", "metadata", "results_summary"],
        ("runs", "run"): ["params", "metrics_summary", "results", "error_details"],
        ("run_participants", "part"): ["config_override"],
    }
    for (table, key), columns in json_columns.items():
        kinds = [json_type_sql(services.backend, c) for c in columns]
        row = (
            await services.fetch(
                f"SELECT {', '.join(kinds)} FROM {table} WHERE id = :id", id=ids[key]
            )
        )[0]
        assert list(row) == ["object"] * len(columns), (table, columns, row)

    # And the services read them as empty objects (the ORM decodes them like its own rows).
    assert (await services.agents.get(ids["agent"])).config == {}
    assert (await services.templates.get(ids["template"])).config == {}
    experiment = await services.experiments.get(ids["exp"])
    assert (experiment.params, experiment.results_summary) == ({}, {})
    simulation = await services.simulations.get(ids["sim"])
    assert (simulation.parameters, simulation.metadata_, simulation.results_summary) == ({}, {}, {})
    run = await services.runs.get(ids["run"])
    assert (run.params, run.metrics_summary, run.results, run.error_details) == ({}, {}, {}, {})
    assert (await services.participants.get(ids["part"])).config_override == {}
    # The run counter has a server default too: the raw experiment's first service run is 1.
    counter = "SELECT last_run_number FROM experiments WHERE id = :id"
    assert await services.scalar(counter, id=ids["exp"]) == 0
    assert (await services.run(ids["exp"])).run_number == 1
