"""The contract of the domain services, on SQLite and on PostgreSQL alike.

Every test runs once per backend (the ``backend`` fixture) on a fresh migrated database of its own.
Raw SQL checks go around the services to prove the database itself enforces the schema.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from simtrack.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.model import (
    ExperimentStatus,
    Framework,
    RunStatus,
    SimulationStatus,
)
from simtrack.server.db import models
from tests.support import Services

SCENARIO_ID = "tier0-tutorial"
OTHER_SCENARIO_ID = "tier2-supply-shock"


def missing_id() -> str:
    return str(uuid.uuid4())


def assert_aware(*stamps: datetime | None) -> None:
    for stamp in stamps:
        assert stamp is not None
        assert stamp.utcoffset() is not None, f"{stamp!r} is naive"


def assert_touched(
    before: tuple[datetime, datetime], after_created: datetime, after_updated: datetime
) -> None:
    """created_at kept, updated_at moved forward."""
    created, updated = before
    assert after_created == created
    assert after_updated > updated


async def count(services: Services, table: str, **where: str) -> int:
    clause = " AND ".join(f"{column} = :{column}" for column in where)
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {clause}" if clause else "")
    return int(await services.scalar(sql, **where))


def violation_fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


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


# --------------------------------------------------------------------------------------------
# Listing: pagination and filters


async def test_pagination_with_filter_has_no_gaps_or_duplicates(services: Services) -> None:
    baseline: list[str] = []
    everyone: list[str] = []
    for index in range(11):
        framework = Framework.BASELINE if index % 3 != 1 else Framework.CUSTOM
        agent = await services.agent(f"agent-{index:02d}", framework=framework)
        everyone.append(agent.id)
        if framework == Framework.BASELINE:
            baseline.append(agent.id)
    assert len(baseline) == 7

    async def walk(page_size: int, filter_text: str) -> list[list[str]]:
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await services.agents.list(page_size, token, filter_text)
            pages.append([a.id for a in page.items])
            token = page.next_page_token
            if not token:
                return pages
            assert len(pages) < 20, "pagination does not terminate"

    filtered = await walk(3, 'framework = "baseline"')
    assert [len(p) for p in filtered] == [3, 3, 1]
    assert [i for p in filtered for i in p] == baseline  # oldest first, no gaps, no duplicates

    unfiltered = await walk(4, "")
    assert [len(p) for p in unfiltered] == [4, 4, 3]
    assert [i for p in unfiltered for i in p] == everyone

    # An exact fit ends with an empty token on the last full page, not an extra empty page.
    exact = await walk(7, "framework = baseline")
    assert [len(p) for p in exact] == [7]

    custom = await walk(2, 'framework != "baseline"')
    assert [i for p in custom for i in p] == [i for i in everyone if i not in baseline]

    # Timestamps really are in creation order.
    stored = (await services.agents.list(100, "", "")).items
    assert [a.created_at for a in stored] == sorted(a.created_at for a in stored)


async def test_run_pagination_by_experiment_and_status(services: Services) -> None:
    first = await services.experiment()
    second = await services.experiment(first.agent_id)
    expected: list[str] = []
    for _ in range(5):
        expected.append((await services.run(first.id)).id)
        await services.run(second.id)
    stopped = expected[1::2]
    for run_id in stopped:
        await services.runs.update(run_id, {"status": RunStatus.STOPPED})

    ids: list[str] = []
    token = ""
    filter_text = f'experiment_id = "{first.id}"'
    while True:
        page = await services.runs.list(2, token, filter_text)
        assert all(r.experiment_id == first.id for r in page.items)
        ids += [r.id for r in page.items]
        token = page.next_page_token
        if not token:
            break
    assert ids == expected

    both = f'experiment_id = "{first.id}" AND status = stopped'
    page = await services.runs.list(1, "", both)
    assert [r.id for r in page.items] == stopped[:1]
    rest = await services.runs.list(5, page.next_page_token, both)
    assert [r.id for r in rest.items] == stopped[1:]
    assert rest.next_page_token == ""

    pending = await services.runs.list(100, "", "status = pending")
    assert len(pending.items) == 8 and all(r.status == RunStatus.PENDING for r in pending.items)


async def test_page_tokens_are_bound_to_their_filter(services: Services) -> None:
    for _ in range(3):
        await services.agent(framework=Framework.CUSTOM)
    page = await services.agents.list(1, "", "framework = custom")
    assert page.next_page_token
    with pytest.raises(InvalidArgument) as excinfo:
        await services.agents.list(1, page.next_page_token, "framework = baseline")
    assert violation_fields(excinfo.value) == ["page_token"]
    with pytest.raises(InvalidArgument):
        await services.agents.list(1, page.next_page_token, "")
    # The same filter (another page size is fine) continues where the first page ended.
    rest = await services.agents.list(5, page.next_page_token, "framework = custom")
    assert len(rest.items) == 2 and page.items[0].id not in {a.id for a in rest.items}

    # Participant tokens are bound to their run.
    experiment = await services.experiment()
    run_a = await services.run(experiment.id)
    run_b = await services.run(experiment.id)
    for _ in range(2):
        agent = await services.agent()
        for run in (run_a, run_b):
            await services.participants.create(
                run_id=run.id, agent_id=agent.id, role="", config_override={}
            )
    first = await services.participants.list(run_a.id, 1, "", "")
    assert first.next_page_token
    with pytest.raises(InvalidArgument) as excinfo:
        await services.participants.list(run_b.id, 1, first.next_page_token, "")
    assert violation_fields(excinfo.value) == ["page_token"]
    with pytest.raises(InvalidArgument) as excinfo:
        await services.agents.list(1, "bm90IGEgdG9rZW4=", "")
    assert violation_fields(excinfo.value) == ["page_token"]


async def test_filters(services: Services) -> None:
    agent = await services.agent("filter-agent")
    other = await services.agent("other-agent", framework=Framework.CREWAI)
    exp_a = await services.experiment(agent.id, name="exp-a")
    exp_b = await services.experiment(other.id, name="exp-b", scenario_id=OTHER_SCENARIO_ID)
    await services.run(exp_b.id)  # exp-b is now running
    template = await services.templates.create(name="tpl-x", description="", config={})
    await services.templates.create(name="tpl-y", description="", config={})

    async def experiment_ids(filter_text: str) -> list[str]:
        return [e.id for e in (await services.experiments.list(0, "", filter_text)).items]

    assert await experiment_ids('name = "exp-a"') == [exp_a.id]
    assert await experiment_ids("status = draft") == [exp_a.id]
    assert await experiment_ids("status = RUNNING") == [exp_b.id]
    assert await experiment_ids("status != draft") == [exp_b.id]
    assert await experiment_ids(f'agent_id = "{other.id}"') == [exp_b.id]
    assert await experiment_ids(f"scenario_id = {OTHER_SCENARIO_ID}") == [exp_b.id]
    assert await experiment_ids('name = "exp-a" AND status = running') == []

    agents = (await services.agents.list(0, "", 'name = "other-agent"')).items
    assert [a.id for a in agents] == [other.id]
    templates = (await services.templates.list(0, "", 'name = "tpl-x"')).items
    assert [t.id for t in templates] == [template.id]

    attached = await services.simulations.create(
        experiment_id=exp_a.id, status=None, parameters={}, metadata={}, results_summary={}
    )
    detached = await services.simulations.create(
        experiment_id="", status=None, parameters={}, metadata={}, results_summary={}
    )
    await services.simulations.update(detached.id, {"status": SimulationStatus.RUNNING})

    async def simulation_ids(filter_text: str) -> list[str]:
        return [s.id for s in (await services.simulations.list(0, "", filter_text)).items]

    assert await simulation_ids('experiment_id = ""') == [detached.id]
    assert await simulation_ids('experiment_id != ""') == [attached.id]
    assert await simulation_ids(f'experiment_id = "{exp_a.id}"') == [attached.id]
    assert await simulation_ids("status = running") == [detached.id]
    assert await simulation_ids("status = pending") == [attached.id]

    with pytest.raises(InvalidArgument) as excinfo:
        await services.experiments.list(0, "", "color = red")
    assert violation_fields(excinfo.value) == ["filter"]
    with pytest.raises(InvalidArgument):
        await services.runs.list(0, "", "status = exploded")


# --------------------------------------------------------------------------------------------
# Uniqueness


async def test_agent_names_are_unique(services: Services) -> None:
    first = await services.agent("unique-agent")
    second = await services.agent("second-agent")
    with pytest.raises(AlreadyExists):
        await services.agent("unique-agent")
    with pytest.raises(AlreadyExists):
        await services.agent(" unique-agent ")  # names are trimmed before the check
    with pytest.raises(AlreadyExists):
        await services.agents.update(second.id, {"name": "unique-agent"})
    assert (await services.agents.get(second.id)).name == "second-agent"
    # Renaming to its own name is not a conflict.
    await services.agents.update(first.id, {"name": "unique-agent"})
    assert await count(services, "agents") == 2


async def test_template_names_are_unique(services: Services) -> None:
    await services.templates.create(name="tpl", description="", config={})
    other = await services.templates.create(name="tpl-2", description="", config={})
    with pytest.raises(AlreadyExists):
        await services.templates.create(name="tpl", description="again", config={})
    with pytest.raises(AlreadyExists):
        await services.templates.update(other.id, {"name": "tpl"})
    assert (await services.templates.get(other.id)).name == "tpl-2"
    assert await count(services, "templates") == 2


async def test_concurrent_duplicate_names_leave_one_row(services: Services) -> None:
    """Two creates racing past the service's check meet the unique key: one wins."""
    results = await asyncio.gather(
        *(
            services.agents.create(name="racer", framework=Framework.BASELINE, config={})
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 3, results
    assert all(isinstance(e, AlreadyExists) for e in errors), errors
    assert await count(services, "agents", name="racer") == 1


async def test_unit_of_work_translates_constraint_violations(services: Services) -> None:
    """Violations the services did not catch first reach callers as simtrack errors."""
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    taken = (await services.agents.get(experiment.agent_id)).name

    with pytest.raises(AlreadyExists):
        async with services.uow() as uow:
            await uow.agents.add(models.Agent(name=taken, framework=Framework.BASELINE, config={}))
            await uow.commit()
    with pytest.raises(AlreadyExists):
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=experiment.id,
                    run_number=run.run_number,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                )
            )
            await uow.commit()
    with pytest.raises(FailedPrecondition):
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=missing_id(),
                    run_number=1,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                )
            )
            await uow.commit()
    with pytest.raises(InvalidArgument) as excinfo:
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=experiment.id,
                    run_number=99,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                    progress_percent=150.0,
                )
            )
            await uow.commit()
    assert "progress" in str(excinfo.value)
    assert await count(services, "agents") == 1
    assert await count(services, "runs") == 1


async def test_participant_added_twice_already_exists(services: Services) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    agent = await services.agent()
    await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="a", config_override={}
    )
    with pytest.raises(AlreadyExists):
        await services.participants.create(
            run_id=run.id, agent_id=agent.id, role="b", config_override={}
        )
    participants = (await services.participants.list(run.id, 0, "", "")).items
    assert [(p.agent_id, p.role) for p in participants] == [(agent.id, "a")]
    # The same agent may take part in another run.
    other_run = await services.run(experiment.id)
    await services.participants.create(
        run_id=other_run.id, agent_id=agent.id, role="a", config_override={}
    )
    assert await count(services, "run_participants") == 2


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
