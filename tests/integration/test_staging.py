"""Staged messages on both databases (``domain/staging.py``): a small message is one row and a
large one chunks; reads see staged points as they see chunks; a round moves each message once,
its large neighbours' chunks rewritten with it; resends are still recognised; a staging that
fails midway, or a server killed (SIGKILL) while staging, loses and doubles nothing; a deleted
run takes its staged messages along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.server.api.telemetry import decode
from simtrack.server.background import compact_chunks
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.db.compaction_store import SqlBatchCompaction, SqlCompactionStore
from simtrack.server.db.engine import create_engine
from simtrack.server.domain import compaction as compaction_module
from simtrack.server.domain.compaction import CompactionService
from simtrack.server.ingest.writer import GroupCommitWriter, metric_id
from simtrack.server.observability import ServerMetrics
from simtrack.v1 import telemetry_pb2 as tpb
from tests.integration.test_compaction import FailingCompaction
from tests.support import Services, running_writer, server_url
from tests.support.compaction import (
    chunk_rows,
    compactor,
    expected_series,
    kill_compacting_server_when,
    send,
    stored_points,
)

NAMES = [f"m{i}" for i in range(10)]


@pytest.fixture
async def server_engine(services: Services) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(server_url(services))
    yield engine
    await engine.dispose()


async def staged_rows(services: Services, run_id: str) -> list[tuple[int, int]]:
    """(seq, points) of the run's staged messages."""
    rows = await services.fetch(
        "SELECT seq, points FROM staged_messages WHERE run_id = :r ORDER BY seq", r=run_id
    )
    return [(int(r[0]), int(r[1])) for r in map(tuple, rows)]


def large_message(seq: int, name: str, first_step: int) -> tpb.StreamRunRequest:
    """1,200 points of one metric (not staged), steps over the fleet batches' own."""
    steps = list(range(first_step, first_step + 1200))
    values = np.round(np.sin(np.arange(1200)) * 50, 4).tolist()
    stamps = [1.7e9 + seq] * 1200  # not the server's clock: both runs stamped alike
    series = tpb.MetricSeries(name=name, steps=steps, values=values, timestamps=stamps)
    return tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))


async def write_mixed(writer: GroupCommitWriter, run_id: str) -> None:
    """Fleet batches of ten metrics, two large messages among them (seqs 21 and 41)."""
    await send(writer, run_id, range(1, 21), NAMES)
    await writer.submit(LOCAL_PRINCIPAL, run_id, decode(large_message(21, "m3", 2)))
    await send(writer, run_id, range(22, 41), NAMES)
    await writer.submit(LOCAL_PRINCIPAL, run_id, decode(large_message(41, "m7", 9)))
    await send(writer, run_id, range(42, 61), NAMES)


async def test_small_messages_are_staged_and_moved_into_chunks_once(
    services: Services, server_engine: AsyncEngine
) -> None:
    experiment = await services.experiment()
    staged_run, reference = await services.run(experiment.id), await services.run(experiment.id)
    async with running_writer(services, stage=True) as writer:
        await write_mixed(writer, staged_run.id)
    async with running_writer(services) as writer:  # the same messages, a chunk each
        await write_mixed(writer, reference.id)
    want = {n: await stored_points(services, reference.id, n) for n in NAMES}

    # A row per small message (ten series of two or three points: 25), the large ones chunks.
    staged = await staged_rows(services, staged_run.id)
    assert [seq for seq, _ in staged] == [s for s in range(1, 61) if s not in (21, 41)]
    assert all(points == 25 for _, points in staged)
    assert sorted(await chunk_rows(services, staged_run.id), key=lambda r: r[1]) == [
        (metric_id(staged_run.id, "m3"), 21, 1200),
        (metric_id(staged_run.id, "m7"), 41, 1200),
    ]
    for name in NAMES:  # staged points read as chunks would be
        assert await stored_points(services, staged_run.id, name) == want[name], name

    report = await compactor(server_engine).run_round()

    assert (report.staged_messages, report.staged_points) == (58, sum(p for _, p in staged))
    assert await staged_rows(services, staged_run.id) == []
    # A chunk per metric; the large messages' chunks rewritten with the staged series around
    # them, on the span's highest seq.
    rows = await chunk_rows(services, staged_run.id)
    assert sorted(m for m, _, _ in rows) == sorted(metric_id(staged_run.id, n) for n in NAMES)
    assert {seq for _, seq, _ in rows} == {60}
    for name in NAMES:
        assert await stored_points(services, staged_run.id, name) == want[name], name

    # Resends of acked messages, staged or not, are recognised: acked, not stored again.
    async with running_writer(services, stage=True) as writer:
        assert await send(writer, staged_run.id, [1, 30, 60], NAMES) == [60, 60, 60]
        resent = await writer.submit(
            LOCAL_PRINCIPAL, staged_run.id, decode(large_message(21, "m3", 2))
        )
        assert resent == 60
    assert await staged_rows(services, staged_run.id) == []
    assert await chunk_rows(services, staged_run.id) == rows
    # A round with nothing staged or due changes nothing.
    again = await compactor(server_engine).run_round()
    assert (again.staged_messages, again.compacted) == (0, [])


async def test_messages_wait_to_settle_and_later_ones_stay_staged(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=True) as writer:
        await send(writer, run.id, range(1, 11), NAMES)
        waiting = compactor(server_engine, settle=3600.0)
        assert (await waiting.run_round()).staged_messages == 0
        assert len(await staged_rows(services, run.id)) == 10
        assert (await compactor(server_engine).run_round()).staged_messages == 10
        await send(writer, run.id, range(11, 16), NAMES)
    assert [seq for seq, _ in await staged_rows(services, run.id)] == list(range(11, 16))
    want = expected_series(range(1, 16), NAMES)
    for name in NAMES:  # five staged, ten in a chunk: read together
        assert await stored_points(services, run.id, name) == want[name]


async def test_compaction_takes_no_chunk_at_or_above_a_runs_staged_messages(
    services: Services, server_engine: AsyncEngine
) -> None:
    experiment = await services.experiment()
    run, reference = await services.run(experiment.id), await services.run(experiment.id)
    # Chunks 1-5, staged 6-8, a chunk 9 (a server that does not stage), staged 10.
    plan = [(range(1, 6), False), (range(6, 9), True), (range(9, 10), False), (range(10, 11), True)]
    for seqs, stage in plan:
        async with running_writer(services, stage=stage) as writer:
            await send(writer, run.id, seqs, NAMES)
    async with running_writer(services) as writer:
        await send(writer, reference.id, range(1, 11), NAMES)
    store = SqlCompactionStore(server_engine)
    async with store.compacting(LOCAL_PRINCIPAL.tenant_id, [metric_id(run.id, "m0")]) as batch:
        small = await batch.small_chunks()
    assert [c.seq for c in small[metric_id(run.id, "m0")]] == [1, 2, 3, 4, 5]

    report = await compactor(server_engine).run_round()

    # Staging moved 6-10 with chunk 9 (a span is every chunk of its seqs), then compaction
    # merged each metric's 1-5 with it.
    mine = {metric_id(run.id, n) for n in NAMES}
    assert report.staged_messages == 4
    assert sorted(c.chunks_in for c in report.compacted if c.metric_id in mine) == [6] * 10
    assert await staged_rows(services, run.id) == []
    assert len(await chunk_rows(services, run.id)) == len(NAMES)
    for name in NAMES:
        assert await stored_points(services, run.id, name) == await stored_points(
            services, reference.id, name
        )


async def test_a_run_is_moved_once_it_holds_1000_points_a_metric_or_is_idle(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    busy = CompactionService(
        SqlCompactionStore(server_engine), timedelta(0), idle=timedelta(hours=1)
    )
    names = ["a", "b"]  # five points a message: 2,000 points make 1,000 a metric
    async with running_writer(services, stage=True) as writer:
        await send(writer, run.id, range(1, 400), names)  # 1,995 points
        assert (await busy.run_round()).staged_messages == 0
        await send(writer, run.id, [400], names)  # 2,000
        assert (await busy.run_round()).staged_messages == 400
        await send(writer, run.id, range(401, 406), names)
        assert (await busy.run_round()).staged_messages == 0
    idle = CompactionService(SqlCompactionStore(server_engine), timedelta(0), idle=timedelta(0))
    assert (await idle.run_round()).staged_messages == 5
    want = expected_series(range(1, 406), names)
    for name in names:
        assert await stored_points(services, run.id, name) == want[name]
    # 1,000 points a metric moved at once: a chunk each, not small, compressed.
    sizes = sorted(n for _, _, n in await chunk_rows(services, run.id))
    assert sizes[2:] == [1000, 1000] and sum(sizes) == 2025


async def test_a_move_fills_the_metrics_unfilled_chunk_below_when_they_fill_one(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    store = SqlCompactionStore(server_engine)
    service = CompactionService(store, timedelta(0), 2000, idle=timedelta(hours=1))
    names = ["a", "b"]
    async with running_writer(services, stage=True) as writer:
        await send(writer, run.id, range(1, 401), names)  # 1,000 points of each
        assert (await service.run_round()).staged_messages == 400
        assert {(seq, n) for _, seq, n in await chunk_rows(services, run.id)} == {(400, 1000)}
        await send(writer, run.id, range(401, 801), names)
        assert (await service.run_round()).staged_messages == 400
    # The unfilled 1,000-point chunks and the next 1,000 points: a full chunk of 2,000 each.
    rows = await chunk_rows(services, run.id)
    assert len(rows) == 2 and {(seq, n) for _, seq, n in rows} == {(800, 2000)}
    want = expected_series(range(1, 801), names)
    for name in names:
        assert await stored_points(services, run.id, name) == want[name]


async def test_the_background_loop_moves_staged_messages_and_counts_them(
    services: Services, server_engine: AsyncEngine
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=True) as writer:
        await send(writer, run.id, range(1, 101), NAMES)
    metrics = ServerMetrics()
    stopping = asyncio.Event()
    loop = asyncio.create_task(compact_chunks(compactor(server_engine), 0.01, metrics, stopping))
    async with asyncio.timeout(30):
        while await staged_rows(services, run.id):
            await asyncio.sleep(0.01)
    stopping.set()
    await asyncio.wait_for(loop, 5)
    assert metrics.registry.get_sample_value("simtrack_staged_messages_moved_total") == 100
    assert len(await chunk_rows(services, run.id)) == len(NAMES)  # 250 points each, one chunk


class FailingStagingStore(SqlCompactionStore):
    """Staging does the real deletes and insert, then dies before its commit if the batch
    holds the doomed metric.
    """

    def __init__(self, engine: AsyncEngine, doomed: str) -> None:
        super().__init__(engine)
        self.doomed = doomed

    @contextlib.asynccontextmanager
    async def _failing(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with super().staging(tenant_id, run_ids) as batch:
            batch.__class__ = FailingCompaction
            assert isinstance(batch, FailingCompaction)
            batch.doomed = self.doomed
            yield batch

    def staging(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> contextlib.AbstractAsyncContextManager[SqlBatchCompaction]:
        return self._failing(tenant_id, run_ids)


async def test_a_staging_failing_midway_leaves_the_staged_messages(
    services: Services, server_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    experiment = await services.experiment()
    runs = [await services.run(experiment.id) for _ in range(3)]
    async with running_writer(services, stage=True) as writer:
        for run in runs:
            await send(writer, run.id, range(1, 31), NAMES)
    staged = {run.id: await staged_rows(services, run.id) for run in runs}
    want = expected_series(range(1, 31), NAMES)
    doomed = runs[1].id
    store = FailingStagingStore(server_engine, metric_id(doomed, "m4"))
    service = CompactionService(store, timedelta(0))
    with caplog.at_level(logging.WARNING, logger=compaction_module.__name__):
        report = await service.run_round()
    # The batch failed whole, then each run alone: all but the doomed one moved.
    assert "each alone" in caplog.text and "killed midway" in caplog.text
    assert (report.failed, report.staged_messages) == (1, 60)
    assert await staged_rows(services, doomed) == staged[doomed]
    assert [await staged_rows(services, r.id) for r in runs if r.id != doomed] == [[], []]
    for run in runs:
        for name in NAMES:
            assert await stored_points(services, run.id, name) == want[name]
    # Nothing left locked or half done: a working round moves the rest.
    assert (await compactor(server_engine).run_round()).staged_messages == 30
    assert await staged_rows(services, doomed) == []
    for name in NAMES:
        assert await stored_points(services, doomed, name) == want[name]


async def test_deleting_a_run_deletes_its_staged_messages(services: Services) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=True) as writer:
        await send(writer, run.id, range(1, 6), NAMES)
    assert len(await staged_rows(services, run.id)) == 5
    await services.runs.delete(run.id)
    assert await staged_rows(services, run.id) == []


RUNS = 64  # runs staged before the server starts: 8 staging transactions (STAGE_RUNS)
MESSAGES = 30


async def test_a_server_killed_mid_staging_loses_and_doubles_nothing(
    services: Services, tmp_path: Path
) -> None:
    experiment = await services.experiment()
    runs = [await services.run(experiment.id) for _ in range(RUNS)]
    async with running_writer(services, stage=True) as writer:
        await asyncio.gather(*(send(writer, r.id, range(1, MESSAGES + 1), NAMES) for r in runs))
    total = RUNS * MESSAGES
    assert await services.scalar("SELECT count(*) FROM staged_messages") == total
    want = expected_series(range(1, MESSAGES + 1), NAMES)

    async def midway() -> bool:
        return bool(await services.scalar("SELECT count(*) FROM staged_messages") < total)

    # The runs are idle at once (their writer is gone): their messages are due.
    await kill_compacting_server_when(services, tmp_path, midway, compaction_idle="0")
    left = await services.scalar("SELECT count(*) FROM staged_messages")
    assert 0 < left < total, "killed before or after the work, not during it"
    # Each run whole: all its messages staged, or none and a chunk per metric.
    for run in runs:
        staged, chunks = (
            len(await staged_rows(services, run.id)),
            await chunk_rows(services, run.id),
        )
        assert (staged, len(chunks)) in ((MESSAGES, 0), (0, len(NAMES))), run.id
        for name in ("m0", "m9"):
            assert await stored_points(services, run.id, name) == want[name]

    engine = create_engine(server_url(services))
    try:
        report = await compactor(engine).run_round()
    finally:
        await engine.dispose()
    assert report.staged_messages == left  # the rest, each once
    assert await services.scalar("SELECT count(*) FROM staged_messages") == 0
    for run in runs:
        assert len(await chunk_rows(services, run.id)) == len(NAMES)
        for name in NAMES:
            assert await stored_points(services, run.id, name) == want[name]
