"""order_by (AIP-132) on real rows, SQLite and PostgreSQL alike, on every List call: each order
lists the rows as a plain Python sort of the same rows does (missing values last in either
direction, ties in the list's default order), through pages, and each row exactly once while
rows are inserted between pages; bad orders are refused naming order_by; a token resumes only
the order it was issued for. Runs (with their filters, parameters and metrics) first, then the
other lists from one table (``tests/support/list_tables.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from simtrack.errors import InvalidArgument
from simtrack.server.core.model import RunStatus
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID, acting_for
from simtrack.server.db import models
from simtrack.server.db.ingest_store import IngestStore
from simtrack.server.domain.live_runs import LiveRuns
from simtrack.server.ingest.bus import InProcessBus
from simtrack.server.ingest.writer import metric_id
from tests.support import Services
from tests.support.list_tables import CASES, Case, ListPage
from tests.support.run_table import Row, make_runs, metric, number

Getter = Callable[[Row], Any]

KEYS: dict[str, Getter] = {
    "run_number": lambda r: r["run_number"],
    "create_time": lambda r: r["created"],
    "start_time": lambda r: r["started"],
    "end_time": lambda r: r["ended"],
    "duration": lambda r: r["duration"],
    "params.lr": lambda r: number(r, "lr"),
    "params.n": lambda r: number(r, "n"),
    "metrics.total_profit": lambda r: metric(r, "total_profit"),
    "metrics.total_profit.min": lambda r: metric(r, "total_profit", 1),
    "metrics.total_profit.max": lambda r: metric(r, "total_profit", 2),
    "metrics.loss/train": lambda r: metric(r, "loss/train"),
}

ORDERS = [
    "run_number",
    "run_number desc",
    "create_time desc",
    "start_time",
    "end_time desc, run_number",
    "duration desc",
    "params.lr desc",
    "params.lr, params.n desc",
    "metrics.total_profit desc, create_time",
    "metrics.total_profit.min",
    "metrics.loss/train desc",
    "params.n DESC, metrics.total_profit ASC, run_number desc",
]


def expected(
    rows: list[Row], order_by: str, keys: Callable[[str], Getter] = KEYS.__getitem__
) -> list[str]:
    """The rows (in the list's default order: the tie-break) sorted as order_by says, by
    stable sorts from the last key to the first.
    """
    result = list(rows)
    for field, *direction in reversed([part.split() for part in order_by.split(",")]):
        get = keys(field)
        present = [r for r in result if get(r) is not None]
        missing = [r for r in result if get(r) is None]
        present.sort(key=get, reverse=[d.lower() for d in direction] == ["desc"])
        result = present + missing
    return [r["id"] for r in result]


def runs_of(services: Services) -> ListPage:
    return lambda size, token, text, order: services.runs.list(size, token, text, order)


async def listed(
    page_of: ListPage,
    order_by: str,
    size: int,
    text: str = "",
    identity: Callable[[Any], str] = lambda item: str(item.id),
) -> list[str]:
    """The ids of every page of a list."""
    ids: list[str] = []
    token = ""
    while True:
        page = await page_of(size, token, text, order_by)
        ids.extend(identity(item) for item in page.items)
        token = page.next_page_token
        if not token:
            return ids
        assert len(ids) < 10_000, "paging does not end"


@pytest.fixture
async def runs(services: Services) -> list[Row]:
    return await make_runs(services)


@pytest.mark.parametrize("order_by", ORDERS)
async def test_an_order_lists_the_runs_as_a_sort_of_the_same_rows(
    services: Services, runs: list[Row], order_by: str
) -> None:
    want = expected(runs, order_by)
    assert await listed(runs_of(services), order_by, 1000) == want
    assert await listed(runs_of(services), order_by, 3) == want
    picked = [r for r in runs if r["status"] != "failed"]
    assert await listed(runs_of(services), order_by, 4, "NOT status = failed") == expected(
        picked, order_by
    )


LATE = 5000.0  # a late write's value: above every other total_profit
Floats = tuple[float | None, float | None, float | None]


async def final_copies(services: Services) -> dict[tuple[str, str], tuple[Floats, Floats]]:
    """Each metric's (run, name): its summary (latest, min, max) and its copies."""
    m = models.Metric
    columns = (m.last_value, m.min_value, m.max_value, m.final_last, m.final_min, m.final_max)
    async with services.engine.connect() as connection:
        rows = (await connection.execute(select(m.run_id, m.name, *columns))).all()
    return {(r[0], r[1]): ((r[2], r[3], r[4]), (r[5], r[6], r[7])) for r in rows}


def same_floats(a: Floats, b: Floats) -> bool:
    return all(x == y or (x is not None and y is not None and math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))  # fmt: skip


async def copy_ended_summaries(services: Services, runs: list[Row]) -> None:
    """What ending a run does: its metric summaries copied for ordered lists."""
    ended = [r["id"] for r in runs if r["status"] in ("completed", "failed", "stopped")]
    async with services.uow() as uow:
        await uow.metrics.finalize(ended)
        await uow.commit()


METRIC_ORDERS = [o for o in ORDERS if o.startswith("metrics.")] + [
    "metrics.total_profit.max desc, params.lr",
    "metrics.loss/train, metrics.total_profit desc",
]


@pytest.mark.parametrize("order_by", METRIC_ORDERS)
async def test_metric_orders_read_ended_runs_copies_and_live_runs_values_alike(
    services: Services, runs: list[Row], order_by: str
) -> None:
    """Ended runs sorted by their copies (an index's order), the others by their values,
    merged: the same list as before the copies, through pages, filtered or not; again after a
    late write to ended runs copied again, and after their copies are cleared (revived).
    """

    async def lists_as_expected() -> None:
        want = expected(runs, order_by)
        for size in (1000, 3, 1):
            assert await listed(runs_of(services), order_by, size) == want
        picked = [r for r in runs if r["status"] != "failed"]
        assert await listed(runs_of(services), order_by, 4, "NOT status = failed") == expected(
            picked, order_by
        )

    await lists_as_expected()
    await copy_ended_summaries(services, runs)
    copies = await final_copies(services)
    ended = {r["id"] for r in runs if r["status"] in ("completed", "failed", "stopped")}
    for (run_id, _), (summary, copy) in copies.items():
        assert same_floats(copy, summary) if run_id in ended else copy == (None, None, None)
    await lists_as_expected()

    late = sorted(r["id"] for r in runs if r["id"] in ended and "total_profit" in r["metrics"])[:3]
    async with IngestStore(services.engine).transaction() as tx:
        await tx.upsert_metrics(
            DEFAULT_TENANT_ID,
            datetime.now(UTC),
            [
                {
                    "id": metric_id(run_id, "total_profit"),
                    "run_id": run_id,
                    "name": "total_profit",
                    "unit": "",
                    "kind": "gauge",
                    "count": 1,
                    "min_value": LATE,
                    "max_value": LATE,
                    "last_step": 10,
                    "last_value": LATE,
                }  # fmt: skip
                for run_id in late
            ],
        )
    for row in runs:
        if row["id"] in late:
            _, low, high = row["metrics"]["total_profit"]
            row["metrics"] = {  # a copy: runs share their metrics' table entries
                **row["metrics"],
                "total_profit": (
                    LATE,
                    LATE if low is None else min(low, LATE),
                    LATE if high is None else max(high, LATE),
                ),
            }
    await copy_ended_summaries(services, runs)  # as the writer does after a late write
    copies = await final_copies(services)
    for run_id in late:
        summary, copy = copies[run_id, "total_profit"]
        assert summary[0] == LATE and copy == summary
    await lists_as_expected()
    # Revived runs (running again) have no copies: sorted among the others by their values.
    async with services.uow() as uow:
        await uow.metrics.unfinalize(sorted(ended))
        await uow.commit()
    # Every copy cleared, a metric whose latest value is NaN (SQLite: NULL) and min is not too.
    assert all(copy == (None, None, None) for _, copy in (await final_copies(services)).values())
    await lists_as_expected()


@pytest.mark.parametrize("order_by", ["params.lr desc", "metrics.total_profit, start_time desc"])
async def test_each_run_once_while_runs_are_inserted_between_pages(
    services: Services, runs: list[Row], order_by: str
) -> None:
    experiment_id = runs[0]["experiment_id"]
    seen: list[str] = []
    token = ""
    for round_ in range(100):
        page = await services.runs.list(4, token, "", order_by)
        seen.extend(run.id for run in page.items)
        token = page.next_page_token
        if not token:
            break
        # New runs sort anywhere: before the page just read, after it, among the ties.
        await services.run(experiment_id, params={"lr": [0.001, 0.5, 9.0][round_ % 3]})
    assert len(seen) == len(set(seen)), "a run listed twice"
    originals = {r["id"] for r in runs}
    assert [i for i in seen if i in originals] == expected(runs, order_by)


async def test_a_listing_kept_for_one_tenant_lists_no_other_tenants_runs(
    services: Services,
) -> None:
    """The reads build a listing's statements once for each shape of page and keep them
    (``SqlReads._run_page_statements``): the same filter and order asked by two tenants in
    turn, each page after the first from kept statements, lists each tenant's own runs.
    """
    other = "22222222-0000-0000-0000-000000000002"
    async with services.uow() as uow:
        await uow.access.add(models.Tenant(id=other, name="other"))
        await uow.commit()
    owned: dict[str, set[str]] = {}
    for tenant in (DEFAULT_TENANT_ID, other):
        with acting_for(tenant):
            experiment = await services.experiment()
            owned[tenant] = {(await services.run(experiment.id)).id for _ in range(5)}
    for order_by in ("", "run_number desc", "metrics.total_profit desc, create_time"):
        for _ in range(2):
            for tenant, runs in owned.items():
                with acting_for(tenant):
                    ids = await listed(runs_of(services), order_by, 2, "NOT status = failed")
                assert sorted(ids) == sorted(runs), (tenant, order_by)


@pytest.mark.parametrize(
    "order_by",
    [
        "worker_id",  # text: no order both databases share
        "status",
        "nope",
        "run_number desc desc",
        "run_number,",
        "run_number, run_number desc",
        "params.",
        "metrics.x asc desc",
        ", ".join(["run_number"] + [f"params.k{i}" for i in range(8)]),
        "x" * 2000,
    ],
)
async def test_bad_orders_are_refused(services: Services, order_by: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await services.runs.list(10, "", "", order_by)
    assert error.value.violations[0].field == "order_by"


async def test_a_token_resumes_only_its_own_order(services: Services, runs: list[Row]) -> None:
    token = (await services.runs.list(2, "", "", "params.lr desc")).next_page_token
    for other in ("params.lr", "", "run_number"):
        with pytest.raises(InvalidArgument) as error:
            await services.runs.list(2, token, "", other)
        assert error.value.violations[0].field == "page_token"
    assert (await services.runs.list(2, token, "", " params.lr  DESC ")).items


async def test_experiments_order_by_a_parameter(services: Services) -> None:
    agent = await services.agent()
    made = [
        await services.experiment(agent.id, params=params)
        for params in ({"seed": 5}, {}, {"seed": 20}, {"seed": "30"}, {"seed": 20})
    ]
    page = await services.experiments.list(100, "", "", "params.seed desc")
    assert [e.id for e in page.items] == [made[i].id for i in (2, 4, 0, 1, 3)]


# -- every other list, from one table -----------------------------------------------------------


def by_field(field: str) -> Getter:
    return lambda row: row[field]


def each_case() -> list[Any]:
    return [pytest.param(case, id=case.collection) for case in CASES]


def each_order() -> list[Any]:
    return [
        pytest.param(case, order, id=f"{case.collection}-{order}")
        for case in CASES
        for order in case.orders
    ]


@pytest.mark.parametrize(("case", "order_by"), each_order())
async def test_every_list_orders_as_a_sort_of_the_same_rows(
    services: Services, tmp_path: Path, case: Case, order_by: str
) -> None:
    made = await case.make(services, tmp_path)
    assert len(made.rows) >= 6
    want = expected(made.rows, order_by, by_field)
    assert await listed(made.list, order_by, 1000, identity=made.identity) == want
    assert await listed(made.list, order_by, 2, identity=made.identity) == want
    shouted = order_by.replace("desc", "DESC").replace(",", " ,")  # the same order and tokens
    assert await listed(made.list, shouted, 5, identity=made.identity) == want


@pytest.mark.parametrize("case", each_case())
async def test_each_row_once_while_rows_are_inserted_between_pages(
    services: Services, tmp_path: Path, case: Case
) -> None:
    made = await case.make(services, tmp_path)
    if made.insert is None:
        pytest.skip("the scenario catalogue is read-only")
    for order_by in case.orders[:2]:
        seen: list[str] = []
        token = ""
        for _ in range(100):
            page = await made.list(3, token, "", order_by)
            seen.extend(made.identity(item) for item in page.items)
            token = page.next_page_token
            if not token:
                break
            # The new row sorts anywhere: before the page read, after it, among its ties.
            await made.insert(len(seen) + 100 * len(order_by))
        assert len(seen) == len(set(seen)), f"{order_by}: a row listed twice"
        originals = {row["id"] for row in made.rows}
        want = expected(made.rows, order_by, by_field)
        assert [i for i in seen if i in originals] == want, order_by


@pytest.mark.parametrize("case", each_case())
async def test_every_list_refuses_bad_orders_and_foreign_tokens(
    services: Services, tmp_path: Path, case: Case
) -> None:
    made = await case.make(services, tmp_path)
    for field in (*case.unordered, "nope", "id"):  # enums, ids, text without an order
        with pytest.raises(InvalidArgument) as error:
            await made.list(10, "", "", f"{case.orders[0]}, {field} desc")
        assert error.value.violations[0].field == "order_by"
        message = error.value.violations[0].description
        assert f"at position {len(case.orders[0]) + 2}" in message and field in message
    for bad in (f"{case.orders[0]} desc desc", f"{case.orders[0]},", "; drop table x"):
        with pytest.raises(InvalidArgument) as error:
            await made.list(10, "", "", bad)
        assert error.value.violations[0].field == "order_by"
    token = (await made.list(2, "", "", case.orders[0])).next_page_token
    assert token and (await made.list(2, token, "", case.orders[0])).items
    for other in ("", case.orders[1]):
        with pytest.raises(InvalidArgument) as error:
            await made.list(2, token, "", other)
        assert error.value.violations[0].field == "page_token"


async def test_names_order_by_code_point_whatever_the_locale(services: Services) -> None:
    """Names sort (and compare in filters) by code point on both databases, even where the
    column's collation is a locale's, which puts "a" before "B" and "é" before "f".
    """
    if services.backend == "postgresql":
        await services.execute(
            'ALTER TABLE agents ALTER COLUMN name TYPE varchar(200) COLLATE "en-x-icu"'
        )
    names = ["f", "B", "a", "\N{LATIN SMALL LETTER E WITH ACUTE}", "b", "A"]
    for name in names:
        await services.agent(name)
    page = await services.agents.list(100, "", "", "name")
    assert [a.name for a in page.items] == sorted(names)
    page = await services.agents.list(100, "", 'name > "B" AND name <= "f"', "name desc")
    picked = sorted((n for n in names if "B" < n <= "f"), reverse=True)
    assert [a.name for a in page.items] == picked


# A page's runs with the latest values of some metrics (ListRunsRequest.latest_metrics)


async def test_a_page_brings_the_latest_values_of_the_metrics_asked_for(
    services: Services, runs: list[Row]
) -> None:
    names = ["total_profit", "loss/train", "no-such-metric"]
    page = await services.runs.list(4, "", "", "metrics.total_profit desc", names)
    assert list(page.metrics) == [run.id for run in page.items]
    by_id = {r["id"]: r for r in runs}
    for run in page.items:
        got = {m.name: m for m in page.metrics[run.id]}
        assert list(got) == sorted(by_id[run.id]["metrics"]), "the ones it has, by name"
        for name, (latest, low, high) in by_id[run.id]["metrics"].items():
            assert unset(got[name].last_value) if unset(latest) else got[name].last_value == latest
            assert (got[name].min_value, got[name].max_value) == (low, high)
    again = await services.runs.list(4, page.next_page_token, "", "metrics.total_profit desc")
    assert again.metrics == {run.id: [] for run in again.items}  # none asked: none read


def unset(value: float | None) -> bool:
    """No value: None, or NaN (how SQLite gives a NaN back)."""
    return value is None or math.isnan(value)


@pytest.mark.parametrize(
    ("names", "field"),
    [
        ([f"m{i}" for i in range(21)], "latest_metrics"),
        (["loss", "loss"], "latest_metrics[1]"),
        (["loss", " "], "latest_metrics[1]"),
        (["x" * 201], "latest_metrics[0]"),
        (["a\x00b"], "latest_metrics[0]"),
    ],
)
async def test_bad_metric_names_are_refused_naming_the_name(
    services: Services, names: list[str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        await services.runs.list(10, "", "", "", names)
    assert error.value.violations[0].field == field


async def test_a_run_the_sweeper_fails_has_its_summaries_copied_and_a_revival_clears_them(
    services: Services,
) -> None:
    """Ending by the liveness sweep copies the run's metric summaries (as the stream's end
    and UpdateRun do); its worker coming back clears them (its values change again).
    """
    run = await services.run((await services.experiment()).id)
    metric = metric_id(run.id, "total_profit")
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with services.engine.begin() as connection:
        await connection.execute(
            update(models.Run)
            .where(models.Run.id == run.id)
            .values(status="running", started_at=long_ago, last_seen_at=long_ago)
        )
        await connection.execute(
            insert(models.Metric).values(
                id=metric,
                run_id=run.id,
                name="total_profit",
                kind="gauge",
                labels={},
                count=2,
                last_value=3.0,
                min_value=1.0,
                max_value=3.0,
                tenant_id=DEFAULT_TENANT_ID,
                created_at=long_ago,
                updated_at=long_ago,
            )  # fmt: skip
        )
    live = LiveRuns(services.uow, InProcessBus())
    live.started_at = long_ago
    assert await live.sweep(heartbeat_timeout=60, cancel_grace=60) == [run.id]
    copies = await final_copies(services)
    assert copies[run.id, "total_profit"] == ((3.0, 1.0, 3.0), (3.0, 1.0, 3.0))
    await live.attach(run.id, "worker-back")  # a live worker of a vanished run: revived
    assert (await services.runs.get(run.id)).status == RunStatus.RUNNING
    copies = await final_copies(services)
    assert copies[run.id, "total_profit"] == ((3.0, 1.0, 3.0), (None, None, None))
