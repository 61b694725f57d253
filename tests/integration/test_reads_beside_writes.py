"""Unary reads (GetRun, ListRuns) run on connections of their own, on both databases: they
answer while the server's own connection is inside a write transaction (on SQLite the engine has
one connection, which a read through it would wait for), and they see what is committed, not
what is being written.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import update

from simtrack.server.core.listing import PageRequest
from simtrack.server.db import models
from simtrack.server.db.engine import sqlite_file
from simtrack.server.domain.runs import RUN_LISTING
from tests.support import Services

ANSWER_WITHIN_S = 5.0  # the engine's pool and SQLite's busy wait are 10 s and 30 s


async def test_reads_answer_beside_an_open_write_and_see_only_what_is_committed(
    services: Services,
) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id, params={"lr": 0.5})
    page: PageRequest = RUN_LISTING.request(10, "", "params.lr > 0.1")
    async with services.uow() as uow:
        await uow.session.execute(
            update(models.Run).where(models.Run.id == run.id).values(worker_id="being-written")
        )
        # The write holds the engine's connection (SQLite: its only one) and its lock.
        got = await asyncio.wait_for(services.reads.run(run.id), ANSWER_WITHIN_S)
        assert got is not None and got.worker_id == ""
        listed, _ = await asyncio.wait_for(services.reads.runs(page), ANSWER_WITHIN_S)
        assert [r.id for r in listed] == [run.id]
        assert listed[0].worker_id == ""
        await uow.commit()
    got = await services.reads.run(run.id)
    assert got is not None and got.worker_id == "being-written"


def test_sqlite_reads_open_the_database_file_itself_never_one_in_memory() -> None:
    assert sqlite_file("sqlite:///simtrack.db") == "simtrack.db"
    assert sqlite_file("sqlite:////var/lib/simtrack/data.db") == "/var/lib/simtrack/data.db"
    for url in (
        "sqlite://",  # in memory: each connection would be a database of its own
        "sqlite:///:memory:",
        "sqlite:///file.db?mode=ro",  # options the reads would not honour: the engine reads
        "postgresql://user@host/db",
    ):
        assert sqlite_file(url) is None, url


class Renders:
    """GetRun's render stand-in: the run's worker id, counted."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, run: models.Run) -> str:
        self.count += 1
        return f"{run.id}:{run.worker_id}"


async def test_a_kept_answer_never_hides_a_committed_write_from_anywhere(
    services: Services,
) -> None:
    """On PostgreSQL GetRun's answer is kept while the run's row is unchanged: a write by any
    process (here raw SQL, as another replica would) shows in the next call; unchanged, the run
    is not rendered again. On SQLite every call renders.
    """
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    render = Renders()
    assert await services.reads.rendered(run.id, render) == f"{run.id}:"
    assert await services.reads.rendered(run.id, render) == f"{run.id}:"
    keeps = services.reads.answers is not None
    assert render.count == (1 if keeps else 2)
    for worker in ("w1", "w2", "w3"):
        await services.execute("UPDATE runs SET worker_id = :w WHERE id = :id", w=worker, id=run.id)
        assert await services.reads.rendered(run.id, render) == f"{run.id}:{worker}"
    await services.execute("DELETE FROM runs WHERE id = :id", id=run.id)
    assert await services.reads.rendered(run.id, render) is None


async def test_many_calls_at_once_each_get_their_own_run(services: Services) -> None:
    experiment = await services.experiment()
    runs = [await services.run(experiment.id) for _ in range(8)]
    for i, run in enumerate(runs):
        await services.execute(
            "UPDATE runs SET worker_id = :w WHERE id = :id", w=f"w{i}", id=run.id
        )
    render = Renders()
    ids = [runs[i % 8].id for i in range(64)] + ["00000000-0000-4000-8000-000000000000"]
    got = await asyncio.gather(*(services.reads.rendered(i, render) for i in ids))
    assert got[:-1] == [f"{runs[i % 8].id}:w{i % 8}" for i in range(64)]
    assert got[-1] is None
