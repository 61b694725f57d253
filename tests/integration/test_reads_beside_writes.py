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
