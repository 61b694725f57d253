"""Compaction on both databases: every point kept bit for bit, answers unchanged, resends still
recognised, a failed compaction leaves the old rows, and existing data compacts after upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from simtrack.codec import is_tagged
from simtrack.server.api.telemetry import decode
from simtrack.server.background import compact_chunks
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID, Principal, Role, acting_for
from simtrack.server.db import migrate
from simtrack.server.db.chunks import CompactedChunk, StoredChunk, extremes, unpack
from simtrack.server.db.compaction_store import SqlBatchCompaction, SqlCompactionStore
from simtrack.server.db.engine import create_engine
from simtrack.server.db.models import SMALL_CHUNK_POINTS, Tenant
from simtrack.server.db.unit_of_work import SqlUnitOfWorkFactory, tenant_aware_sessions
from simtrack.server.domain import compaction as compaction_module
from simtrack.server.domain.compaction import YIELD_POLL_S, CompactionService, RoundReport
from simtrack.server.domain.history import HistoryService
from simtrack.server.ingest.writer import metric_id
from simtrack.server.observability import ServerMetrics
from tests.integration.test_upgrade_with_data import METRIC, RUN, insert_rows
from tests.support import APP_ROLE, Services, as_app_role, connect, running_writer, server_url
from tests.support.compaction import (
    checksum,
    chunk_rows,
    compactor,
    expected_points,
    expected_series,
    fleet_batch,
    send,
    stored_points,
)

TARGET = 2000  # the smallest allowed: several chunks from a few thousand points
BATCHES = 2400  # ~6,000 points per metric in 2-3 point chunks


@pytest.fixture
async def server_engine(services: Services) -> AsyncIterator[AsyncEngine]:
    """An engine as the server connects (PostgreSQL: its role, under row-level security)."""
    engine = create_engine(server_url(services))
    yield engine
    await engine.dispose()


async def history_answers(services: Services, run_id: str, name: str) -> list[object]:
    """What readers are told: every page of 97 points, a downsampled view, range counts."""
    history = HistoryService(services.uow)
    answers: list[object] = []
    token = ""
    while True:
        page = await history.history(run_id, name, None, None, 0, 97, token)
        answers.append(
            (page.points.steps.tolist(), page.points.decoded().tobytes(), page.range_count)
        )
        token = page.next_page_token
        if not token:
            break
    view = await history.history(run_id, name, None, None, 50, 0, "")
    answers.append((view.points.steps.tolist(), view.points.decoded().tobytes(), view.range_count))
    part = await history.history(run_id, name, 40, 90, 0, 0, "")
    answers.append((part.points.steps.tolist(), part.points.decoded().tobytes(), part.range_count))
    return answers


async def test_compaction_keeps_every_point_and_answer(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    names = ("loss", "reward")
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, BATCHES + 1), names)
        before = {n: await stored_points(services, run.id, n) for n in names}
        answers = {n: await history_answers(services, run.id, n) for n in names}
        rows_before = await chunk_rows(services, run.id)
        assert len(rows_before) == 2 * BATCHES

        report = await compactor(server_engine, target=TARGET).run_round()

        # Both metrics, every chunk once: ~1,500 points each in chunks of up to TARGET.
        assert sorted(c.metric_id for c in report.compacted) == sorted(
            metric_id(run.id, n) for n in names
        )
        assert sum(c.chunks_in for c in report.compacted) == len(rows_before)
        assert sum(c.points for c in report.compacted) == sum(n for _, _, n in rows_before)
        rows_after = await chunk_rows(services, run.id)
        for name in names:
            mine = [(seq, n) for m, seq, n in rows_after if m == metric_id(run.id, name)]
            total = sum(n for m, _, n in rows_before if m == metric_id(run.id, name))
            pieces = -(-total // TARGET)
            # The highest seqs of the inputs, in increasing order; full chunks and the rest.
            assert pieces > 2 and [seq for seq, _ in mine] == list(
                range(BATCHES - pieces + 1, BATCHES + 1)
            )
            assert [n for _, n in mine] == [TARGET] * (pieces - 1) + [total - TARGET * (pieces - 1)]
            # In step order: each chunk's steps start where the previous one's end, at most.
            ranges = await services.fetch(
                "SELECT first_step, last_step FROM metric_chunks WHERE metric_id = :m ORDER BY seq",
                m=metric_id(run.id, name),
            )
            bounds = [tuple(r) for r in ranges]
            assert all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert await stored_points(services, run.id, name) == before[name]
            assert checksum(await stored_points(services, run.id, name)) == checksum(before[name])
            assert await history_answers(services, run.id, name) == answers[name]

        # The watermark is untouched: a resend of an acked batch is recognised, not stored.
        committed = await services.scalar(
            "SELECT committed_seq FROM runs WHERE id = :id", id=run.id
        )
        assert committed == BATCHES
        assert await send(writer, run.id, [1, BATCHES // 2], names) == [BATCHES, BATCHES]
        assert await chunk_rows(services, run.id) == rows_after
        assert await stored_points(services, run.id, "loss") == before["loss"]

        # Nothing left to do, and new batches compact after what is there.
        assert (await compactor(server_engine, target=TARGET).run_round()).compacted == []
        await send(writer, run.id, range(BATCHES + 1, BATCHES + 41), names)
        everything = await stored_points(services, run.id, "loss")
        again = await compactor(server_engine, target=TARGET).run_round()
        assert {c.chunks_in for c in again.compacted} == {40}  # the new ones, the large kept
        assert await stored_points(services, run.id, "loss") == everything


async def test_compacted_chunks_are_compressed_with_their_summaries(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, BATCHES + 1))
    await compactor(server_engine).run_round()
    rows = await services.fetch(
        "SELECT seq, first_step, last_step, n, steps, vals, ts, vmin, vmax, vmin_step, "
        "vmax_step, vmin_ts, vmax_ts, written_at FROM metric_chunks WHERE run_id = :run",
        run=run.id,
    )
    assert len(rows) == 1
    (seq, first, last, n, steps_blob, vals_blob, ts_blob, vmin, vmax, vmin_step, vmax_step) = tuple(
        rows[0]
    )[:11]
    vmin_ts, vmax_ts, at = tuple(rows[0])[11:]
    chunk = StoredChunk(seq, first, last, n, bytes(steps_blob), bytes(vals_blob), bytes(ts_blob))
    assert is_tagged(chunk.vals) and is_tagged(chunk.ts) and at is not None
    raw_bytes = 8 * 3 * n
    assert len(chunk.steps) + len(chunk.vals) + len(chunk.ts) < raw_bytes / 2
    steps, values, stamps = unpack(n, first, chunk.steps, chunk.vals, chunk.ts)
    finite = values[np.isfinite(values)]
    assert (first, last) == (int(steps.min()), int(steps.max()))
    assert (vmin, vmax) == (float(finite.min()), float(finite.max()))
    found = extremes(steps, values, stamps)
    assert (vmin_step, vmax_step, vmin_ts, vmax_ts) == found[2:]
    assert vmin_step is not None and vmax_step is not None


class _KilledAtCommit:
    """A connection whose commit never happens: the process dies first."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    async def commit(self) -> None:
        raise RuntimeError("killed midway")


class FailingCompaction(SqlBatchCompaction):
    """Does the real delete and insert, then fails before the commit (a crash midway) if the
    batch holds the doomed metric: SQLite's rewrite commits itself, PostgreSQL's batch after it.
    """

    doomed = ""
    dying = False

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        async with super()._connection() as connection:
            yield _KilledAtCommit(connection) if self.dying else connection

    async def replace(
        self,
        spans: Mapping[str, tuple[int, int]],
        read: Mapping[str, Sequence[StoredChunk]],
        rows: Mapping[str, Sequence[CompactedChunk]],
        staged: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.dying = self.doomed in spans
        await super().replace(spans, read, rows, staged)
        if self.dying:
            raise RuntimeError("killed midway")


class FailingStore(SqlCompactionStore):
    def __init__(self, engine: AsyncEngine, doomed: str) -> None:
        super().__init__(engine)
        self.doomed = doomed

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with super().compacting(tenant_id, metric_ids) as batch:
            batch.__class__ = FailingCompaction
            assert isinstance(batch, FailingCompaction)
            batch.doomed = self.doomed
            yield batch


async def test_a_compaction_failing_midway_leaves_the_old_rows(
    services: Services, server_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 201))
    rows = await chunk_rows(services, run.id)
    points = await stored_points(services, run.id, "loss")
    store = FailingStore(server_engine, metric_id(run.id, "loss"))
    service = CompactionService(store, compactor(server_engine).settle)
    with caplog.at_level(logging.WARNING, logger=compaction_module.__name__):
        failed = await service.run_round()
    assert (failed.failed, failed.compacted) == (1, [])
    assert "killed midway" in caplog.text
    assert await chunk_rows(services, run.id) == rows
    assert await stored_points(services, run.id, "loss") == points
    # And the metric is not left locked: a working compactor does it now.
    report = await compactor(server_engine).run_round()
    assert [c.chunks_in for c in report.compacted] == [200]
    assert await stored_points(services, run.id, "loss") == points


async def test_a_failing_metric_stops_none_of_its_batch(
    services: Services, server_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    run = await services.run((await services.experiment()).id)
    names = [f"m{i}" for i in range(10)]
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 41), names)
    doomed = metric_id(run.id, "m3")
    rows = [r for r in await chunk_rows(services, run.id) if r[0] == doomed]
    service = CompactionService(FailingStore(server_engine, doomed), timedelta(0))
    with caplog.at_level(logging.WARNING, logger=compaction_module.__name__):
        report = await service.run_round()
    # The batch failed whole, then each metric alone: all but the doomed one compacted.
    assert "compacting each alone" in caplog.text
    assert report.failed == 1
    assert sorted(c.metric_id for c in report.compacted) == sorted(
        metric_id(run.id, n) for n in names if n != "m3"
    )
    assert [r for r in await chunk_rows(services, run.id) if r[0] == doomed] == rows
    for name in names:
        assert (
            await stored_points(services, run.id, name)
            == expected_series(range(1, 41), names)[name]
        )


async def test_unfilled_chunks_are_filled_once_there_are_enough_points(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 501))  # 1,250 points
        await compactor(server_engine, target=TARGET).run_round()
        assert [n for _, _, n in await chunk_rows(services, run.id)] == [1250]
        await send(writer, run.id, range(501, 701))  # 500 more: 1,750, no full chunk yet
        await compactor(server_engine, target=TARGET).run_round()
        assert [n for _, _, n in await chunk_rows(services, run.id)] == [1250, 500]
        await send(writer, run.id, range(701, 901))  # 500 more: 2,250
        report = await compactor(server_engine, target=TARGET).run_round()
    # The 1,250 (not small) is taken in with the small ones: one full chunk and the rest.
    assert [c.chunks_in for c in report.compacted] == [202]
    rows = await chunk_rows(services, run.id)
    assert [(seq, n) for _, seq, n in rows] == [(899, 2000), (900, 250)]
    assert await stored_points(services, run.id, "loss") == expected_points(range(1, 901))


async def test_settling_chunks_wait(services: Services, server_engine: AsyncEngine) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 21))
    assert (await compactor(server_engine, settle=60).run_round()).compacted == []
    done = (await compactor(server_engine, settle=0).run_round()).compacted
    assert [c.chunks_in for c in done] == [20]
    assert done[0].lag is not None and done[0].lag.total_seconds() >= 0


def test_existing_chunks_compact_after_the_upgrade(empty_database_url: str) -> None:
    """Rows stored before this revision (no arrival time, no extreme steps) compact."""
    url = empty_database_url
    migrate.upgrade(url, "d4036f4b5131")  # the revision before compaction's
    values = np.arange(2 * 301, dtype="<f8") * 0.5
    mark = "?" if url.startswith("sqlite") else "%s"
    with connect(url) as connection:
        insert_rows(connection)  # a run and its metric, with one chunk (seq 1)
        for seq in range(2, 301):
            connection.exec_driver_sql(
                "INSERT INTO metric_chunks (metric_id, seq, tenant_id, run_id, first_step, "
                f"last_step, n, vmin, vmax, steps, vals, ts) VALUES ('{METRIC}', {seq}, "
                f"'{DEFAULT_TENANT_ID}', '{RUN}', {2 * seq}, {2 * seq + 1}, 2, 0, 0, "
                f"{mark}, {mark}, {mark})",
                (b"", values[2 * seq : 2 * seq + 2].tobytes(), b"\0" * 8),
            )
    migrate.upgrade(url)
    if not url.startswith("sqlite"):
        migrate.grant_app_role(url, APP_ROLE)  # the operator's step after upgrading
    before, report, after = asyncio.run(_read_compact_read(server_url_of(url)))
    assert [(c.metric_id, c.chunks_in, c.lag) for c in report.compacted] == [(METRIC, 300, None)]
    assert [c.seq for c in after] == [300] and after[0].n == sum(c.n for c in before)
    old = [unpack(c.n, c.first_step, c.steps, c.vals, c.ts) for c in before]
    new = unpack(after[0].n, after[0].first_step, after[0].steps, after[0].vals, after[0].ts)
    for column in range(3):
        assert np.concatenate([o[column] for o in old]).tobytes() == new[column].tobytes()


def server_url_of(url: str) -> str:
    return url if url.startswith("sqlite") else as_app_role(url)


async def _read_compact_read(
    url: str,
) -> tuple[list[StoredChunk], RoundReport, list[StoredChunk]]:
    engine = create_engine(url)
    uow = SqlUnitOfWorkFactory(tenant_aware_sessions(engine))
    try:
        async with uow() as reading:
            before = await reading.chunks.overlapping(METRIC, INT64_MIN, INT64_MAX, None, None)
        report = await compactor(engine).run_round()
        async with uow() as reading:
            after = await reading.chunks.overlapping(METRIC, INT64_MIN, INT64_MAX, None, None)
    finally:
        await engine.dispose()
    return before, report, after


def test_the_small_chunk_threshold_matches_the_migration() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.script_location()))
    module = script.get_revision("7c1e5a9b2d40").module
    assert str(module.SMALL) == f"n < {SMALL_CHUNK_POINTS}"


async def test_the_background_loop_compacts_reports_and_stops(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 101))
    metrics = ServerMetrics()
    stopping = asyncio.Event()
    loop = asyncio.create_task(compact_chunks(compactor(server_engine), 0.01, metrics, stopping))
    async with asyncio.timeout(30):
        while len(await chunk_rows(services, run.id)) > 1:
            await asyncio.sleep(0.01)
    stopping.set()
    await asyncio.wait_for(loop, 5)  # ends by itself once told
    sample = metrics.registry.get_sample_value
    assert sample("simtrack_chunks_compacted_total") == 100
    assert sample("simtrack_points_compacted_total") == 250
    assert sample("simtrack_compaction_lag_seconds_count") == 1
    assert sample("simtrack_compaction_failures_total") == 0


async def test_compaction_works_tenant_by_tenant(
    services: Services, server_engine: AsyncEngine
) -> None:
    """Each tenant's metrics are compacted (on PostgreSQL under row-level security, as the
    server's role), and each tenant still sees only its own points.
    """
    other = "22222222-0000-0000-0000-000000000002"
    async with services.uow() as uow:
        await uow.access.add(Tenant(id=other, name="other"))
        await uow.commit()
    runs = {}
    for tenant in (DEFAULT_TENANT_ID, other):
        with acting_for(tenant):
            runs[tenant] = (await services.run((await services.experiment()).id)).id
    async with running_writer(services) as writer:
        for tenant, run_id in runs.items():
            principal = Principal(tenant, Role.ADMIN)
            batches = [decode(fleet_batch(seq)) for seq in range(1, 51)]
            await asyncio.gather(*(writer.submit(principal, run_id, b) for b in batches))
    report = await compactor(server_engine).run_round()
    assert sorted(c.metric_id for c in report.compacted) == sorted(
        metric_id(run_id, "loss") for run_id in runs.values()
    )
    for tenant, run_id in runs.items():
        with acting_for(tenant):
            assert await stored_points(services, run_id, "loss") == expected_points(range(1, 51))
        with acting_for(other if tenant == DEFAULT_TENANT_ID else DEFAULT_TENANT_ID):
            async with services.uow() as uow:
                chunks = await uow.chunks.overlapping(
                    metric_id(run_id, "loss"), INT64_MIN, INT64_MAX, None, None
                )
            assert chunks == []


async def test_a_backlog_is_compacted_in_bounded_transactions_in_one_round(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 201))  # 500 points
    service = CompactionService(
        SqlCompactionStore(server_engine), timedelta(0), max_span_points=100
    )
    report = await service.run_round()
    assert len(report.compacted) > 4  # several transactions of ~100 small-chunk points
    assert [n for _, _, n in await chunk_rows(services, run.id)] == [500]
    assert await stored_points(services, run.id, "loss") == expected_points(range(1, 201))


async def test_batches_let_the_writers_queued_batches_go_first_yet_always_progress(
    services: Services, server_engine: AsyncEngine
) -> None:
    """With ``ingest_waiting`` (SQLite's server passes its writer's), each batch waits while
    batches are queued for a commit, but never longer than ``yield_max_s``.
    """
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, 201))  # 500 points in small chunks
    asked: list[float] = []
    busy_until = asyncio.get_running_loop().time() + 0.3

    def ingest_waiting() -> bool:
        asked.append(asyncio.get_running_loop().time())
        return asked[-1] < busy_until

    store = SqlCompactionStore(server_engine)
    service = CompactionService(
        store, timedelta(0), max_span_points=100, ingest_waiting=ingest_waiting, yield_max_s=10
    )
    started = asyncio.get_running_loop().time()
    report = await service.run_round()
    assert asked[-1] >= busy_until > started  # it waited for the writer's queue to empty
    assert len(report.compacted) > 4
    assert [n for _, _, n in await chunk_rows(services, run.id)] == [500]

    # A writer that never runs dry holds each batch back yield_max_s, no longer: here two
    # polls' worth, as the round takes some 160 batches (0.05 s each made the test 13 s).
    other = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, other.id, range(1, 201))
    hold_s = 2 * YIELD_POLL_S
    always = CompactionService(
        store, timedelta(0), max_span_points=100, ingest_waiting=lambda: True, yield_max_s=hold_s
    )
    started = asyncio.get_running_loop().time()
    report = await always.run_round()
    batches = len(report.compacted)
    assert batches > 4
    assert asyncio.get_running_loop().time() - started >= hold_s * batches
    assert [n for _, _, n in await chunk_rows(services, other.id)] == [500]
    assert await stored_points(services, other.id, "loss") == expected_points(range(1, 201))
