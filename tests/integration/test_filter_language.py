"""The filter language on real rows, SQLite and PostgreSQL alike: each filter of a table of
cases lists exactly the runs a plain Python predicate over the same rows picks (written here
by hand, not by the parser), through pages: wildcards, case, OR, NOT, IN, times, durations,
parameters of mixed types (true is not 1, "0.05" is not 0.05, missing keys) and metrics
(latest, min, max; NaN, ±inf, missing).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from simtrack.errors import InvalidArgument
from tests.support import Services
from tests.support.run_table import BASE, Row, make_runs, metric, number, param


@pytest.fixture
async def runs(services: Services) -> list[Row]:
    return await make_runs(services)


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
    ("agent_id = {first_agent}", lambda r: r["first_agent"] in r["agents"]),
    ("agent_id != {first_agent}", lambda r: r["first_agent"] not in r["agents"]),
    ('agent_id = "*"', lambda r: True),
    (
        "NOT agent_id = {first_agent} OR status = running",
        lambda r: r["first_agent"] not in r["agents"] or r["status"] == "running",
    ),
    ("run_number <= 3", lambda r: r["run_number"] <= 3),
    (
        "run_number IN (1, 5) OR run_number > 10",
        lambda r: r["run_number"] in (1, 5) or r["run_number"] > 10,
    ),
    (
        "start_time >= 2026-12-04T10:05:00Z",
        lambda r: r["started"] is not None and r["started"] >= BASE + timedelta(minutes=5),
    ),
    (
        'start_time < "2026-12-04T11:07:00+01:00"',
        lambda r: r["started"] is not None and r["started"] < BASE + timedelta(minutes=7),
    ),
    (
        "NOT end_time > 2026-12-04T10:10:00Z",
        lambda r: not (r["ended"] is not None and r["ended"] > BASE + timedelta(minutes=10)),
    ),
    (
        "duration >= 20s",
        lambda r: r["duration"] is not None and r["duration"] >= timedelta(seconds=20),
    ),
    (
        "duration < 10.5s AND duration > 0s",
        lambda r: (
            r["duration"] is not None and timedelta(0) < r["duration"] < timedelta(seconds=10.5)
        ),
    ),
    ("create_time > 2000-01-01T00:00:00Z", lambda r: True),
    ("params.lr > 0.01", lambda r: (v := number(r, "lr")) is not None and v > 0.01),
    ("params.lr = 1", lambda r: number(r, "lr") == 1),
    ('params.lr = "0.05"', lambda r: param(r, "lr", str) == "0.05"),
    ("params.lr != 0.5", lambda r: (v := number(r, "lr")) is not None and v != 0.5),
    ("NOT params.lr = 0.5", lambda r: number(r, "lr") != 0.5),
    ("params.warm = true", lambda r: param(r, "warm", bool) is True),
    ("params.warm != true", lambda r: param(r, "warm", bool) is False),
    ("params.policy = greedy", lambda r: param(r, "policy", str) == "greedy"),
    ('params.policy = "gre*dy"', lambda r: param(r, "policy", str) == "gre*dy"),  # literal
    (
        "params.policy IN (random, 7)",
        lambda r: param(r, "policy", str) == "random" or number(r, "policy") == 7,
    ),
    (
        "params.n >= -4 AND params.n < 10",
        lambda r: (v := number(r, "n")) is not None and -4 <= v < 10,
    ),
    ("params.missing = 1 OR params.missing != 1", lambda r: False),
    (
        "metrics.total_profit >= 1000",
        lambda r: (v := metric(r, "total_profit")) is not None and v >= 1000,
    ),
    (
        "metrics.total_profit != 900",
        lambda r: (v := metric(r, "total_profit")) is not None and v != 900,
    ),
    (
        "NOT metrics.total_profit < 1000",
        lambda r: not ((v := metric(r, "total_profit")) is not None and v < 1000),
    ),
    (
        "metrics.total_profit.min < 0 OR metrics.total_profit.max >= 2000",
        lambda r: (
            ((v := metric(r, "total_profit", 1)) is not None and v < 0)
            or ((w := metric(r, "total_profit", 2)) is not None and w >= 2000)
        ),
    ),
    ("metrics.loss/train > 1", lambda r: (v := metric(r, "loss/train")) is not None and v > 1),
    (
        "metrics.loss/train < -1e308",
        lambda r: (v := metric(r, "loss/train")) is not None and v < -1e308,
    ),
    ("metrics.loss/train.max = 0.5", lambda r: metric(r, "loss/train", 2) == 0.5),
    ("metrics.total_profit IN (900, 1000)", lambda r: metric(r, "total_profit") in (900, 1000)),
    ("metrics.nothing >= -inf", lambda r: False),
    (
        'params.lr > 0.01 AND (status = "completed" OR status = "stopped")'
        ' AND NOT scenario_id = "tier0-*"',  # the example
        lambda r: (
            (v := number(r, "lr")) is not None
            and v > 0.01
            and r["status"] in ("completed", "stopped")
            and not r["scenario_id"].startswith("tier0-")
        ),
    ),
    (
        "experiment_id != {first} OR status IN (pending)",
        lambda r: r["experiment_id"] != r["first"] or r["status"] == "pending",
    ),
]


async def listed(services: Services, text: str, page_size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await services.runs.list(page_size, token, text)
        ids.extend(run.id for run in page.items)
        token = page.next_page_token
        if not token:
            return ids
        assert len(ids) < 10_000, "paging does not end"


@pytest.mark.parametrize(("text", "predicate"), CASES, ids=[text for text, _ in CASES])
async def test_a_filter_lists_what_its_predicate_picks(
    services: Services, runs: list[Row], text: str, predicate: Callable[[Row], bool]
) -> None:
    text = text.format(first=runs[0]["first"], first_agent=runs[0]["first_agent"])
    expected = [row["id"] for row in runs if predicate(row)]
    assert await listed(services, text, 1000) == expected
    assert await listed(services, text, 4) == expected  # pages: each run once, in order


@pytest.mark.parametrize(
    "text",
    [
        "worker_id > a",  # text has no order both databases agree on
        'params.policy > "a"',
        "start_time > 2026-12-04",  # a date, not a time
        "start_time > 2026-12-04T10:00:00",  # no offset
        "duration > 10",  # no unit
        "params. = 1",
        "run_number > 99999999999999999999",
        "start_time > 0001-01-01T00:00:00+01:00",
        "duration < 1e300s",
        "metrics.total_profit > 1" + "0" * 5000,
        "metrics.total_profit > nan",
        'metrics.total_profit = "a lot"',
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


async def test_experiments_filter_on_their_parameters_and_creation_time(
    services: Services,
) -> None:
    agent = await services.agent()
    made = [
        await services.experiment(agent.id, params=params)
        for params in ({"seed": 5}, {"seed": 20}, {"seed": "20"}, {}, {"seed": 30.5})
    ]
    ids = [e.id for e in made]

    async def listed(text: str) -> list[str]:
        return [e.id for e in (await services.experiments.list(100, "", text)).items]

    assert await listed("params.seed > 10") == [ids[1], ids[4]]
    assert await listed('params.seed = "20" OR params.seed = 5') == [ids[0], ids[2]]
    assert await listed("NOT params.seed >= 6") == [ids[0], ids[2], ids[3]]
    since = made[2].created_at.isoformat()
    assert await listed(f'create_time >= "{since}"') == ids[2:]
    assert await listed(f'create_time < "{since}" AND params.seed != 5') == [ids[1]]
