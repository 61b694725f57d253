"""The ingest writer's error paths, with real faults: a database that goes away, a run deleted
while its worker streams, and rows that conflict with what is stored.

The group-commit writer runs here on its own (no gRPC): batches are submitted as a stream
session would, and their futures are the acks the session would send. Each test twice: the
writer storing a chunk per message, and staging small messages (``domain/staging.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import psycopg
import pytest
from psycopg import sql

from simtrack.errors import FailedPrecondition, Unavailable
from simtrack.server.api.telemetry import decode
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.ingest import writer as writer_module
from simtrack.server.ingest.items import Batch
from simtrack.server.ingest.writer import GroupCommitWriter, metric_id
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support import APP_ROLE, POSTGRES_ADMIN_URL, CommitLog, Services

POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)
QUICK_RETRIES = (0.01, 0.02, 0.05)


def metrics(seq: int, name: str = "profit", steps: Iterable[int] = (0, 1)) -> Batch:
    """Two metrics (a message a staging writer stages): ``name`` and its negation."""
    steps = list(steps)
    series = [
        tpb.MetricSeries(name=n, steps=steps, values=[sign * float(s) for s in steps])
        for n, sign in ((name, 1.0), (f"{name}-negated", -1.0))
    ]
    return decode(tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=series)))


async def committed_seq(services: Services, run_id: str) -> int:
    return int(await services.scalar("SELECT committed_seq FROM runs WHERE id = :id", id=run_id))


@pytest.fixture(params=[False, True], ids=["chunks", "staged"])
def stage(request: pytest.FixtureRequest) -> bool:
    """The ``writer`` storing each message as chunks, or staging the small ones."""
    return bool(request.param)


async def chunk_count(services: Services, run_id: str) -> int:
    """The run's messages stored: their chunks' seqs and its staged messages."""
    chunks = "SELECT count(DISTINCT seq) FROM metric_chunks WHERE run_id = :id"
    staged = "SELECT count(*) FROM staged_messages WHERE run_id = :id"
    return sum([int(await services.scalar(q, id=run_id)) for q in (chunks, staged)])


def admin(url: str, statement: str | sql.Composed) -> list[tuple[object, ...]]:
    """A statement as the superuser on the database at ``url`` (autocommit)."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement)
        return cursor.fetchall() if cursor.description else []


def database_name(services: Services) -> str:
    return services.url.rpartition("/")[2]


def terminate_others(services: Services) -> int:
    """pg_terminate_backend the writer's connection (the app role's); how many were ended."""
    rows = admin(
        POSTGRES_ADMIN_URL,
        sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = {} AND usename = {}"
        ).format(sql.Literal(database_name(services)), sql.Literal(APP_ROLE)),
    )
    return len(rows)


def allow_connections(services: Services, allowed: bool) -> None:
    # Not from the database itself: PostgreSQL refuses to lock out the current one.
    name = database_name(services)
    admin(
        POSTGRES_ADMIN_URL,
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.Literal(allowed)
        ),
    )


@POSTGRES_ONLY
async def test_a_terminated_connection_is_retried_and_the_batch_stored_once(
    services: Services,
    writer: tuple[GroupCommitWriter, CommitLog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    group, _ = writer
    run = await services.run((await services.experiment()).id)
    assert await group.submit(LOCAL_PRINCIPAL, run.id, metrics(1)) == 1

    assert terminate_others(services) == 1  # the writer's own connection
    with caplog.at_level(logging.WARNING, logger=writer_module.__name__):
        assert await group.submit(LOCAL_PRINCIPAL, run.id, metrics(2, steps=(2, 3))) == 2
    assert "retrying (attempt 1)" in caplog.text
    assert (await committed_seq(services, run.id), await chunk_count(services, run.id)) == (2, 2)


@POSTGRES_ONLY
async def test_a_database_that_stays_down_fails_the_batch_unavailable_after_the_retries(
    services: Services,
    writer: tuple[GroupCommitWriter, CommitLog],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group, _ = writer
    run = await services.run((await services.experiment()).id)
    monkeypatch.setattr(writer_module, "RETRY_DELAYS", QUICK_RETRIES)
    allow_connections(services, False)
    try:
        assert terminate_others(services) == 1
        with caplog.at_level(logging.WARNING, logger=writer_module.__name__):
            with pytest.raises(Unavailable):
                await group.submit(LOCAL_PRINCIPAL, run.id, metrics(1))
        retries = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert len(retries) == len(QUICK_RETRIES)
    finally:
        allow_connections(services, True)

    # The database is back: the worker's resend of the same batch is stored.
    assert await group.submit(LOCAL_PRINCIPAL, run.id, metrics(1)) == 1
    assert (await committed_seq(services, run.id), await chunk_count(services, run.id)) == (1, 1)


async def test_a_run_deleted_mid_stream_refuses_its_next_batch(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    group, observer = writer
    experiment = await services.experiment()
    run, bystander = await services.run(experiment.id), await services.run(experiment.id)
    assert await group.submit(LOCAL_PRINCIPAL, run.id, metrics(1)) == 1

    await services.runs.delete(run.id)
    doomed = group.submit(LOCAL_PRINCIPAL, run.id, metrics(2, steps=(2,)))
    alive = group.submit(LOCAL_PRINCIPAL, bystander.id, metrics(1))
    with pytest.raises(FailedPrecondition, match="no longer exists"):
        await doomed
    assert await alive == 1, "another run's batch in the same group is stored"
    assert await chunk_count(services, run.id) == 0  # the cascade took the first batch along
    assert await chunk_count(services, bystander.id) == 1
    assert sum(observer.commits) == 3


async def test_a_batch_that_conflicts_with_stored_rows_fails_without_retries(
    services: Services,
    writer: tuple[GroupCommitWriter, CommitLog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rows beyond the run's watermark (written behind the writer's back) make the insert
    conflict: the batch fails FAILED_PRECONDITION at once, nothing of it is kept, and the
    writer goes on with the next.
    """
    group, _ = writer
    experiment = await services.experiment()
    run, other = await services.run(experiment.id), await services.run(experiment.id)
    stray = metric_id(run.id, "profit")
    await services.execute(
        "INSERT INTO metrics (id, tenant_id, run_id, name, unit, kind, labels, count, "
        "created_at, updated_at) VALUES (:id, :tenant, :run, 'profit', '', 'gauge', '{}', 1, "
        ":now, :now)",
        id=stray,
        run=run.id,
    )
    if group.stage:  # where that writer puts a small message
        await services.execute(
            "INSERT INTO staged_messages (run_id, seq, tenant_id, written_at, points, series, "
            "body) VALUES (:run, 1, :tenant, :now, 0, 0, :b)",
            run=run.id,
            b=b"",
        )
    else:
        await services.execute(
            "INSERT INTO metric_chunks (metric_id, seq, tenant_id, run_id, first_step, "
            "last_step, n, steps, vals, ts) VALUES (:id, 1, :tenant, :run, 9, 9, 1, :b, :v, :v)",
            id=stray,
            run=run.id,
            b=b"",
            v=b"\x00" * 8,
        )

    with caplog.at_level(logging.WARNING, logger=writer_module.__name__):
        with pytest.raises(FailedPrecondition, match="conflicts with stored data"):
            await group.submit(LOCAL_PRINCIPAL, run.id, metrics(1))
    assert "retrying" not in caplog.text
    assert await committed_seq(services, run.id) == 0
    count = "SELECT count FROM metrics WHERE id = :id"
    assert await services.scalar(count, id=stray) == 1, "the summary upsert was rolled back"

    assert await group.submit(LOCAL_PRINCIPAL, other.id, metrics(1)) == 1
    assert await chunk_count(services, other.id) == 1


async def test_a_sequence_gap_refuses_the_batch_and_every_later_one_of_its_run(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    group, _ = writer
    run = await services.run((await services.experiment()).id)
    gap = group.submit(LOCAL_PRINCIPAL, run.id, metrics(2))
    after = group.submit(LOCAL_PRINCIPAL, run.id, metrics(3))
    results = await asyncio.gather(gap, after, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["SequenceGap", "SequenceGap"]
    assert await committed_seq(services, run.id) == 0
