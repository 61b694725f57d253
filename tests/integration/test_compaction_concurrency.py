"""Compaction beside everything else, on both databases: readers (one call, and paging across
a compaction), two compactors at once, and ingest with resends while it all runs. Each test
twice: the writer storing a chunk per message, and staging its small messages (then a round
moves them into chunks first, ``domain/staging.py``, and compacts after).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.errors import NotFound
from simtrack.server.db.chunk_repository import ChunkRepository
from simtrack.server.db.chunks import StoredChunk
from simtrack.server.db.engine import create_engine
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.db.sqlite_reads import SqliteReadConnections
from simtrack.server.db.unit_of_work import SqlUnitOfWork
from simtrack.server.domain.compaction import RoundReport
from simtrack.server.domain.history import HistoryService
from simtrack.server.ingest.writer import metric_id
from tests.support import Services, running_writer, server_url
from tests.support.compaction import (
    chunk_rows,
    compaction_reads,
    compactor,
    expected_points,
    send,
    stored_points,
)


@pytest.fixture(params=[False, True], ids=["chunks", "staged"])
def stage(request: pytest.FixtureRequest) -> bool:
    """Whether the writer stages small messages (as a server that compacts does)."""
    return bool(request.param)


def metrics_sent(stage: bool) -> tuple[str, ...]:
    """The metrics of each message: "loss" (the one read), and "reward" for a staging writer
    (it stages messages of several metrics). "loss" is the same points either way.
    """
    return ("loss", "reward") if stage else ("loss",)


async def staged_messages(services: Services, run_id: str) -> int:
    return int(
        await services.scalar("SELECT count(*) FROM staged_messages WHERE run_id = :r", r=run_id)
    )


def rewrote(report: RoundReport) -> bool:
    """Whether a round moved staged messages or compacted chunks."""
    return bool(report.staged_messages or report.compacted)


@pytest.fixture
async def engines(services: Services) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines as two server processes connect (separate pools, separate connections)."""
    made = [create_engine(server_url(services)) for _ in range(2)]
    yield made
    for engine in made:
        await engine.dispose()


@pytest.fixture
async def own_reads(
    engines: list[AsyncEngine],
) -> AsyncIterator[list[SqliteReadConnections | None]]:
    """Each engine's compaction reads as its server would have them (SQLite: a connection of
    their own beside the engine's).
    """
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(compaction_reads(e)) for e in engines]


class InterruptedChunks(ChunkRepository):
    """The real repository; before the ``nth`` call of method ``at``, ``hook`` runs (and
    commits). A view reads its chunks' columns in a second statement, as of a range of many
    points.
    """

    read_whole_points = 0

    def __init__(
        self, session: Any, hook: Callable[[], Awaitable[None]], at: str, nth: int
    ) -> None:
        super().__init__(session)
        self.hook, self.at, self.nth, self.calls = hook, at, nth, 0

    async def _before(self, method: str) -> None:
        if method == self.at:
            self.calls += 1
            if self.calls == self.nth:
                await self.hook()

    async def overlapping(self, *args: Any, **kwargs: Any) -> list[StoredChunk]:
        await self._before("overlapping")
        return await super().overlapping(*args, **kwargs)

    async def with_seqs(self, *args: Any, **kwargs: Any) -> list[StoredChunk]:
        await self._before("with_seqs")
        return await super().with_seqs(*args, **kwargs)


def interrupted_history(
    services: Services, engine: AsyncEngine, at: str, nth: int
) -> tuple[HistoryService, list[int]]:
    """A history service whose reads are interrupted by another server's compaction
    (committed), and the sizes of the metrics that compaction compacted.
    """
    compacted: list[int] = []

    async def compact() -> None:
        report = await compactor(engine).run_round()
        # The messages moved or chunks compacted: the first step's, else compaction's.
        compacted.append(report.staged_messages or sum(c.chunks_in for c in report.compacted))

    class Interrupted(SqlUnitOfWork):
        async def __aenter__(self) -> Interrupted:
            await super().__aenter__()
            self.chunks = InterruptedChunks(self.session, compact, at, nth)
            return self

    return HistoryService(lambda: Interrupted(services.uow.sessions)), compacted


async def test_one_history_call_reads_one_snapshot_while_a_compaction_commits(
    services: Services, engines: list[AsyncEngine], stage: bool
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=stage) as writer:
        await send(writer, run.id, range(1, 1001), metrics_sent(stage))
    history = HistoryService(services.uow)
    whole = await history.history(run.id, "loss", None, None, 0, 2000, "")
    # After the page chose its chunks from their summaries, before it reads them.
    interrupted, compacted = interrupted_history(services, engines[0], "overlapping", 1)
    page = await interrupted.history(run.id, "loss", None, None, 0, 2000, "")
    assert compacted == [1000]  # it did commit, between the reads of the call
    # Compacted: large chunks (1,000 points and more), only the newest perhaps not.
    loss = metric_id(run.id, "loss")
    sizes = [n for m, _, n in await chunk_rows(services, run.id) if m == loss]
    assert len(sizes) < 5 and all(n >= SMALL_CHUNK_POINTS for n in sizes[:-1])
    assert page.points.steps.tobytes() == whole.points.steps.tobytes()
    assert page.points.decoded().tobytes() == whole.points.decoded().tobytes()
    assert (page.range_count, page.next_page_token != "") == (whole.range_count, True)


async def test_a_view_reads_one_snapshot_while_a_compaction_commits(
    services: Services, engines: list[AsyncEngine], stage: bool
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=stage) as writer:
        await send(writer, run.id, range(1, 1001), metrics_sent(stage))
    history = HistoryService(services.uow)
    whole = await history.history(run.id, "loss", None, None, 100, 0, "")
    # After the view read the summaries of chunks that are then compacted.
    interrupted, compacted = interrupted_history(services, engines[0], "with_seqs", 1)
    view = await interrupted.history(run.id, "loss", None, None, 100, 0, "")
    assert compacted == [1000]  # it did commit, between the reads of the call
    assert view.points.steps.tobytes() == whole.points.steps.tobytes()
    assert view.points.decoded().tobytes() == whole.points.decoded().tobytes()
    assert view.points.times().tobytes() == whole.points.times().tobytes()
    assert view.range_count == whole.range_count
    after = await history.history(run.id, "loss", None, None, 100, 0, "")
    assert after.points.decoded().tobytes() == whole.points.decoded().tobytes()


async def test_paging_across_a_compaction_gives_every_point_once(
    services: Services,
    engines: list[AsyncEngine],
    own_reads: list[SqliteReadConnections | None],
    stage: bool,
) -> None:
    run = await services.run((await services.experiment()).id)
    history = HistoryService(services.uow)
    async with running_writer(services, stage=stage) as writer:
        await send(writer, run.id, range(1, 801), metrics_sent(stage))
        steps: list[bytes] = []
        values: list[bytes] = []
        token, pages = "", 0
        while True:
            page = await history.history(run.id, "loss", None, None, 0, 97, token)
            steps.append(page.points.steps.tobytes())
            values.append(page.points.decoded().tobytes())
            pages += 1
            if pages == 3:  # compacted between pages: the token's chunk is gone
                assert rewrote(await compactor(engines[0], reads=own_reads[0]).run_round())
            if pages == 9:  # more data, compacted again; it sorts after all read so far
                await send(writer, run.id, range(801, 901), metrics_sent(stage))
                assert rewrote(await compactor(engines[0], reads=own_reads[0]).run_round())
            token = page.next_page_token
            if not token:
                break
    # The batches sent meanwhile hold later steps than the pages read before them: every
    # point once, in history order, though its chunk was rewritten under the token twice.
    want_steps, want_values, _ = expected_points(range(1, 901))
    assert (b"".join(steps), b"".join(values)) == (want_steps, want_values)


async def test_two_compactors_at_once_compact_each_chunk_once(
    services: Services,
    engines: list[AsyncEngine],
    own_reads: list[SqliteReadConnections | None],
    stage: bool,
) -> None:
    run = await services.run((await services.experiment()).id)
    names = [f"m{i}" for i in range(24)]
    async with running_writer(services, stage=stage) as writer:
        await send(writer, run.id, range(1, 81), names)
    before = {n: await stored_points(services, run.id, n) for n in names}
    rows = await chunk_rows(services, run.id)

    first, second = await asyncio.gather(
        *(compactor(e, reads=r).run_round() for e, r in zip(engines, own_reads, strict=True))
    )

    if stage:  # the messages moved once, by one of them, into a chunk per metric
        assert (first.staged_messages + second.staged_messages, len(rows)) == (80, 0)
        assert await staged_messages(services, run.id) == 0
        assert len(await chunk_rows(services, run.id)) == len(names)
        for name in names:
            assert await stored_points(services, run.id, name) == before[name]
        return
    done = [c.metric_id for c in first.compacted + second.compacted]
    assert sorted(done) == sorted(metric_id(run.id, n) for n in names)  # each by one of them
    assert sum(c.chunks_in for c in first.compacted + second.compacted) == len(rows)
    assert len(await chunk_rows(services, run.id)) == len(names)
    for name in names:
        assert await stored_points(services, run.id, name) == before[name]


async def test_ingest_resends_reads_and_compaction_all_at_once(
    services: Services,
    engines: list[AsyncEngine],
    own_reads: list[SqliteReadConnections | None],
    stage: bool,
) -> None:
    run = await services.run((await services.experiment()).id)
    history = HistoryService(services.uow)
    total, group = 900, 30
    done = asyncio.Event()
    reads: list[int] = []
    compactions: list[int] = []

    async def ingest() -> None:
        async with running_writer(services, stage=stage) as writer:
            for start in range(1, total + 1, group):
                await send(writer, run.id, range(start, start + group), metrics_sent(stage))
                committed = start + group - 1
                # A worker that lost its acks resends: recognised, acked, not stored again.
                resent = [max(1, committed - 40), committed // 2, committed]
                assert await send(writer, run.id, resent, metrics_sent(stage)) == [committed] * 3
        done.set()

    async def compact() -> None:
        while not done.is_set():
            report = await compactor(engines[0], reads=own_reads[0]).run_round()
            compactions.append(report.staged_messages + sum(c.chunks_in for c in report.compacted))
            await asyncio.sleep(0.01)

    async def read() -> None:
        while not done.is_set():
            try:
                page = await history.history(run.id, "loss", None, None, 0, 100_000, "")
            except NotFound:  # before the first batch
                await asyncio.sleep(0.005)
                continue
            # Some prefix of the batches, exactly: no point twice, none missing, in order.
            stored = page
            batches = _batches_for(len(stored.points))
            want = expected_points(range(1, batches + 1))
            assert (stored.points.steps.tobytes(), stored.points.decoded().tobytes()) == want[:2]
            assert stored.points.times().tobytes() == want[2]
            assert stored.range_count == len(stored.points)
            reads.append(batches)
            await asyncio.sleep(0.005)

    await asyncio.gather(ingest(), compact(), read())
    await compactor(engines[1], reads=own_reads[1]).run_round()  # what settled last
    assert await staged_messages(services, run.id) == 0
    assert await stored_points(services, run.id, "loss") == expected_points(range(1, total + 1))
    committed = await services.scalar("SELECT committed_seq FROM runs WHERE id = :id", id=run.id)
    assert committed == total
    assert len(compactions) > 1 and len(reads) > 1 and reads[-1] > reads[0]
    # Compacted: large chunks (1,000 points and more), only the newest perhaps not.
    loss = metric_id(run.id, "loss")
    sizes = [n for m, _, n in await chunk_rows(services, run.id) if m == loss]
    assert len(sizes) < 5 and all(n >= SMALL_CHUNK_POINTS for n in sizes[:-1])


def _batches_for(points: int) -> int:
    """How many batches (1, 2, ...) of ``fleet_batch`` hold ``points`` points of one metric
    (two or three each, alternating: the count tells the prefix).
    """
    count, batches = 0, 0
    while count < points:
        batches += 1
        count += 2 + batches % 2
    assert count == points, f"{points} points are no prefix of the batches"
    return batches
