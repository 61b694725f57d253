"""order_by (AIP-132) on real rows, SQLite and PostgreSQL alike: each order lists the runs as a
plain Python sort of the same rows does (missing values last in either direction, ties in
creation order), through pages, and each run exactly once while runs are inserted between
pages; a token resumes only the order it was issued for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from simtrack.errors import InvalidArgument
from tests.support import Services
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


def expected(rows: list[Row], order_by: str) -> list[str]:
    """The rows sorted as order_by says, by stable sorts from the last key to the first."""
    result = list(rows)  # creation order: the tie-break
    keys = [part.split() for part in order_by.split(",")]
    for field, *direction in reversed(keys):
        get = KEYS[field]
        present = [r for r in result if get(r) is not None]
        missing = [r for r in result if get(r) is None]
        present.sort(key=get, reverse=[d.lower() for d in direction] == ["desc"])
        result = present + missing
    return [r["id"] for r in result]


async def listed(services: Services, order_by: str, size: int, text: str = "") -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await services.runs.list(size, token, text, order_by)
        ids.extend(run.id for run in page.items)
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
    assert await listed(services, order_by, 1000) == want
    assert await listed(services, order_by, 3) == want
    picked = [r for r in runs if r["status"] != "failed"]
    assert await listed(services, order_by, 4, "NOT status = failed") == expected(picked, order_by)


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
