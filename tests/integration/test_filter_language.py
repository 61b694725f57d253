"""The filter language on real rows, SQLite and PostgreSQL alike: each filter of a table of
cases lists exactly the runs a plain Python predicate over the same rows picks (written here
by hand, not by the parser), through pages, with wildcards, case, OR, NOT and IN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from simtrack.errors import InvalidArgument
from tests.support import Services

Row = dict[str, Any]

WORKERS = ["w-1", "w-2", "W-1", "50%_off", "50x_off", "", "tier0-a", "a*b"]
STATUSES = ["pending", "running", "completed", "failed", "stopped", "paused"]

CASES: list[tuple[str, Callable[[Row], bool]]] = [
    ('status = "completed"', lambda r: r["status"] == "completed"),
    (
        "status IN (completed, RUN_STATUS_STOPPED)",
        lambda r: r["status"] in ("completed", "stopped"),
    ),
    (
        'status = completed OR status = stopped AND worker_id = "w-1"',
        lambda r: r["status"] in ("completed", "stopped") and r["worker_id"] == "w-1",
    ),
    (
        '(status = completed AND worker_id = "w-1") OR worker_id = "W-1"',
        lambda r: (
            (r["status"] == "completed" and r["worker_id"] == "w-1") or r["worker_id"] == "W-1"
        ),
    ),
    ("NOT status = running", lambda r: r["status"] != "running"),
    (
        "NOT (status = running OR status = pending)",
        lambda r: r["status"] not in ("running", "pending"),
    ),
    ('worker_id = "w-*"', lambda r: r["worker_id"].startswith("w-")),
    ('worker_id != "*1"', lambda r: not r["worker_id"].endswith("1")),
    ('worker_id = "50%_off"', lambda r: r["worker_id"] == "50%_off"),  # no LIKE metacharacters
    ('worker_id = "50%*"', lambda r: r["worker_id"].startswith("50%")),
    ('worker_id = "*_off"', lambda r: r["worker_id"].endswith("_off")),
    (
        'worker_id = "a*b"',
        lambda r: r["worker_id"].startswith("a") and r["worker_id"].endswith("b"),
    ),
    ('worker_id = "*"', lambda r: True),
    ('worker_id = ""', lambda r: r["worker_id"] == ""),
    ('worker_id IN ("w-1", "")', lambda r: r["worker_id"] in ("w-1", "")),
    ('worker_id IN ("w-*")', lambda r: False),  # a list's values are literal
    (
        'scenario_id = "tier0-*" status != failed',
        lambda r: r["scenario_id"].startswith("tier0-") and r["status"] != "failed",
    ),
    (
        'NOT scenario_id = "tier0-*" AND NOT NOT status = paused',
        lambda r: not r["scenario_id"].startswith("tier0-") and r["status"] == "paused",
    ),
    ("experiment_id = {first}", lambda r: r["experiment_id"] == r["first"]),
    (
        "experiment_id != {first} OR status IN (pending)",
        lambda r: r["experiment_id"] != r["first"] or r["status"] == "pending",
    ),
]


@pytest.fixture
async def runs(services: Services) -> list[Row]:
    """Runs of two experiments (two scenarios) in every status, with odd worker ids."""
    first = await services.experiment(scenario_id="tier0-tutorial")
    second = await services.experiment(first.agent_id, scenario_id="tier2-supply-shock")
    rows: list[Row] = []
    for index in range(len(WORKERS) * 3):
        experiment = first if index % 2 else second
        run = await services.run(experiment.id)
        worker = WORKERS[index % len(WORKERS)]
        status = STATUSES[index % len(STATUSES)]
        await services.execute(
            "UPDATE runs SET status = :status, worker_id = :worker WHERE id = :id",
            status=status,
            worker=worker,
            id=run.id,
        )
        rows.append(
            {
                "id": run.id,
                "experiment_id": experiment.id,
                "scenario_id": experiment.scenario_id,
                "status": status,
                "worker_id": worker,
                "first": first.id,
            }
        )
    return rows


async def listed(services: Services, text: str, page_size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await services.runs.list(page_size, token, text)
        ids.extend(run.id for run in page.items)
        token = page.next_page_token
        if not token:
            return ids


@pytest.mark.parametrize(("text", "predicate"), CASES, ids=[text for text, _ in CASES])
async def test_a_filter_lists_what_its_predicate_picks(
    services: Services, runs: list[Row], text: str, predicate: Callable[[Row], bool]
) -> None:
    text = text.format(first=runs[0]["first"])
    expected = [row["id"] for row in runs if predicate(row)]
    assert await listed(services, text, 1000) == expected
    assert await listed(services, text, 4) == expected  # pages: each run once, in order


@pytest.mark.parametrize(
    "text",
    [
        "worker_id > a",  # text has no order both databases agree on
        'status = "completed" OR',
        "worker_id = x' OR '1'='1",
        'worker_id = "x"; DROP TABLE runs; --',
        "status = completed) OR (1 = 1",
    ],
)
async def test_bad_filters_are_refused_and_change_nothing(
    services: Services, runs: list[Row], text: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        await services.runs.list(1000, "", text)
    assert error.value.violations[0].field == "filter"
    assert len(await listed(services, "", 1000)) == len(runs)
