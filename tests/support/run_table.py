"""A table of runs for the read side's tests, on the test's database: two experiments (two
scenarios), every status, odd worker ids, parameters of mixed types, metrics with NaN and ±inf,
times and durations, and the same rows as plain dicts for hand-written predicates.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, update

from simtrack.server.core.model import MetricKind
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import models
from simtrack.server.ingest.writer import metric_id
from tests.support.services import Services

Row = dict[str, Any]

WORKERS = ["w-1", "w-2", "W-1", "50%_off", "50x_off", "", "tier0-a", "a*b"]
STATUSES = ["pending", "running", "completed", "failed", "stopped", "paused"]

BASE = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
PARAMS: list[dict[str, Any]] = [
    {"lr": 0.001, "policy": "greedy", "warm": True, "n": 3},
    {"lr": 0.02, "policy": "random", "warm": False},
    {"lr": "0.05", "policy": "greedy"},  # a string that looks like a number
    {"lr": 0.5, "n": 10, "warm": 1},  # 1, not true
    {},
    {"lr": 1, "policy": "gre*dy", "n": -4},
    {"lr": True, "policy": 7},
]


def param(row: Row, key: str, kind: type) -> Any:
    """The run's parameter if it is of ``kind`` (numbers: int or float, never bool), else None."""
    value = row["params"].get(key)
    if isinstance(value, bool) != (kind is bool):
        return None
    if kind in (int, float):
        return value if isinstance(value, int | float) else None
    return value if isinstance(value, kind) else None


# Per run: metric name -> (latest value, finite min, finite max).
METRICS: list[dict[str, tuple[float | None, float | None, float | None]]] = [
    {"total_profit": (1500.0, -20.0, 1600.0), "loss/train": (0.25, 0.1, 3.0)},
    {"total_profit": (900.0, 900.0, 900.0)},
    {"total_profit": (math.nan, 5.0, 2000.0), "loss/train": (math.inf, 0.5, 0.5)},
    {},
    {"total_profit": (1000.0, None, None), "loss/train": (-math.inf, None, None)},
]


def metric(row: Row, name: str, which: int = 0) -> float | None:
    """The run's metric value (0: latest, 1: min, 2: max), None if absent, unset or NaN."""
    values = row["metrics"].get(name)
    value = None if values is None else values[which]
    return None if value is None or math.isnan(value) else value


def number(row: Row, key: str) -> float | None:
    value: float | None = param(row, key, float)
    return value


async def make_runs(services: Services) -> list[Row]:
    """Runs of two experiments (two scenarios) in every status, with odd worker ids."""
    first = await services.experiment(scenario_id="tier0-tutorial")
    second = await services.experiment(scenario_id="tier2-supply-shock")  # another agent
    rows: list[Row] = []
    for index in range(len(WORKERS) * 3):
        experiment = first if index % 2 else second
        run = await services.run(experiment.id)
        worker = WORKERS[index % len(WORKERS)]
        status = STATUSES[index % len(STATUSES)]
        params = PARAMS[index % len(PARAMS)]
        started = BASE + timedelta(minutes=index) if index % 5 else None
        ended = started + timedelta(seconds=10 * (index % 4)) if started and index % 3 else None
        duration = ended - started if started and ended else None
        metrics = METRICS[index % len(METRICS)]
        agents = {experiment.agent_id}
        async with services.engine.begin() as connection:
            if index % 4 == 0:  # the other experiment's agent takes part
                guest = first.agent_id if experiment is second else second.agent_id
                agents.add(guest)
                await connection.execute(
                    insert(models.Participant).values(
                        id=f"p-{run.id[:30]}",
                        run_id=run.id,
                        agent_id=guest,
                        role="guest",
                        config_override={},
                        tenant_id=DEFAULT_TENANT_ID,
                        created_at=BASE,
                        updated_at=BASE,
                    )  # fmt: skip
                )
            for name, (last, low, high) in metrics.items():
                await connection.execute(
                    insert(models.Metric).values(
                        id=metric_id(run.id, name),
                        run_id=run.id,
                        name=name,
                        kind=MetricKind.GAUGE,
                        labels={},
                        count=1,
                        last_value=last,
                        min_value=low,
                        max_value=high,
                        tenant_id=DEFAULT_TENANT_ID,
                        created_at=BASE,
                        updated_at=BASE,
                    )
                )
            await connection.execute(
                update(models.Run)
                .where(models.Run.id == run.id)
                .values(
                    status=status,
                    worker_id=worker,
                    params=params,
                    started_at=started,
                    completed_at=ended,
                    duration=duration,
                )
            )
        rows.append(
            {
                "id": run.id,
                "experiment_id": experiment.id,
                "scenario_id": experiment.scenario_id,
                "status": status,
                "worker_id": worker,
                "first": first.id,
                "first_agent": first.agent_id,
                "agents": agents,
                "run_number": run.run_number,
                "created": run.created_at,
                "started": started,
                "ended": ended,
                "duration": duration,
                "params": params,
                "metrics": metrics,
            }
        )
    return rows
