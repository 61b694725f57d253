"""Rows of every List call but ListRuns (``run_table.py``), for the order_by tests: each table
makes its rows on the test's database (names in mixed case and beyond ASCII, values missing,
NaN, ties in every key and in creation time), reads back what the list holds of each (its
values of the sort keys) and can insert one more row between pages.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from simtrack.server.artifact_store import ArtifactStore
from simtrack.server.core.listing import Page
from simtrack.server.core.model import ArtifactType, MetricKind, SimulationStatus
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import models
from simtrack.server.domain.artifacts import ArtifactService
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.scenarios import ScenarioQueries
from simtrack.server.domain.validations import ValidationService
from simtrack.server.ingest.writer import metric_id
from tests.support.services import Services

Row = dict[str, Any]  # "id" (an item's identity) and its value of each sort key (None: none)
ListPage = Callable[[int, str, str, str], Awaitable[Page[Any]]]  # size, token, filter, order_by

# Text that orders differently by code point, by locale and case-blind.
NAMES = ["b", "B", "a", "\N{LATIN SMALL LETTER E WITH ACUTE}", "Z", "ab", "a b", "\N{ROCKET}"]
SEEDS: list[Any] = [5, None, 2.5, "7", 5, True, -1, 0]  # numbers, missing, other types, ties
BASE = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


@dataclass
class Table:
    """One List call's rows (in its default order) and how to page through it."""

    rows: list[Row]
    list: ListPage
    insert: Callable[[int], Awaitable[None]] | None  # the i-th new row; None: read-only
    values: Callable[[Any], Row]  # an item's row

    def identity(self, item: Any) -> str:
        return str(self.values(item)["id"])


@dataclass(frozen=True)
class Case:
    collection: str
    orders: tuple[str, ...]  # several orders of this list, each checked page by page
    unordered: tuple[str, ...]  # fields it filters on that have no order
    make: Callable[[Services, Path], Awaitable[Table]]


def number(value: Any) -> float | None:
    """A parameter's numeric value: a number that is no boolean, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


async def table(
    call: Callable[..., Awaitable[Page[Any]]],
    values: Callable[[Any], Row],
    insert_row: Callable[[int], Awaitable[None]] | None,
    *parent: str,
) -> Table:
    """The rows as the list ``call`` (of ``parent``'s children) holds them, in its default
    order.
    """

    def page(size: int, token: str, text: str, order: str) -> Awaitable[Page[Any]]:
        return call(*parent, size, token, text, order)

    items = (await page(1000, "", "", "")).items
    return Table([values(item) for item in items], page, insert_row, values)


def seed_of(params: dict[str, Any], key: str = "seed") -> float | None:
    return number(params.get(key))


async def add(services: Services, *rows: Any) -> None:
    """ORM rows of the default tenant, inserted as they are (times, NaN and all)."""
    async with services.uow() as uow:
        for row in rows:
            row.tenant_id = DEFAULT_TENANT_ID
            uow.session.add(row)
        await uow.commit()


async def inserted(
    services: Services, make: Callable[[int, str], Any], names: Sequence[str]
) -> Callable[[int], Awaitable[None]]:
    """Insert ``make``'s row of each of ``names``; return what inserts the i-th new one."""
    await add(services, *(make(index, name) for index, name in enumerate(names)))

    async def one_more(index: int) -> None:
        await add(services, make(index, f"{names[index % len(names)]}/new-{index}"))

    return one_more


async def agents(services: Services, _: Path) -> Table:
    for index, name in enumerate(NAMES):
        agent = await services.agent(name)
        if index % 3 == 0:  # updated later: update_time orders otherwise than create_time
            await services.agents.update(agent.id, {"config": {"v": index}})

    async def one_more(index: int) -> None:
        await services.agent(NAMES[index % len(NAMES)] + f"-{index}")

    return await table(
        services.agents.list,
        lambda a: {
            "id": a.id,
            "name": a.name,
            "create_time": a.created_at,
            "update_time": a.updated_at,
        },
        one_more,
    )


async def templates(services: Services, _: Path) -> Table:
    for index, name in enumerate(reversed(NAMES)):
        made = await services.templates.create(name=name, description="", config={})
        if index % 2:
            await services.templates.update(made.id, {"description": "changed"})

    async def one_more(index: int) -> None:
        name = f"{NAMES[index % len(NAMES)]}{index}"
        await services.templates.create(name=name, description="", config={})

    return await table(
        services.templates.list,
        lambda t: {
            "id": t.id,
            "name": t.name,
            "create_time": t.created_at,
            "update_time": t.updated_at,
        },
        one_more,
    )


async def experiments(services: Services, _: Path) -> Table:
    agent = await services.agent()
    for index, seed in enumerate(SEEDS):
        params = {} if seed is None else {"seed": seed}
        made = await services.experiment(agent.id, name=NAMES[index % 3], params=params)
        if index % 3 == 1:
            await services.experiments.update(made.id, {"description": "changed"})

    async def one_more(index: int) -> None:
        seed = SEEDS[index % len(SEEDS)]
        await services.experiment(agent.id, name=NAMES[index % 5], params={"seed": seed})

    return await table(
        services.experiments.list,
        lambda e: {
            "id": e.id,
            "name": e.name,
            "create_time": e.created_at,
            "update_time": e.updated_at,
            "params.seed": seed_of(e.params),
        },
        one_more,
    )


async def simulations(services: Services, _: Path) -> Table:
    async def create(seed: Any) -> models.Simulation:
        return await services.simulations.create(
            experiment_id="",
            status=None,
            parameters={} if seed is None else {"seed": seed},
            metadata={},
            results_summary={},
        )

    for index, seed in enumerate(SEEDS):
        made = await create(seed)
        if index % 3:  # started; some of those ended
            await services.simulations.update(made.id, {"status": SimulationStatus.RUNNING})
            if index % 2:
                await services.simulations.update(made.id, {"status": SimulationStatus.COMPLETED})

    async def one_more(index: int) -> None:
        await create(SEEDS[index % len(SEEDS)])

    return await table(
        services.simulations.list,
        lambda s: {
            "id": s.id,
            "create_time": s.created_at,
            "update_time": s.updated_at,
            "start_time": s.started_at,
            "end_time": s.ended_at,
            "parameters.seed": seed_of(s.parameters),
        },
        one_more,
    )


async def participants(services: Services, _: Path) -> Table:
    run = await services.run((await services.experiment()).id)
    roles = ["seller", "buyer", "seller", "", "Buyer", "\N{LATIN SMALL LETTER SHARP S}", "b"]

    async def join(role: str) -> models.Participant:
        agent = await services.agent()
        return await services.participants.create(
            run_id=run.id, agent_id=agent.id, role=role, config_override={}
        )

    for index, role in enumerate(roles):
        made = await join(role)
        if index % 2:
            await services.participants.update(made.id, {"config_override": {"x": 1}})

    async def one_more(index: int) -> None:
        await join(roles[index % len(roles)])

    return await table(
        services.participants.list,
        lambda p: {
            "id": p.id,
            "role": p.role,
            "create_time": p.created_at,
            "update_time": p.updated_at,
        },
        one_more,
        run.id,
    )


async def a_run(services: Services) -> models.Run:
    return await services.run((await services.experiment()).id)


def tied_time(index: int) -> datetime:
    """Creation times with ties: three rows share each."""
    return BASE + timedelta(seconds=index // 3)


async def artifacts(services: Services, tmp: Path) -> Table:
    run = await a_run(services)
    service = ArtifactService(services.uow, ArtifactStore(tmp / "artifacts"), 1 << 20)

    def artifact(index: int, name: str) -> models.Artifact:
        return models.Artifact(
            run_id=run.id,
            name=name,
            type=ArtifactType.DATA,
            content_type="text/plain",
            size_bytes=[10, 0, 10, 7, 1 << 40][index % 5],
            sha256="0" * 64,
            created_at=tied_time(index),
        )

    one_more = await inserted(services, artifact, NAMES)

    return await table(
        service.list,
        lambda a: {
            "id": a.id,
            "name": a.name,
            "create_time": a.created_at,
            "size_bytes": a.size_bytes,
        },
        one_more,
        run.id,
    )


async def validations(services: Services, _: Path) -> Table:
    run = await a_run(services)
    service = ValidationService(services.uow, services.catalogue)
    scores = [0.5, None, -1.0, 0.5, math.inf, None, 2.0]

    def validation(index: int, validator: str) -> models.Validation:
        return models.Validation(
            run_id=run.id,
            validator=validator,
            kind=NAMES[index % 4],
            passed=bool(index % 2),
            score=scores[index % len(scores)],
            details={},
            created_at=tied_time(index),
        )

    one_more = await inserted(services, validation, [NAMES[i % 3] for i in range(9)])

    return await table(
        service.list,
        lambda v: {
            "id": v.id,
            "validator": v.validator,
            "kind": v.kind,
            "score": v.score,
            "create_time": v.created_at,
        },
        one_more,
        run.id,
    )


async def metrics(services: Services, _: Path) -> Table:
    run = await a_run(services)
    history = HistoryService(services.uow)
    # (count, last_step, last_value, min, max); NaN where no finite value was sent.
    summaries: list[tuple[int, int | None, float | None, float | None, float | None]] = [
        (3, 10, 1.5, -2.0, 4.0),
        (0, None, None, None, None),
        (3, 7, math.nan, 1.0, 1.0),
        (5, 10, -math.inf, -math.inf, 2.0),
        (1, 0, 1.5, 1.5, 1.5),
    ]

    def metric(index: int, name: str) -> models.Metric:
        count, step, last, low, high = summaries[index % len(summaries)]
        return models.Metric(
            id=metric_id(run.id, name),
            run_id=run.id,
            name=name,
            kind=MetricKind.GAUGE,
            labels={},
            count=count,
            last_step=step,
            last_value=last,
            min_value=low,
            max_value=high,
            created_at=tied_time(index),
            updated_at=tied_time(len(NAMES) - index),
        )

    one_more = await inserted(services, metric, NAMES)

    return await table(
        history.list_metrics,
        lambda m: {
            "id": m.name,
            "name": m.name,
            "count": m.count,
            "last_step": m.last_step,
            "last_value": finite(m.last_value),
            "min": finite(m.min_value),
            "max": finite(m.max_value),
            "create_time": m.created_at,
            "update_time": m.updated_at,
        },
        one_more,
        run.id,
    )


async def events(services: Services, _: Path) -> Table:
    run = await a_run(services)
    history = HistoryService(services.uow)
    steps = [5, 1, 5, 9, 0, 1]

    def event(seq: int, position: int) -> Any:
        index = seq * 3 + position
        return {
            "run_id": run.id,
            "seq": seq,
            "position": position,
            "tenant_id": DEFAULT_TENANT_ID,
            "step": steps[index % len(steps)],
            "time_ns": 0,
            "type": NAMES[index % len(NAMES)],
            "agent_id": None,
            "payload": {},
        }

    async def store(*rows: Any) -> None:
        async with services.engine.begin() as connection:
            await connection.execute(insert(models.Event), list(rows))

    # Sent out of order: seq 3 before seq 1, the list's default order is (seq, position).
    await store(*(event(seq, position) for seq in (3, 1, 2) for position in range(3)))

    async def one_more(index: int) -> None:
        await store(event(10 + index, 0), event(10 + index, 1))

    return await table(
        history.list_events,
        lambda e: {"id": f"{e.seq}/{e.position}", "step": e.step, "type": e.type},
        one_more,
        run.id,
    )


async def scenarios(services: Services, _: Path) -> Table:
    queries = ScenarioQueries(services.catalogue)

    async def listed(*args: Any) -> Page[Any]:  # the catalogue is in memory: no await
        return queries.list(*args)

    return await table(
        listed,
        lambda s: {
            "id": s.id,
            "name": s.name,
            "difficulty_tier": s.difficulty_tier,
            "duration_ticks": s.duration,
        },
        None,  # the catalogue is read-only
    )


CASES: Sequence[Case] = (
    Case("agents", ("name", "name desc", "update_time desc, name"), ("framework",), agents),
    Case("templates", ("name desc", "update_time, create_time desc"), (), templates),
    Case(
        "experiments",
        ("name", "name desc, params.seed desc", "update_time desc"),
        ("status", "agent_id", "scenario_id"),
        experiments,
    ),
    Case(
        "simulations",
        ("parameters.seed desc", "start_time, parameters.seed", "end_time desc", "update_time"),
        ("status", "experiment_id"),
        simulations,
    ),
    Case("participants", ("role", "role desc, create_time desc"), ("agent_id",), participants),
    Case(
        "artifacts",
        ("size_bytes desc", "name", "create_time desc", "create_time, size_bytes"),
        ("type", "content_type"),
        artifacts,
    ),
    Case(
        "validations",
        ("score desc", "validator, kind desc", "score, create_time desc", "create_time"),
        ("passed",),
        validations,
    ),
    Case(
        "metrics",
        ("last_value desc", "count, name desc", "min", "max desc", "last_step desc", "create_time"),
        ("kind",),
        metrics,
    ),
    Case("events", ("step desc", "type, step", "step"), ("agent_id",), events),
    Case(
        "scenarios",
        ("difficulty_tier desc, name", "duration_ticks desc", "name desc"),
        ("tags",),
        scenarios,
    ),
)
