"""Every repository method keeps tenants apart on its own, as it must on SQLite.

SQLite has no row-level security behind the repositories: their tenant filter is the only wall.
Two tenants get the same world (one of everything, named apart); each case then acts as one of
them and checks that the other's rows neither show up nor count. The test walks every public
method of every repository class in ``db/repositories.py`` and ``db/chunk_repository.py``, so a
method added without a case here fails it.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import NoResultFound

from simtrack.server.core.filters import Condition
from simtrack.server.core.listing import PageRequest
from simtrack.server.core.model import (
    ArtifactType,
    Framework,
    MetricAggregate,
    MetricKind,
    RunStatus,
    utcnow,
)
from simtrack.server.core.tenancy import Principal, Role, reset_principal, set_principal
from simtrack.server.db import chunk_repository, models, repositories
from simtrack.server.db.staged import StagedSeries, pack_body
from simtrack.server.db.unit_of_work import SqlUnitOfWork
from tests.support import Services

SCENARIO = "tier0-tutorial"
METRIC = "profit"
LONG_AGO = timedelta(days=1)


@dataclass(frozen=True)
class World:
    """One tenant's rows: one of every owned kind, plus a run that went silent."""

    tenant: str
    tenant_name: str
    agent: str
    agent_name: str
    template: str
    template_name: str
    experiment: str
    simulation: str
    done: str  # a completed run, with a duration, a metric, events, a validation, an artifact
    live: str  # a running run whose worker went silent and whose cancel was never confirmed
    participant: str
    metric: str
    validation: str
    artifact: str
    key: str
    key_prefix: str
    duration: timedelta


@contextmanager
def acting_as(tenant: str) -> Iterator[None]:
    token = set_principal(Principal(tenant, Role.ADMIN))
    try:
        yield
    finally:
        reset_principal(token)


async def seed(services: Services, tenant: str, letter: str, seconds: int) -> World:
    """Tenant ``tenant`` and its world, written straight through the ORM."""
    now = utcnow()
    ids = {name: f"{letter * 8}-0000-0000-0000-{name[:12]:0>12}" for name in NAMES}
    duration = timedelta(seconds=seconds)
    async with services.uow() as uow:
        session = uow.session
        session.add(models.Tenant(id=tenant, name=f"tenant-{letter}"))
        await session.flush()  # no relationships: SQLAlchemy flushes in no particular order
        session.add(
            models.ApiKey(
                id=ids["key"],
                tenant_id=tenant,
                role=Role.WRITER,
                prefix=f"pre{letter}",
                secret_hash="0" * 64,
            )
        )
        await session.flush()
        owned: list[Any] = [
            models.Agent(id=ids["agent"], name=f"agent-{letter}", framework=Framework.CUSTOM),
            models.Template(id=ids["template"], name=f"template-{letter}"),
        ]
        owned.append(
            models.Experiment(
                id=ids["experiment"],
                name=f"experiment-{letter}",
                agent_id=ids["agent"],
                scenario_id=SCENARIO,
                last_run_number=2,
            )
        )
        owned.append(models.Simulation(id=ids["simulation"], experiment_id=ids["experiment"]))
        for number, name in enumerate(("done", "live"), start=1):
            owned.append(
                models.Run(
                    id=ids[name],
                    experiment_id=ids["experiment"],
                    run_number=number,
                    scenario_id=SCENARIO,
                    scenario_hash="h",
                )
            )
        for obj in owned:
            obj.tenant_id = tenant
            session.add(obj)
            await session.flush()  # in dependency order: SQLite checks foreign keys at once
        done, live = (
            await session.get(models.Run, ids["done"]),
            await session.get(models.Run, ids["live"]),
        )
        assert done is not None and live is not None
        done.status, done.completed_at, done.duration = RunStatus.COMPLETED, now, duration
        live.status, live.last_seen_at = RunStatus.RUNNING, now - LONG_AGO
        live.cancel_requested_at = now - LONG_AGO
        children: list[Any] = [
            models.Participant(id=ids["participant"], run_id=ids["done"], agent_id=ids["agent"]),
            models.Metric(
                id=ids["metric"],
                run_id=ids["done"],
                name=METRIC,
                kind=MetricKind.GAUGE,
                count=1,
                last_step=0,
                last_value=float(seconds),
                min_value=float(seconds),
                max_value=float(seconds),
            ),
            models.Validation(
                id=ids["validation"],
                run_id=ids["done"],
                validator="scenario",
                kind=METRIC,
                passed=True,
            ),
            models.Artifact(
                id=ids["artifact"],
                run_id=ids["done"],
                name="report.txt",
                type=ArtifactType.REPORT,
                content_type="text/plain",
                size_bytes=0,
                sha256="0" * 64,
            ),
        ]
        for obj in children:
            obj.tenant_id = tenant
            session.add(obj)
            await session.flush()
        session.add(
            models.MetricChunk(
                metric_id=ids["metric"],
                seq=1,
                tenant_id=tenant,
                run_id=ids["done"],
                first_step=0,
                last_step=1,
                n=2,
                vmin=float(seconds),
                vmax=float(seconds),
                steps=b"",
                vals=struct.pack("<2d", seconds, seconds),
                ts=struct.pack("<d", 0.0),
            )
        )
        # A staged message beside the chunk, at steps 100-101 (outside the cases' ranges).
        series = StagedSeries(
            ids["metric"], 2, 100, 101, 2, None, None, None, None, None, None,
            b"", struct.pack("<2d", seconds, seconds), struct.pack("<d", 0.0),
        )  # fmt: skip
        session.add(
            models.StagedMessage(
                run_id=ids["done"],
                seq=2,
                tenant_id=tenant,
                written_at=datetime.now(UTC),
                points=2,
                series=1,
                body=pack_body([(series.metric_id, series)]),
            )
        )
        session.add(
            models.Event(
                run_id=ids["done"],
                seq=1,
                position=0,
                tenant_id=tenant,
                step=0,
                time_ns=0,
                type="tick",
            )  # fmt: skip
        )
        await uow.commit()
    return World(
        tenant=tenant,
        tenant_name=f"tenant-{letter}",
        agent=ids["agent"],
        agent_name=f"agent-{letter}",
        template=ids["template"],
        template_name=f"template-{letter}",
        experiment=ids["experiment"],
        simulation=ids["simulation"],
        done=ids["done"],
        live=ids["live"],
        participant=ids["participant"],
        metric=ids["metric"],
        validation=ids["validation"],
        artifact=ids["artifact"],
        key=ids["key"],
        key_prefix=f"pre{letter}",
        duration=duration,
    )


NAMES = (
    "agent template experiment simulation done live participant metric validation artifact key"
).split()

# Every tenant-owned repository of a unit of work, with the World field of its row.
OWNED = {
    "agents": "agent",
    "templates": "template",
    "experiments": "experiment",
    "simulations": "simulation",
    "runs": "done",
    "participants": "participant",
    "metrics": "metric",
    "validations": "validation",
    "artifacts": "artifact",
}

Case = Callable[[SqlUnitOfWork, World, World], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    """Register the tenant case of the repository method ``name`` ("Class.method")."""

    def register(check: Case) -> Case:
        CASES[name] = check
        return check

    return register


def owned_repositories(uow: SqlUnitOfWork) -> Iterator[tuple[repositories.Repository[Any], str]]:
    for attribute, field in OWNED.items():
        yield getattr(uow, attribute), field


# The generic methods, on every tenant-owned table.


@case("Repository.get")
async def _get(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    for repo, field in owned_repositories(uow):
        for for_update in (False, True):
            assert await repo.get(getattr(theirs, field), for_update=for_update) is None, field
            found = await repo.get(getattr(mine, field), for_update=for_update)
            assert found is not None and found.tenant_id == mine.tenant, field


@case("Repository.list")
async def _list(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    everything = PageRequest(size=100, after=None, conditions=(), scope="")
    for repo, field in owned_repositories(uow):
        rows, cursor = await repo.list(everything)
        assert {row.tenant_id for row in rows} == {mine.tenant}, field
        assert getattr(mine, field) in {row.id for row in rows}, field
        assert cursor is None
    # Narrowed to a parent of the other tenant's: nothing.
    rows, _ = await uow.participants.list(everything, run_id=theirs.done)
    assert rows == []
    rows, _ = await uow.metrics.list(everything, run_id=mine.done)
    assert [m.id for m in rows] == [mine.metric]
    assert (await uow.metrics.list(everything, run_id=theirs.done))[0] == []


@case("Repository.add")
async def _add(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    # Whatever tenant the object says, it is added as the caller's.
    smuggled = models.Template(name="smuggled", tenant_id=theirs.tenant)
    added = await uow.templates.add(smuggled)
    assert added.tenant_id == mine.tenant


@case("Repository.delete")
async def _delete(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    template = await uow.templates.get(mine.template)
    assert template is not None
    await uow.templates.delete(template)
    assert await uow.templates.get(mine.template) is None
    stmt = select(models.Template.id).where(models.Template.id == theirs.template)
    assert (await uow.session.execute(stmt)).scalar_one() == theirs.template


@case("Repository.flush")
async def _flush(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    agent = await uow.agents.get(mine.agent)
    assert agent is not None
    agent.config = {"changed": True}
    await uow.agents.flush()
    stmt = select(models.Agent.config).where(models.Agent.id == theirs.agent)
    assert (await uow.session.execute(stmt)).scalar_one() == {}


# The methods of one table.


@case("AgentRepository.name_taken")
async def _agent_name_taken(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert not await uow.agents.name_taken(theirs.agent_name)
    assert await uow.agents.name_taken(mine.agent_name)
    assert not await uow.agents.name_taken(mine.agent_name, other_than=mine.agent)


@case("AgentRepository.is_referenced")
async def _agent_is_referenced(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.agents.is_referenced(mine.agent)
    assert not await uow.agents.is_referenced(theirs.agent)


@case("TemplateRepository.name_taken")
async def _template_name_taken(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert not await uow.templates.name_taken(theirs.template_name)
    assert await uow.templates.name_taken(mine.template_name)


@case("ExperimentRepository.next_run_number")
async def _next_run_number(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    with pytest.raises(NoResultFound):
        await uow.experiments.next_run_number(theirs.experiment)
    assert await uow.experiments.next_run_number(mine.experiment) == 3


@case("ExperimentRepository.run_statuses")
async def _run_statuses(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.experiments.run_statuses(theirs.experiment) == []
    statuses = set(await uow.experiments.run_statuses(mine.experiment))
    assert statuses == {RunStatus.COMPLETED, RunStatus.RUNNING}


@case("RunRepository.silent_since")
async def _silent_since(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [run.id for run in await uow.runs.silent_since(utcnow())] == [mine.live]


@case("RunRepository.cancelled_before")
async def _cancelled_before(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [run.id for run in await uow.runs.cancelled_before(utcnow())] == [mine.live]


@case("RunRepository.ranked")
async def _ranked(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    for aggregate in MetricAggregate:
        for lowest_first in (True, False):
            rows, total = await uow.runs.ranked(SCENARIO, METRIC, aggregate, lowest_first, 10)
            assert [(row.run.id, row.agent_id) for row in rows] == [(mine.done, mine.agent)]
            assert total == 1
    rows, total = await uow.runs.ranked(
        SCENARIO, METRIC, MetricAggregate.MAX, False, 10, experiment_id=theirs.experiment
    )
    assert (rows, total) == ([], 0)


@case("RunRepository.status_counts")
async def _status_counts(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    counts = await uow.runs.status_counts(())
    assert counts == {RunStatus.COMPLETED: 1, RunStatus.RUNNING: 1}
    theirs_only = (Condition("experiment_id", "=", theirs.experiment),)
    assert await uow.runs.status_counts(theirs_only) == {}


@case("RunRepository.durations")
async def _durations(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.runs.durations(()) == [mine.duration]
    theirs_only = (Condition("experiment_id", "=", theirs.experiment),)
    assert await uow.runs.durations(theirs_only) == []


@case("RunRepository.existing")
async def _existing(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.runs.existing([mine.done, theirs.done, theirs.live]) == {mine.done}


@case("RunRepository.unchecked_completed")
async def _unchecked_completed(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.runs.unchecked_completed() == [mine.done]


@case("ParticipantRepository.exists_for")
async def _participant_exists_for(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.participants.exists_for(mine.done, mine.agent)
    assert not await uow.participants.exists_for(theirs.done, theirs.agent)


@case("MetricRepository.for_run")
async def _metrics_for_run(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [m.id for m in await uow.metrics.for_run(mine.done)] == [mine.metric]
    assert await uow.metrics.for_run(theirs.done) == []


@case("MetricRepository.named")
async def _metric_named(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert (await uow.metrics.named(mine.done, METRIC))[:2] == (True, mine.metric)
    assert await uow.metrics.named(mine.done, "nothing") == (True, None, 0)
    assert await uow.metrics.named(theirs.done, METRIC) == (False, None, 0)


@case("ValidationRepository.exists_for")
async def _validation_exists_for(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.validations.exists_for(mine.done, "scenario", METRIC)
    assert not await uow.validations.exists_for(theirs.done, "scenario", METRIC)


@case("ArtifactRepository.named")
async def _artifact_named(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.artifacts.named(mine.done, "report.txt")
    assert not await uow.artifacts.named(theirs.done, "report.txt")


@case("ChunkRepository.points_within")
async def _points_within(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert await uow.chunks.points_within(mine.metric, 0, 10) == 2
    assert await uow.chunks.points_within(theirs.metric, 0, 10) == 0


@case("ChunkRepository.overlapping")
async def _overlapping(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert len(await uow.chunks.overlapping(mine.metric, 0, 10, None, None)) == 1
    assert await uow.chunks.overlapping(theirs.metric, 0, 10, None, None) == []


@case("ChunkRepository.summaries")
async def _summaries(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [c.seq for c in await uow.chunks.summaries(mine.metric, 0, 10)] == [1]
    assert await uow.chunks.summaries(theirs.metric, 0, 10) == []


@case("ChunkRepository.view_rows")
async def _view_rows(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert (await uow.chunks.view_rows(mine.metric, 0, 10)).seqs.tolist() == [1]
    assert len(await uow.chunks.view_rows(theirs.metric, 0, 10)) == 0


@case("ChunkRepository.with_seqs")
async def _with_seqs(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [c.seq for c in await uow.chunks.with_seqs(mine.metric, [1])] == [1]
    assert await uow.chunks.with_seqs(theirs.metric, [1]) == []


@case("ChunkRepository.inner_spans")
async def _inner_spans(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    spans = await uow.chunks.inner_spans([mine.metric, theirs.metric], 0, 10)
    assert spans == {mine.metric: (0, 1)}


@case("ChunkRepository.edge_steps")
async def _edge_steps(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    # The chunk (steps 0 and 1) reaches across the range's low bound.
    found = await uow.chunks.edge_steps([mine.metric, theirs.metric], 1, 5)
    assert [(row[0], row[1], row[2]) for row in found] == [(mine.metric, 2, 0)]


@case("ChunkRepository.staged")
async def _staged(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.chunks.staged([mine.metric, theirs.metric])
    assert [(s.metric_id, s.seq, s.first_step) for s in found[mine.metric]] == [
        (mine.metric, 2, 100)
    ]
    assert found[theirs.metric] == []


@case("MetricRepository.named_in")
async def _metrics_named_in(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.metrics.named_in([mine.done, theirs.done], [METRIC])
    assert [m.id for m in found] == [mine.metric]


async def _copies(uow: SqlUnitOfWork, *metric_ids: str) -> list[float | None]:
    """Each metric's copy of its latest value, whoever's (SQLite: no row-level security)."""
    stmt = select(models.Metric.id, models.Metric.final_last)
    found = dict((await uow.session.execute(stmt.where(models.Metric.id.in_(metric_ids)))).all())
    return [found[m] for m in metric_ids]


@case("MetricRepository.finalize")
async def _metrics_finalize(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    await uow.metrics.finalize([mine.done, theirs.done])
    mine_copy, theirs_copy = await _copies(uow, mine.metric, theirs.metric)
    assert mine_copy is not None and theirs_copy is None


@case("MetricRepository.unfinalize")
async def _metrics_unfinalize(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    await uow.metrics.finalize([mine.done])
    await uow.session.execute(
        update(models.Metric).where(models.Metric.id == theirs.metric).values(final_last=1.0)
    )
    await uow.metrics.unfinalize([mine.done, theirs.done])
    assert await _copies(uow, mine.metric, theirs.metric) == [None, 1.0]


@case("RunRepository.many")
async def _runs_many(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.runs.many([mine.done, theirs.done, mine.live])
    assert sorted(r.id for r in found) == sorted([mine.done, mine.live])


@case("EventRepository.list")
async def _events_list(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    everything = PageRequest(size=10, after=None, conditions=(), scope="")
    rows, _ = await uow.events.list(everything, mine.done)
    assert [e.tenant_id for e in rows] == [mine.tenant]
    assert (await uow.events.list(everything, theirs.done))[0] == []


# The access catalogue is read before any tenant is known: it is not scoped, by design; what
# is asked by tenant must answer for that tenant only.


@case("AccessRepository.add")
async def _access_add(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    await uow.access.add(models.Tenant(id="cccccccc-0000-0000-0000-000000000003", name="c"))
    assert len(await uow.access.tenants()) == 4  # the default tenant, ours, theirs, the new one


@case("AccessRepository.tenant")
async def _access_tenant(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.access.tenant(theirs.tenant)
    assert found is not None and found.name == theirs.tenant_name


@case("AccessRepository.tenant_named")
async def _access_tenant_named(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.access.tenant_named(theirs.tenant_name)
    assert found is not None and found.id == theirs.tenant


@case("AccessRepository.tenants")
async def _access_tenants(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert {t.id for t in await uow.access.tenants()} >= {mine.tenant, theirs.tenant}


@case("AccessRepository.key_by_prefix")
async def _access_key_by_prefix(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    found = await uow.access.key_by_prefix(theirs.key_prefix)
    assert found is not None and found.tenant_id == theirs.tenant


@case("AccessRepository.keys")
async def _access_keys(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    assert [k.id for k in await uow.access.keys(mine.tenant)] == [mine.key]
    assert {k.id for k in await uow.access.keys()} >= {mine.key, theirs.key}


@case("AccessRepository.touch_key")
async def _access_touch_key(uow: SqlUnitOfWork, mine: World, theirs: World) -> None:
    await uow.access.touch_key(mine.key, utcnow())
    stmt = select(models.ApiKey.id).where(models.ApiKey.last_used_at.is_not(None))
    assert list((await uow.session.execute(stmt)).scalars()) == [mine.key]


REPOSITORY_MODULES = (repositories, chunk_repository)


def repository_methods() -> list[str]:
    """``Class.method`` of every public method defined by a repository class."""
    found = []
    for module in REPOSITORY_MODULES:
        for class_name, cls in vars(module).items():
            if not (inspect.isclass(cls) and cls.__module__ == module.__name__):
                continue
            if not class_name.endswith("Repository"):
                continue
            for name, member in vars(cls).items():
                if not name.startswith("_") and inspect.isfunction(member):
                    found.append(f"{class_name}.{name}")
    return sorted(found)


@pytest.fixture
async def worlds(services: Services) -> tuple[World, World]:
    """Tenants A and B, each with the same world."""
    a = await seed(services, "aaaaaaaa-0000-0000-0000-000000000001", "a", 10)
    b = await seed(services, "bbbbbbbb-0000-0000-0000-000000000002", "b", 20)
    return a, b


def test_the_walk_finds_the_repositories() -> None:
    methods = repository_methods()
    assert {"Repository.get", "RunRepository.ranked", "RunRepository.durations"} <= set(methods)
    assert "EventRepository.list" in methods and "AccessRepository.keys" in methods
    assert "ChunkRepository.view_rows" in methods


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("method", repository_methods())
@pytest.mark.parametrize("me", [0, 1], ids=["as-a", "as-b"])
async def test_repository_method_keeps_tenants_apart(
    services: Services, worlds: tuple[World, World], method: str, me: int
) -> None:
    check = CASES.get(method)
    assert check is not None, f"{method} has no two-tenant case in {__name__}: add one"
    mine, theirs = worlds[me], worlds[1 - me]
    with acting_as(mine.tenant):
        async with services.uow() as uow:
            await check(uow, mine, theirs)
    # Nothing of the other tenant's was written or removed by the case.
    with acting_as(theirs.tenant):
        async with services.uow() as uow:
            for repo, field in owned_repositories(uow):
                assert await repo.get(getattr(theirs, field)) is not None, field
