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
from pathlib import Path
from typing import Any

import pytest

from simtrack.errors import InvalidArgument
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
