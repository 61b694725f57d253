"""Concurrent writes on PostgreSQL, where transactions really overlap (SQLite serialises them).

Each test gets its own migrated PostgreSQL database (``database_url`` with ``backend`` pinned)
and an engine whose pool lets every concurrent call hold a connection of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import event

from simtrack.server.core.model import ExperimentStatus, RunStatus
from tests.support import MakeServices, Services

T = TypeVar("T")

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)

CONCURRENT_CREATES = 30


def wide_services(make_services: MakeServices) -> tuple[Services, list[int]]:
    """Services whose pool holds all concurrent calls at once, and the pool's peak usage."""
    services = make_services(pool_size=10, max_overflow=CONCURRENT_CREATES)
    state = {"now": 0}
    peak = [0]

    def checkout(*_: Any) -> None:
        state["now"] += 1
        peak[0] = max(peak[0], state["now"])

    def checkin(*_: Any) -> None:
        state["now"] -= 1

    event.listen(services.engine.sync_engine.pool, "checkout", checkout)
    event.listen(services.engine.sync_engine.pool, "checkin", checkin)
    return services, peak


async def gather_all(calls: list[Awaitable[T]]) -> list[T]:
    """Run ``calls`` concurrently; fail listing every error if any call failed."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {len(results)} calls failed: {errors[:3]!r}"
    return [r for r in results if not isinstance(r, BaseException)]


async def test_concurrent_run_creates_number_runs_without_gaps(
    make_services: MakeServices,
) -> None:
    services, peak = wide_services(make_services)
    experiment = await services.experiment()

    runs = await gather_all([services.run(experiment.id) for _ in range(CONCURRENT_CREATES)])

    assert sorted(r.run_number for r in runs) == list(range(1, CONCURRENT_CREATES + 1))
    assert len({r.id for r in runs}) == CONCURRENT_CREATES
    stored = await services.fetch(
        "SELECT run_number FROM runs WHERE experiment_id = :id ORDER BY run_number",
        id=experiment.id,
    )
    assert [row[0] for row in stored] == list(range(1, CONCURRENT_CREATES + 1))
    counter = "SELECT last_run_number FROM experiments WHERE id = :id"
    assert await services.scalar(counter, id=experiment.id) == CONCURRENT_CREATES
    assert (await services.experiments.get(experiment.id)).status == ExperimentStatus.RUNNING
    # The calls really overlapped: most of them held a connection at the same time.
    assert peak[0] >= 10, f"only {peak[0]} connections were in use at once"
    # And the next run, after the storm, continues the sequence.
    assert (await services.run(experiment.id)).run_number == CONCURRENT_CREATES + 1


async def test_concurrent_run_creates_on_two_experiments_interleaved(
    make_services: MakeServices,
) -> None:
    services, peak = wide_services(make_services)
    first = await services.experiment()
    second = await services.experiment(first.agent_id)
    per_experiment = CONCURRENT_CREATES // 2
    targets = [first.id, second.id] * per_experiment

    runs = await gather_all([services.run(experiment_id) for experiment_id in targets])

    for experiment in (first, second):
        numbers = sorted(r.run_number for r in runs if r.experiment_id == experiment.id)
        assert numbers == list(range(1, per_experiment + 1)), experiment.name
    assert peak[0] >= 10


async def _wait_for_lock_waiters(url: str, expected: int, timeout: float = 10.0) -> None:
    """Poll until ``expected`` backends of this database wait on a lock (RuntimeError if not)."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        while True:
            cursor = await connection.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            waiting = row[0] if row else 0
            if waiting >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{waiting} lock waiters after {timeout}s, wanted {expected}")
            await asyncio.sleep(0.02)


async def test_experiment_status_survives_a_create_racing_a_completion(
    services: Services,
) -> None:
    """A run completing while another run of the same experiment is created.

    A third connection holds the experiment row so both service calls are inside their
    transactions at once, whichever of them gets the row first afterwards.
    """
    experiment = await services.experiment()
    first = await services.run(experiment.id)
    for step in (RunStatus.STARTING, RunStatus.RUNNING):
        await services.runs.update(first.id, {"status": step})

    blocker = await psycopg.AsyncConnection.connect(services.url)
    try:
        await blocker.execute(
            "SELECT id FROM experiments WHERE id = %s FOR UPDATE", (experiment.id,)
        )
        complete = asyncio.ensure_future(
            services.runs.update(first.id, {"status": RunStatus.COMPLETED})
        )
        await _wait_for_lock_waiters(services.url, 1)
        create = asyncio.ensure_future(services.run(experiment.id))
        await _wait_for_lock_waiters(services.url, 2)
        await blocker.commit()
        # Errors here are not the bug under test: they propagate as themselves.
        await asyncio.gather(complete, create)
    finally:
        await blocker.close()

    statuses = {r.status for r in (await services.runs.list(0, "", "")).items}
    if statuses != {RunStatus.COMPLETED, RunStatus.PENDING}:
        raise RuntimeError(f"the race did not set up as planned: {statuses}")
    stored = await services.experiments.get(experiment.id)
    assert stored.status == ExperimentStatus.RUNNING, "a pending run but the experiment says so"
