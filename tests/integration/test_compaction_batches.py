"""Compaction in batches, on both databases: many metrics in a few transactions of a constant
number of statements, a batch holding a metric another process is compacting, and batches
kept within a transaction's points.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.server.db.chunks import CompactedChunk, StoredChunk
from simtrack.server.db.compaction_store import SqlBatchCompaction, SqlCompactionStore
from simtrack.server.db.engine import create_engine
from simtrack.server.db.sqlite_reads import SqliteReadConnections
from simtrack.server.domain.compaction import CompactionService, RoundReport
from simtrack.server.domain.pending_chunks import PendingChunks
from simtrack.server.ingest.writer import metric_id
from tests.support import Services, running_writer, server_url
from tests.support.compaction import (
    chunk_rows,
    compaction_reads,
    expected_series,
    send,
    stored_points,
)

NAMES = [f"m{i:02}" for i in range(40)]
BATCHES = 30


@pytest.fixture
async def engines(services: Services) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines as two server processes connect (separate pools, separate connections)."""
    made = [create_engine(server_url(services)) for _ in range(2)]
    yield made
    for engine in made:
        await engine.dispose()


async def _backlog(services: Services) -> str:
    """A run whose metrics ``NAMES`` hold ``BATCHES`` small chunks each; its id."""
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, BATCHES + 1), NAMES)
    return run.id


async def _all_kept(services: Services, run_id: str) -> None:
    expected = expected_series(range(1, BATCHES + 1), NAMES)
    for name in NAMES:
        assert await stored_points(services, run_id, name) == expected[name], name


@pytest.mark.parametrize("batch_metrics", [16, 128])
async def test_a_round_compacts_many_metrics_in_few_statements(
    services: Services, engines: list[AsyncEngine], batch_metrics: int
) -> None:
    run_id = await _backlog(services)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    service = CompactionService(
        SqlCompactionStore(engines[0]), timedelta(0), batch_metrics=batch_metrics
    )
    event.listen(engines[0].sync_engine, "before_cursor_execute", count)
    try:
        report = await service.run_round()
    finally:
        event.remove(engines[0].sync_engine, "before_cursor_execute", count)

    assert sorted(c.metric_id for c in report.compacted) == sorted(
        metric_id(run_id, n) for n in NAMES
    )
    assert sum(c.chunks_in for c in report.compacted) == len(NAMES) * BATCHES
    assert len(await chunk_rows(services, run_id)) == len(NAMES)
    # The tenants, the runs with staged messages and the due metrics (PostgreSQL: each after
    # the tenant's setting), then per batch: the lock (PostgreSQL: the tenant's setting and one
    # lock statement; SQLite: BEGIN IMMEDIATE), small chunks, sizes below, chunks, delete,
    # insert; whatever its metrics.
    batches = -(-len(NAMES) // batch_metrics)
    per_batch = 7 if services.backend == "postgresql" else 6
    assert len(statements) == 1 + (4 if services.backend == "postgresql" else 2) + (
        batches * per_batch
    ), statements
    await _all_kept(services, run_id)


class HoldingStore(SqlCompactionStore):
    """A compactor that, its batch's work done, holds the batch's locks until released."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.holding, self.release = asyncio.Event(), asyncio.Event()

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with super().compacting(tenant_id, metric_ids) as batch:
            yield batch
            self.holding.set()
            await self.release.wait()


ROUND_WITHOUT_WAITING_S = 20.0  # ten metrics' compaction, on a loaded machine


async def test_a_metric_another_process_holds_is_skipped_and_the_batch_goes_on(
    services: Services, engines: list[AsyncEngine]
) -> None:
    run_id = await _backlog(services)
    held = metric_id(run_id, "m07")
    holder = HoldingStore(engines[1])
    other = CompactionService(holder, timedelta(0))
    tenant_id = (await holder.tenants())[0]
    holding = asyncio.create_task(other.compact_batch(tenant_id, [held]))
    await holder.holding.wait()  # m07 compacted, not committed: its lock held

    service = CompactionService(SqlCompactionStore(engines[0]), timedelta(0))
    round_ = asyncio.create_task(service.run_round())
    if services.backend == "postgresql":
        # The round does not wait: m07 was due (its rewrite not committed), its lock busy. (A
        # round that waited for the lock would time out here: the holder holds it until told.)
        await asyncio.wait_for(asyncio.shield(round_), ROUND_WITHOUT_WAITING_S)
    else:
        await asyncio.sleep(0.5)  # SQLite: the round comes to wait for the holder's write lock
    holder.release.set()
    report, held_report = await round_, await holding

    assert [c.metric_id for c in held_report.compacted] == [held]
    others = sorted(metric_id(run_id, n) for n in NAMES if n != "m07")
    assert sorted(c.metric_id for c in report.compacted) == others
    # PostgreSQL: skipped as busy; SQLite: the batch waited for the write lock, then found
    # m07 with nothing due.
    assert report.busy == (1 if services.backend == "postgresql" else 0)
    assert report.failed == 0
    assert len(await chunk_rows(services, run_id)) == len(NAMES)
    await _all_kept(services, run_id)


async def test_a_batch_keeps_within_a_transactions_points(
    services: Services, engines: list[AsyncEngine]
) -> None:
    run = await services.run((await services.experiment()).id)
    names = [f"m{i}" for i in range(4)]
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 61), names)  # 150 points a metric
    deletes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    # 200 points a transaction: the batch's first metric fits, the next would not.
    service = CompactionService(SqlCompactionStore(engines[0]), timedelta(0), max_span_points=200)
    event.listen(engines[0].sync_engine, "before_cursor_execute", count)
    try:
        report = await service.run_round()
    finally:
        event.remove(engines[0].sync_engine, "before_cursor_execute", count)
    assert sorted(c.metric_id for c in report.compacted) == sorted(
        metric_id(run.id, n) for n in names
    )
    assert [c.points for c in report.compacted] == [150] * 4
    assert len(deletes) == 4  # a transaction each, the others left for the next batch
    expected = expected_series(range(1, 61), names)
    for name in names:
        assert await stored_points(services, run.id, name) == expected[name]


async def test_a_series_still_written_to_waits_until_its_small_chunks_are_not_small(
    services: Services, engines: list[AsyncEngine]
) -> None:
    """A metric's few small points wait while it is written to (else each round rewrites
    them again with the next few); 1,000 of them, or idleness, and they are compacted.
    """
    run_id = await _backlog(services)  # each metric: 30 chunks of 2 points
    waiting = CompactionService(
        SqlCompactionStore(engines[0]), timedelta(0), idle=timedelta(hours=1)
    )
    assert (await waiting.run_round()).compacted == []
    assert len(await chunk_rows(services, run_id)) == len(NAMES) * BATCHES

    grown = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, grown.id, range(1, 501), ["loss"])  # 1,000+ points, small chunks
    report = await waiting.run_round()
    assert [c.metric_id for c in report.compacted] == [metric_id(grown.id, "loss")]
    assert report.compacted[0].points >= 1000

    idle = CompactionService(SqlCompactionStore(engines[0]), timedelta(0), idle=timedelta(0))
    assert len((await idle.run_round()).compacted) == len(NAMES)
    assert len(await chunk_rows(services, run_id)) == len(NAMES)
    await _all_kept(services, run_id)


async def test_rounds_compact_what_the_writer_told_at_once_and_find_the_rest_slice_by_slice(
    services: Services, engines: list[AsyncEngine]
) -> None:
    """The writer's ledger names its metrics to the next round; another process's are found
    by the rounds' scan, a slice of the small chunks each; each metric compacted once.
    PostgreSQL slices by metric (four metrics' chunks a slice here); SQLite in arrival order
    (a slice holds a few messages' chunks of every metric).
    """
    by_metric = services.backend == "postgresql"
    ledger = PendingChunks()
    scan_rows = 4 * BATCHES  # each metric has BATCHES small chunks: four metrics a slice
    service = CompactionService(
        SqlCompactionStore(engines[0]),
        timedelta(0),
        idle=timedelta(0),
        pending=ledger,
        scan_rows=scan_rows,
    )
    told = await services.run((await services.experiment()).id)
    async with running_writer(services, ledger.stored) as writer:
        await send(writer, told.id, range(1, BATCHES + 1), NAMES)
    untold = await _backlog(services)
    told_ids = {metric_id(told.id, n) for n in NAMES}
    untold_ids = {metric_id(untold, n) for n in NAMES}

    compacted: list[str] = []
    rounds = 0
    while len(compacted) < 2 * len(NAMES):
        report = await service.run_round()
        found = [c.metric_id for c in report.compacted]
        if rounds == 0:
            assert told_ids <= set(found)
        if by_metric:
            assert len(set(found) & untold_ids) <= 4, "a slice's metrics at most"
        compacted.extend(found)
        rounds += 1
        assert rounds <= len(NAMES), "the scan does not move on"
    assert sorted(compacted) == sorted(told_ids | untold_ids)  # each once
    assert rounds >= (len(NAMES) // 4 if by_metric else 2)
    for run_id in (told.id, untold):
        assert len(await chunk_rows(services, run_id)) == len(NAMES)
        await _all_kept(services, run_id)


class OvertakenCompaction(SqlBatchCompaction):
    """Right before its rewrite, another server compacts the same metrics to the end."""

    other: CompactionService
    overtaken: list[RoundReport]

    async def replace(
        self,
        spans: Mapping[str, tuple[int, int]],
        read: Mapping[str, Sequence[StoredChunk]],
        rows: Mapping[str, Sequence[CompactedChunk]],
        staged: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not self.overtaken:
            self.overtaken.append(await self.other.run_round())
        await super().replace(spans, read, rows, staged)


class OvertakenStore(SqlCompactionStore):
    def __init__(
        self, engine: AsyncEngine, reads: SqliteReadConnections | None, other: CompactionService
    ) -> None:
        super().__init__(engine, reads)
        self.other = other
        self.overtaken: list[RoundReport] = []

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with super().compacting(tenant_id, metric_ids) as batch:
            batch.__class__ = OvertakenCompaction
            assert isinstance(batch, OvertakenCompaction)
            batch.other, batch.overtaken = self.other, self.overtaken
            yield batch


async def test_a_batch_overtaken_between_its_reads_and_its_rewrite_changes_nothing(
    services: Services, engines: list[AsyncEngine]
) -> None:
    """SQLite reads without a lock: another server may compact the spans meanwhile, and the
    rewrite, finding other chunks than it read, must leave them be. PostgreSQL's batch holds
    its metrics' locks throughout: the other server skips them.
    """
    run_id = await _backlog(services)
    other = CompactionService(SqlCompactionStore(engines[1]), timedelta(0))
    async with compaction_reads(engines[0]) as reads:  # as a server reads (SQLite)
        store = OvertakenStore(engines[0], reads, other)
        service = CompactionService(store, timedelta(0), batch_metrics=len(NAMES))
        report = await service.run_round()

    [overtaking] = store.overtaken
    everyone = sorted(metric_id(run_id, n) for n in NAMES)
    if services.backend == "postgresql":
        assert (overtaking.compacted, overtaking.busy) == ([], len(NAMES))
        assert sorted(c.metric_id for c in report.compacted) == everyone
    else:
        # The other server compacted every metric; this batch's rewrite found their chunks
        # gone and changed nothing: its metrics busy, for a later round to read afresh.
        assert sorted(c.metric_id for c in overtaking.compacted) == everyone
        assert (report.compacted, report.busy) == ([], len(NAMES))
        again = await CompactionService(SqlCompactionStore(engines[0]), timedelta(0)).run_round()
        assert (again.compacted, again.busy) == ([], 0)
    assert report.failed == 0
    assert len(await chunk_rows(services, run_id)) == len(NAMES)
    await _all_kept(services, run_id)


async def test_sqlite_scans_the_small_chunks_in_arrival_order_down_its_index(
    services: Services, engines: list[AsyncEngine]
) -> None:
    """SQLite's scan goes through the small chunks by arrival (``ix_..._small_arrivals``),
    a slice a round, ties of one commit's time broken by rowid, rows from before arrivals
    were kept (no time) first; the metrics of a slice are counted whole, but those the
    caller's ledger knows; every metric is found and the scan reaches the end.
    """
    if services.backend != "sqlite":
        pytest.skip("PostgreSQL's scan goes by metric (its index of small chunks)")
    run_id = await _backlog(services)  # NAMES x BATCHES small chunks, a few commits' times
    engine = engines[0]
    async with engine.begin() as connection:  # the first rows as stored before written_at
        await connection.exec_driver_sql(
            "UPDATE metric_chunks SET written_at = NULL WHERE rowid IN"
            " (SELECT rowid FROM metric_chunks ORDER BY rowid LIMIT 400)"
        )
    store = SqlCompactionStore(engine)
    [tenant] = await store.tenants()
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    later = datetime.now(UTC) + timedelta(hours=1)  # everything settled and idle
    everyone = {metric_id(run_id, n) for n in NAMES}

    async def scan(known: set[str]) -> set[str]:
        rows, start, slices, found = 80, "", 0, set()
        while True:
            due, start = await store.due_metrics(tenant, later, later, 1000, start, rows, known)
            assert all(count == BATCHES for _, count in due)  # each metric's chunks, whole
            found |= {metric_id for metric_id, _ in due}
            slices += 1
            if not start:
                break
            assert slices <= len(NAMES) * BATCHES // rows + 1, "the scan does not move on"
        assert slices == len(NAMES) * BATCHES // rows + 1  # the last finds nothing after it
        return found

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await scan(set()) == everyone
        some = set(sorted(everyone)[::2])
        assert await scan(some) == everyone - some
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    async with compaction_reads(engine) as reads:  # the same on a read connection
        store = SqlCompactionStore(engine, reads)
        assert await scan(some) == everyone - some
    async with engine.connect() as connection:
        for statement, parameters in statements:
            if "rowid" not in statement:
                continue
            plan = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            assert "ix_metric_chunks_small_arrivals" in str(plan.all()), statement
