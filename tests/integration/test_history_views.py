"""Downsampled views answered from the chunks' summaries equal a brute-force min/max per
interval, on both databases: aligned and unaligned grids, NaN, infinities and signed zeros,
repeated and out-of-order steps, ranges cutting chunks, raw and compacted (compressed) chunks,
a shared grid; and whole chunks within one interval are not read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.server.api.telemetry import decode
from simtrack.server.core.model import INT64_MAX, INT64_MIN, utcnow
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL, current_tenant
from simtrack.server.db.chunk_repository import ChunkRepository
from simtrack.server.db.chunks import StoredChunk
from simtrack.server.db.engine import create_engine
from simtrack.server.db.unit_of_work import SqlUnitOfWork
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.series import Points
from simtrack.server.domain.staging import stage_batch
from simtrack.server.domain.views import Grid, read_view
from simtrack.server.ingest.writer import metric_id
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support import Services, running_writer, server_url
from tests.support.compaction import ODD_VALUES, compactor, stored_points

STAMP0 = 1.7e9


def batches() -> list[tuple[list[int], list[float], list[float]]]:
    """(steps, values, timestamps) of each message: 1,000-point batches on the thousands, then
    odd sizes, odd values (NaN payloads, infinities, -0.0 beside 0.0), repeated steps, a batch
    that goes back over earlier steps, a lone NaN batch, then a fleet's small flushes.
    """
    rng = np.random.default_rng(7)
    out = []
    step = 0
    for size in [1000] * 8 + [777, 1234, 333, 50, 1000, 999]:
        steps = np.arange(step, step + size)
        values = np.round(rng.standard_normal(size) * 100, 2)
        step += size
        out.append((steps, values))
    odd = np.arange(step, step + 700)
    odd_values = np.round(rng.standard_normal(700), 1)  # many ties
    odd_values[::97] = ODD_VALUES[np.arange(len(odd_values[::97])) % len(ODD_VALUES)]
    odd_values[5], odd_values[6] = 0.0, -0.0
    out.append((odd, odd_values))
    repeated = np.repeat(np.arange(step + 700, step + 1200), 2)  # each step twice
    out.append((repeated, np.round(rng.standard_normal(len(repeated)), 1)))
    back = np.arange(2500, 4100)  # over earlier chunks' steps
    out.append((back, np.round(rng.standard_normal(len(back)) * 300, 2)))
    out.append((np.array([3000]), np.array([math.nan])))
    step += 1200
    for k in range(150):  # a fleet's small flushes: 2-20 points each
        size = 2 + k % 19
        small = np.round(rng.standard_normal(size), 1)
        if k % 23 == 0:
            small[0] = [math.nan, math.inf, -math.inf][k % 3]
        out.append((np.arange(step, step + size), small))
        step += size
    stamped = []
    for k, (steps, values) in enumerate(out):
        stamps = STAMP0 + k + np.arange(len(steps)) * 1e-3
        stamped.append((steps.tolist(), values.tolist(), stamps.tolist()))
    return stamped


# How a run's chunks are stored: as written (a chunk per message), with its small messages
# still staged (``domain/staging.py``), staged then moved into chunks, or staged and compacted.
STATES = ["raw", "staged", "moved", "compacted"]


async def written(services: Services, state: str) -> str:
    """A run whose metric ``x`` holds every shape of ``batches()``, stored as ``state`` says
    (``STATES``).
    """
    run = await services.run((await services.experiment()).id)
    async with running_writer(services, stage=state != "raw") as writer:
        for seq, (steps, values, stamps) in enumerate(batches(), start=1):
            # With "x-twin" beside it: a message of several metrics (what a staging writer
            # stages).
            series = [
                tpb.MetricSeries(name=name, steps=steps, values=values, timestamps=stamps)
                for name in ("x", "x-twin")
            ]
            message = tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=series))
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(message))
    if state in ("moved", "compacted"):
        engine: AsyncEngine = create_engine(server_url(services))
        try:
            service = compactor(engine, target=2000)
            if state == "moved":
                await stage_batch(
                    service.store, LOCAL_PRINCIPAL.tenant_id, [run.id], utcnow(), service.target
                )
            else:
                await service.run_round()
        finally:
            await engine.dispose()
    return run.id


def brute_view(points: Points, lo: int, hi: int, max_points: int, grid: Grid | None) -> Any:
    """The view by definition, in plain Python: the points of [lo, hi] in history order; when
    more than ``max_points``, each interval's first lowest and first highest point (NaN only
    where an interval has nothing else).
    """
    kept = [i for i, s in enumerate(points.steps.tolist()) if lo <= s <= hi]
    if len(kept) <= max_points:
        return as_rows(points, kept), len(kept)
    steps, values = points.steps.tolist(), points.decoded().tolist()
    if grid is None:
        grid = Grid(steps[kept[0]], steps[kept[-1]], max_points // 2)
    span = float(grid.hi) - float(grid.lo) + 1.0
    by_interval: dict[int, list[int]] = {}
    for i in kept:
        k = min(
            int((float(steps[i]) - float(grid.lo)) * (grid.intervals / span)), grid.intervals - 1
        )
        by_interval.setdefault(k, []).append(i)
    chosen: set[int] = set()
    for members in by_interval.values():
        numbers = [i for i in members if not math.isnan(values[i])]
        if not numbers:
            chosen.add(members[0])
            continue
        low = min(values[i] for i in numbers)
        high = max(values[i] for i in numbers)
        chosen.add(next(i for i in numbers if values[i] == low))
        chosen.add(next(i for i in numbers if values[i] == high))
    return as_rows(points, sorted(chosen)), len(kept)


def allowed_grid(points: Points, lo: int, hi: int, max_points: int, grid: Grid | None) -> Grid:
    """The grid a view of [lo, hi] took (None: none, all its points shown), checked against
    what a view may take: ``max_points // 2`` intervals spanning the range's points, or fewer
    intervals at most 1.25 times as wide that still cover them.
    """
    assert grid is not None
    steps = [s for s in points.steps.tolist() if lo <= s <= hi]
    first, last = min(steps), max(steps)
    intervals = max_points // 2
    if grid != Grid(first, last, intervals):
        assert grid.intervals <= intervals
        assert grid.lo <= first and last <= grid.hi
        span, narrowest = grid.hi - grid.lo + 1, -(-(last - first + 1) // intervals)
        assert span % grid.intervals == 0  # whole steps wide, so each interval is as wide
        assert span // grid.intervals <= 1.25 * narrowest
    return grid


def as_rows(points: Points, indexes: Sequence[int]) -> list[tuple[int, bytes, float]]:
    return [
        (int(points.steps[i]), points.decoded()[i].tobytes(), float(points.times()[i]))
        for i in indexes
    ]


class CountingChunks(ChunkRepository):
    """The real repository, counting the chunks whose columns it read after a view's first
    statement (which reads them all only for ranges of many more points than these tests').
    """

    columns_read = 0
    read_whole_points = 0

    async def overlapping(self, *args: Any, **kwargs: Any) -> list[StoredChunk]:
        read = await super().overlapping(*args, **kwargs)
        CountingChunks.columns_read += len(read)
        return read

    async def with_seqs(self, *args: Any, **kwargs: Any) -> list[StoredChunk]:
        read = await super().with_seqs(*args, **kwargs)
        CountingChunks.columns_read += len(read)
        return read


class Counted(SqlUnitOfWork):
    async def __aenter__(self) -> Counted:
        await super().__aenter__()
        self.chunks = CountingChunks(self.session)
        return self


CASES = [  # (lo, hi, max_points)
    (INT64_MIN, INT64_MAX, 1000),
    (INT64_MIN, INT64_MAX, 16),  # wide intervals: many whole chunks each
    (INT64_MIN, INT64_MAX, 2),
    (INT64_MIN, INT64_MAX, 333),  # unaligned
    (INT64_MIN, INT64_MAX, 50_000),  # more than stored: every point
    (1500, 9876, 100),  # the range cuts chunks
    (2400, 4200, 64),  # over the batch that went back
    (13_000, INT64_MAX, 40),  # the odd values and the repeated steps
    (3000, 3000, 2),  # one step, three points: NaN and two others
    (-5, 10, 4),
    (16_000, INT64_MAX, 100),  # over the small flushes: most whole in an interval
    (16_000, 16_999, 20),
    (INT64_MIN, INT64_MAX, 8),
]


class CountedUnits:
    """A unit of work factory counting the units opened (a view read in one statement
    opens none).
    """

    def __init__(self, factory: Callable[[], SqlUnitOfWork]) -> None:
        self.factory = factory
        self.opened = 0

    def __call__(self) -> SqlUnitOfWork:
        self.opened += 1
        return self.factory()


def history_by(services: Services, path: str) -> tuple[HistoryService, CountedUnits]:
    """A history service reading views as ``path`` says (``PATHS``), its units of work
    counted.
    """
    if path == "columns on demand":
        units = CountedUnits(lambda: Counted(services.uow.sessions))
    else:
        units = CountedUnits(services.uow)
    return HistoryService(units, services.reads if path == "one statement" else None), units


# A view: in one statement first (``SqlReads.view``: PostgreSQL), else through a unit of work
# whose first statement reads every chunk's columns (a range of few points, as here), or only
# those of compacted chunks and of chunks the range cuts, the rest read as the view needs them
# (as of a range of many points).
PATHS = ["one statement", "unit of work", "columns on demand"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state", STATES)
async def test_views_equal_a_brute_force_min_max_per_interval(
    services: Services, state: str, path: str
) -> None:
    run_id = await written(services, state)
    steps, values, stamps = await stored_points(services, run_id, "x")
    points = Points(
        np.frombuffer(steps, dtype="<i8"),
        np.frombuffer(values, dtype="<f8"),
        np.frombuffer(stamps, dtype="<f8"),
    )
    history, units = history_by(services, path)
    stepwise = HistoryService(services.uow)
    CountingChunks.columns_read = 0
    answered = 0  # in one statement
    for lo, hi, max_points in CASES:
        opened = units.opened
        view = await history.history(run_id, "x", lo, hi, max_points, 0, "")
        answered += units.opened == opened
        if path != "unit of work":  # the same view as the unit of work's, grid and all
            same = await stepwise.history(run_id, "x", lo, hi, max_points, 0, "")
            assert (view.grid, view.range_count) == (same.grid, same.range_count)
            assert as_rows(view.points, range(len(view.points))) == as_rows(
                same.points, range(len(same.points))
            )
        grid = allowed_grid(points, lo, hi, max_points, view.grid) if view.downsampled else None
        expected, count = brute_view(points, lo, hi, max_points, grid)
        assert as_rows(view.points, range(len(view.points))) == expected, (lo, hi, max_points)
        assert (view.range_count, view.downsampled) == (count, len(expected) < count)
    # PostgreSQL reads a view in one statement unless the run has staged messages (a range
    # this small brings every chunk's columns with the summaries: nothing more to read).
    one_statement = path == "one statement" and services.backend == "postgresql"
    assert answered == (len(CASES) if one_statement and state != "staged" else 0)
    # On demand: chunks read in more statements (those boundaries cut, or all of them).
    assert (CountingChunks.columns_read > 0) == (path == "columns on demand")

    # A grid wider than the series (as compare sets for several runs) lines it up the same.
    grid = Grid(-20_000, 40_000, 250)
    async with services.uow() as uow:
        await uow.read_snapshot()
        shared = await read_view(uow.chunks, metric_id(run_id, "x"), -20_000, 40_000, 500, grid)
    expected, count = brute_view(points, -20_000, 40_000, 500, grid)
    assert as_rows(shared.points, range(len(shared.points))) == expected
    assert shared.range_count == count


async def test_chunks_within_one_interval_are_answered_from_their_summaries(
    services: Services,
) -> None:
    """Views of 200 1,000-point chunks on intervals of whole chunks read no chunk's columns;
    a grid cutting most chunks reads them all, once.
    """
    run = await services.run((await services.experiment()).id)
    rng = np.random.default_rng(3)
    async with running_writer(services) as writer:
        for seq in range(1, 201):
            steps = list(range((seq - 1) * 1000, seq * 1000))
            series = tpb.MetricSeries(
                name="x", steps=steps, values=rng.standard_normal(1000).tolist()
            )
            message = tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(message))
    counted = HistoryService(lambda: Counted(services.uow.sessions))
    for max_points, whole_chunks in ((400, 1), (100, 4), (10, 40)):  # per interval
        CountingChunks.columns_read = 0
        view = await counted.history(run.id, "x", None, None, max_points, 0, "")
        assert (len(view.points), view.range_count) == (max_points, 200_000)
        assert CountingChunks.columns_read == 0, whole_chunks
    # 400-step intervals: boundaries cut most chunks, which are read (all at once).
    CountingChunks.columns_read = 0
    view = await counted.history(run.id, "x", None, None, 1000, 0, "")
    assert (len(view.points), CountingChunks.columns_read) == (1000, 200)


def chunks_with_cut_blocks(points: Points, counts: list[int], size: int, grid: Grid | None) -> int:
    """How many of the chunks of ``counts`` points (in history order, ``points`` theirs in
    turn) have a block of ``size`` points that holds a NaN or that the grid's boundaries cut.
    """
    assert grid is not None
    cut, start = 0, 0
    for n in counts:
        for at in range(start, start + n, size):
            block = slice(at, min(at + size, start + n))
            intervals = grid.interval(points.steps[block])
            if np.isnan(points.decoded()[block]).any() or intervals[0] != intervals[-1]:
                cut += 1
                break
        start += n
    return cut


def fleet_messages(form: str, flushes: int = 400) -> list[tpb.StreamRunRequest]:
    """``flushes`` of 100 points (40,000 points by default): compacted into 16,384-point
    chunks with blocks. ``short``: consecutive steps, one timestamp for all (a fleet's series,
    few distinct values: ties everywhere); ``full``: strided steps, a timestamp each, odd
    values and runs of NaN (whole blocks of them).
    """
    rng = np.random.default_rng(11)
    cycle = np.round(rng.standard_normal(10), 2)
    out = []
    for k in range(flushes):
        index = np.arange(k * 100, (k + 1) * 100)
        if form == "short":
            steps, values, stamps = index, cycle[index % 10], np.full(100, STAMP0)
        else:
            steps = 5 + 3 * index
            values = np.round(rng.standard_normal(100) * 10, 1)
            values[::37] = ODD_VALUES[np.arange(len(values[::37])) % len(ODD_VALUES)]
            if 120 <= k < 124:  # 400 NaN: blocks holding only NaN
                values[:] = math.nan
            stamps = STAMP0 + index * 1e-3
        series = tpb.MetricSeries(
            name="x", steps=steps.tolist(), values=values.tolist(), timestamps=stamps.tolist()
        )
        out.append(tpb.StreamRunRequest(seq=k + 1, metrics=tpb.MetricBatch(series=[series])))
    return out


async def compacted_fleet_series(services: Services, form: str, flushes: int = 400) -> str:
    """A new run with metric "x" written as `fleet_messages`, compacted; its id."""
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        for message in fleet_messages(form, flushes):
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(message))
    engine: AsyncEngine = create_engine(server_url(services))
    try:
        await compactor(engine).run_round()
    finally:
        await engine.dispose()
    return run.id


COMPACTED_CASES = [  # (lo, hi, max_points)
    (INT64_MIN, INT64_MAX, 1000),
    (INT64_MIN, INT64_MAX, 333),
    (INT64_MIN, INT64_MAX, 64),  # intervals wider than a block, narrower than a chunk
    (INT64_MIN, INT64_MAX, 2),
    (INT64_MIN, INT64_MAX, 2000),
    (INT64_MIN, INT64_MAX, 80_000),  # every point
    (1_234, 98_765, 1000),  # the range cuts chunks and blocks
    (16_380, 16_390, 4),  # across a chunk boundary
    (36_000, 37_500, 100),  # the NaN (full form)
]


@pytest.mark.parametrize("form", ["short", "full"])
async def test_views_of_compacted_chunks_read_only_the_blocks_cut_and_equal_brute_force(
    services: Services, form: str
) -> None:
    run_id = await compacted_fleet_series(services, form)
    rows = await services.fetch(
        "SELECT n, blocks FROM metric_chunks WHERE run_id = :run ORDER BY seq", run=run_id
    )
    found = [(int(n), bytes(blocks)) for n, blocks in map(tuple, rows)]
    assert [n for n, _ in found] == [16_384, 16_384, 7_232]
    assert all(blocks[:1] == (b"S" if form == "short" else b"F") for _, blocks in found)
    steps, values, stamps = await stored_points(services, run_id, "x")
    points = Points(
        np.frombuffer(steps, dtype="<i8"),
        np.frombuffer(values, dtype="<f8"),
        np.frombuffer(stamps, dtype="<f8"),
    )
    counted = HistoryService(lambda: Counted(services.uow.sessions))
    one_statement, units = history_by(services, "one statement")
    for lo, hi, max_points in COMPACTED_CASES:
        CountingChunks.columns_read = 0
        view = await counted.history(run_id, "x", lo, hi, max_points, 0, "")
        opened = units.opened
        read_once = await one_statement.history(run_id, "x", lo, hi, max_points, 0, "")
        assert as_rows(read_once.points, range(len(read_once.points))) == as_rows(
            view.points, range(len(view.points))
        )
        assert (read_once.range_count, read_once.grid) == (view.range_count, view.grid)
        if view.downsampled and services.backend == "postgresql":
            # The blocks came in its first statement, the columns of the chunks whose blocks
            # the grid cuts in a second: no unit of work.
            assert units.opened == opened, (lo, hi, max_points)
        grid = allowed_grid(points, lo, hi, max_points, view.grid) if view.downsampled else None
        expected, count = brute_view(points, lo, hi, max_points, grid)
        assert as_rows(view.points, range(len(view.points))) == expected, (lo, hi, max_points)
        assert (view.range_count, view.downsampled) == (count, len(expected) < count)
        if view.downsampled and lo == INT64_MIN and hi == INT64_MAX:
            # Of the chunks, only those with blocks the grid cuts (or holding NaN) are read.
            size = 128 if form == "short" else 256
            cut = chunks_with_cut_blocks(points, [n for n, _ in found], size, view.grid)
            assert CountingChunks.columns_read == cut, (lo, hi, max_points)
        if form == "short" and max_points in (333, 64):
            # 2,000 steps / 166 (or 1,250) would cut blocks (128 steps from 0) at most
            # boundaries: the view takes intervals a whole number of blocks wide instead.
            assert grid is not None and grid.lo % 128 == 0
            assert (grid.hi - grid.lo + 1) // grid.intervals % 128 == 0
    for grid in (Grid(-20_000, 200_000, 250), Grid(0, 39_999, 500), Grid(7, 20_000, 37)):
        async with services.uow() as uow:
            await uow.read_snapshot()
            shared = await read_view(
                uow.chunks, metric_id(run_id, "x"), grid.lo, grid.hi, 2 * grid.intervals, grid
            )
        expected, count = brute_view(points, grid.lo, grid.hi, 2 * grid.intervals, grid)
        assert as_rows(shared.points, range(len(shared.points))) == expected, grid
        assert shared.range_count == count


class SecondStatement:
    """The reads, recording what a view's second statement asks for; with ``change``, first
    changing a chunk as a compaction committing between the two statements could: ``delete``
    it, or ``rewrite`` it (another row under its seq, as compaction writes its chunks under
    the seqs of those it deletes; here with the same points).
    """

    def __init__(self, services: Services, run_id: str, change: tuple[str, int] | None) -> None:
        self.services, self.run_id, self.change = services, run_id, change
        self.asked: list[int] = []

    async def view(self, *args: Any) -> Any:
        return await self.services.reads.view(*args)

    async def chunks(self, metric: str, versions: Mapping[int, int]) -> list[StoredChunk] | None:
        self.asked += versions
        if self.change is not None:
            how, seq = self.change
            statement = {
                "delete": "DELETE FROM metric_chunks WHERE run_id = :run AND seq = :seq",
                "rewrite": "UPDATE metric_chunks SET n = n WHERE run_id = :run AND seq = :seq",
            }[how]
            async with self.services.engine.begin() as connection:
                # As the caller's tenant: row-level security hides the others' rows.
                await connection.execute(
                    text("SELECT set_config('app.tenant_id', :t, true)"), {"t": current_tenant()}
                )
                changed = await connection.execute(
                    text(statement), {"run": self.run_id, "seq": seq}
                )
                assert changed.rowcount == 1
        return await self.services.reads.chunks(metric, versions)

    async def page(self, *args: Any) -> Any:
        return await self.services.reads.page(*args)

    async def read_ahead(self, *args: Any) -> None:
        await self.services.reads.read_ahead(*args)


async def test_a_views_second_statement_reads_the_chunks_it_cuts_as_the_first_saw_them(
    services: Services,
) -> None:
    """A view whose grid cuts compacted chunks' blocks reads their columns by seq in a second
    statement (PostgreSQL); when a chunk it asks for is gone by then, or another row under its
    seq, the view is read again in one snapshot, of what is stored then. All equal brute force.
    """
    # More points than a view's first statement reads the columns of (READ_WHOLE_POINTS).
    run_id = await compacted_fleet_series(services, "short", flushes=700)
    seqs = [int(seq) for (seq,) in await services.fetch(
        "SELECT seq FROM metric_chunks WHERE run_id = :run ORDER BY first_step", run=run_id
    )]  # fmt: skip
    assert len(seqs) == 5
    postgres = services.backend == "postgresql"
    changes = [(None, 70_000), (("rewrite", seqs[2]), 70_000), (("delete", seqs[1]), 53_616)]
    for change, stored in changes:
        reads = SecondStatement(services, run_id, change)
        units = CountedUnits(services.uow)
        # 1,000 points of 70,000: 140-step intervals cut every chunk's blocks.
        view = await HistoryService(units, reads).history(run_id, "x", None, None, 1000, 0, "")
        steps, values, stamps = await stored_points(services, run_id, "x")
        points = Points(
            np.frombuffer(steps, dtype="<i8"),
            np.frombuffer(values, dtype="<f8"),
            np.frombuffer(stamps, dtype="<f8"),
        )
        assert len(points) == (stored if postgres else 70_000)
        expected, count = brute_view(points, INT64_MIN, INT64_MAX, 1000, view.grid)
        assert as_rows(view.points, range(len(view.points))) == expected
        assert view.range_count == count
        if postgres:
            assert sorted(reads.asked) == sorted(seqs)
            # A unit of work only when the second statement found a chunk changed.
            assert units.opened == (change is not None), change
        else:  # SQLite's views are read in a unit of work from the start
            assert (reads.asked, units.opened) == ([], 1)
