"""Downsampled views of a metric: at most ``max_points`` of a step range, spikes kept.

The range is cut into equal step intervals (a `Grid`) and each interval keeps its lowest and
its highest point (the usual min/max decimation of time-series viewers).

A view reads the chunks' summaries first (``db/view_rows.py``), with the blocks of compacted
chunks and the columns of the chunks the range cuts and of every chunk of a small range. Each
unit stands in for its points by its min and max point (value, step, timestamp) when it lies
within one interval and holds no NaN: a compacted chunk's blocks (``db/blocks.py``: 128 or 256
points), another chunk whole (a chunk of 1,000 points as ingest wrote it). Of the units an
interval boundary cuts, a compacted chunk's blocks are read from the pages holding them (paged
columns decode page by page: ``simtrack/codec.py``), other chunks are read and unpacked whole
(all of them in one read when they are most). `view_of` answers from what is read, or says what
it must read first; on PostgreSQL, a view that needs nothing more is one statement
(``HistoryReads.view``), and one that does a second by seq (``HistoryReads.chunks``). A
1,000-point view of a 1M-point series in 1,000-point chunks reads no columns; of one compacted
into 16,384-point chunks, no block either: its intervals are taken 2,048 steps wide
(`cheapest_grid`), where 2,000 would cut some 500 blocks of 128 points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.db.chunks import Array, StoredChunk
from simtrack.server.db.view_rows import ViewRows
from simtrack.server.domain.ports import ChunkRows
from simtrack.server.domain.series import Points, merge
from simtrack.server.domain.view_parts import Candidates, Units

# Above this share of a range's chunks to read anyway, one read of them all costs less than
# reading the summaries and then most of the chunks by seq.
READ_ALL_SHARE = 0.5
# A view's intervals may be this much wider than the narrowest (at least 80% of the points
# asked for) where that spares reading the units its boundaries would cut (`cheapest_grid`).
WIDER_AT_MOST = 1.25
ALIGNED_TRIES = 4  # widths tried, each a period wider than the last
_NO_COLUMNS = StoredChunk(0, 0, 0, 0, b"", b"", b"")  # a chunk whose columns are not read


@dataclass(frozen=True)
class Grid:
    """``intervals`` equal step intervals over [lo, hi]: a downsampled view keeps the lowest and
    the highest point of each. Several series viewed on one grid line up (compare).
    """

    lo: int
    hi: int
    intervals: int

    @classmethod
    def spanning(cls, points: Points, max_points: int) -> Grid:
        """The grid of a single series: from its first to its last step."""
        return cls(int(points.steps[0]), int(points.steps[-1]), max_points // 2)

    def interval(self, steps: Array) -> Array:
        """The interval of each step (steps in [lo, hi])."""
        span = float(self.hi) - float(self.lo) + 1.0  # float: a span may not fit in int64
        where = steps.astype(np.float64)
        where -= float(self.lo)
        where *= self.intervals / span
        interval = where.astype(np.int64)
        return np.minimum(interval, self.intervals - 1, out=interval)


def cheapest_grid(first: int, last: int, intervals: int, units: Units) -> Grid:
    """The grid of a view over [first, last] whose boundaries cut the fewest ``units`` (the
    blocks and chunks whose summaries can stand in for their points): ``intervals`` intervals
    spanning the range, or, at most ``WIDER_AT_MOST`` wider, intervals a whole number of the
    units' usual period wide, starting where a unit does. A series compacted into 128-point
    blocks viewed in 2,000-step intervals had a block cut at nearly every boundary, each read
    from its page; in 2,048-step intervals, none is.
    """
    narrowest = Grid(first, last, intervals)
    cuts = _cut(narrowest, units)
    starts = units.first_step[units.valid]
    if not bool((starts[1:] >= starts[:-1]).all()):  # (a compacted series' blocks are)
        starts = np.sort(starts)
    if cuts == 0 or len(starts) < 2:
        return narrowest
    period = int(np.median(np.diff(starts)))
    width = -(-(last - first + 1) // intervals)
    if period <= 0 or period > width:
        return narrowest
    best, start = narrowest, int(starts[0])
    aligned = -(-width // period) * period
    for _ in range(ALIGNED_TRIES):
        if aligned > WIDER_AT_MOST * width:
            break
        lo = start - -(-(start - first) // aligned) * aligned  # a unit's start, <= first
        count = -(-(last - lo + 1) // aligned)
        hi = lo + count * aligned - 1
        if count <= intervals and INT64_MIN <= lo and hi <= INT64_MAX:
            grid = Grid(lo, hi, count)
            if (found := _cut(grid, units)) < cuts:
                best, cuts = grid, found
            if cuts == 0:
                break
        aligned += period
    return best


def _cut(grid: Grid, units: Units) -> int:
    """How many of the units (with summaries that stand for them) the grid's boundaries cut."""
    return int(np.count_nonzero(units.valid)) - int(np.count_nonzero(_whole(grid, units)))


def _whole(grid: Grid, units: Units) -> Array:
    """Which units stand for their points on ``grid``: valid, and within one interval."""
    whole: Array = units.valid & (grid.interval(units.first_step) == grid.interval(units.last_step))
    return whole


def extremes(points: Points, grid: Grid) -> Array:
    """The indexes (ascending) of each interval's lowest and highest point of ``points`` (in
    history order, within the grid): ties keep the earliest; NaN is skipped, and an interval of
    only NaN keeps its first point.
    """
    if not len(points):
        return np.empty(0, dtype=np.int64)
    starts = _runs(grid.interval(points.steps))
    values = points.decoded()
    lowest, low = _first_extreme(values, starts, np.fmin)  # fmin/fmax skip NaN unless all are
    highest, _ = _first_extreme(values, starts, np.fmax)
    return np.unique(np.concatenate((lowest, highest, starts[np.isnan(low)])))


def _runs(interval: Array) -> Array:
    """Where each run of equal intervals starts (``interval`` ascending)."""
    starts = np.flatnonzero(interval[1:] != interval[:-1])
    starts += 1
    return np.concatenate(([0], starts))


def _first_extreme(values: Array, starts: Array, extreme: np.ufunc) -> tuple[Array, Array]:
    """The index of the first ``extreme`` of each run of ``values`` (runs from ``starts``; NaN
    equals nothing), and the extremes.
    """
    reduced = extreme.reduceat(values, starts)
    lengths = np.diff(starts, append=len(values))
    hits = np.flatnonzero(values == np.repeat(reduced, lengths))
    # Ascending: the first hit of each run starts a run of its hits.
    run = np.searchsorted(starts, hits, side="right")
    return hits[np.concatenate(([True], run[1:] != run[:-1]))], reduced


def _extremes_of_whole(units: Units, whole: Array, grid: Grid) -> Candidates:
    """The min and max points of the ``whole`` units (a mask: each within one interval) that
    may be an interval's: where no two of those units overlap, the lowest min and the highest
    max of each interval (of equals, the first unit's: the earliest); else every unit's two.
    A 1M-point series has some 8,000 blocks: reduced here, a view sorts 1,000 points, not 16,000.
    """
    index = np.flatnonzero(whole)
    firsts = units.first_step[index]
    if len(index) > 1 and not bool((firsts[1:] > units.last_step[index[:-1]]).all()):
        index = index[np.argsort(firsts, kind="stable")]  # chunks' blocks, then whole chunks
        firsts = units.first_step[index]
    if len(index) < 2 or not bool((firsts[1:] > units.last_step[index[:-1]]).all()):
        return units.low.take(index).plus(units.high.take(index))
    starts = _runs(grid.interval(firsts))
    lowest, _ = _first_extreme(units.low.values[index], starts, np.minimum)  # no NaN in them
    highest, _ = _first_extreme(units.high.values[index], starts, np.maximum)
    return units.low.take(index[lowest]).plus(units.high.take(index[highest]))


def downsample(points: Points, max_points: int, grid: Grid | None = None) -> Points:
    """At most ``max_points`` of ``points`` (in history order, within the grid): the
    `extremes` of each interval of ``grid`` (default: ``max_points // 2`` intervals spanning the
    points); all of them when they are no more than ``max_points``.
    """
    if len(points) <= max_points:
        return points
    return points.take(extremes(points, grid or Grid.spanning(points, max_points)))


@dataclass(frozen=True)
class View:
    """A downsampled view of a metric's range."""

    points: Points
    range_count: int  # stored points in the range
    downsampled: bool  # points were left out
    grid: Grid | None = None  # the intervals of a downsampled view


@dataclass(frozen=True)
class Unread:
    """What a view needs read before it can be answered: the columns of the chunks of
    ``seqs``, or (``everything``) every chunk of the range.
    """

    seqs: list[int]
    everything: bool = False


READ_ALL = Unread([], everything=True)


async def read_view(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, max_points: int, grid: Grid | None = None
) -> View:
    """At most ``max_points`` of the metric's points in [lo, hi] (see `downsample`); ``grid``
    must lie within [lo, hi]. Call inside a read snapshot (a compaction between two reads must
    not show a point twice or not at all).
    """
    rows = await chunks.view_rows(metric_id, lo, hi)
    while not isinstance(planned := view_of(rows, lo, hi, max_points, grid), View):
        if planned.everything:
            return await _read_whole(chunks, metric_id, lo, hi, max_points, grid)
        read = await chunks.with_seqs(metric_id, planned.seqs)
        if len(read) < len(planned.seqs):  # (one snapshot: never short)
            return await _read_whole(chunks, metric_id, lo, hi, max_points, grid)
        rows = rows.with_read(read)
    return planned


def view_of(
    rows: ViewRows, lo: int, hi: int, max_points: int, grid: Grid | None = None
) -> View | Unread:
    """`read_view` of the chunks ``rows`` holds, or what it must read first: the chunks the
    range cuts, then those the grid's boundaries cut (or all of them, when that is most).
    """
    if int(rows.counts.sum()) <= max_points:
        return _of_all(rows, lo, hi, max_points, grid)
    firsts, lasts = rows.records["first_step"], rows.records["last_step"]
    within = (firsts >= lo) & (lasts <= hi)
    inside = np.flatnonzero(within)
    edges = rows.seqs[~within].tolist()
    if unread := [seq for seq in edges if seq not in rows.read]:
        return Unread(unread)
    decoded = Candidates.of([rows.read[seq] for seq in edges], lo, hi)
    count = int(rows.counts[inside].sum()) + len(decoded)
    if count <= max_points:
        return _of_all(rows, lo, hi, max_points, grid)
    units = Units.of(rows, inside)
    if grid is None:
        first = min(decoded.steps.min(initial=INT64_MAX), firsts[inside].min(initial=INT64_MAX))
        last = max(decoded.steps.max(initial=INT64_MIN), lasts[inside].max(initial=INT64_MIN))
        grid = cheapest_grid(int(first), int(last), max_points // 2, units)
    whole = _whole(grid, units)
    cut = ~whole & (units.start < 0)
    cut_blocks = ~whole & (units.start >= 0)
    cut_chunks, with_cut_blocks = _chunks_of(rows, units, cut), _chunks_of(rows, units, cut_blocks)
    if not cut_blocks.any() and len(cut_chunks) + len(edges) > READ_ALL_SHARE * len(rows):
        return _of_all(rows, lo, hi, max_points, grid)
    if unread := [seq for seq in cut_chunks + with_cut_blocks if seq not in rows.read]:
        return Unread(unread)
    if cut_chunks:
        decoded = decoded.plus(Candidates.of([rows.read[seq] for seq in cut_chunks], lo, hi))
    # The blocks cut (most of the points), in (seq, place) order: their extremes first, then
    # those of all. A chunk none of whose blocks is cut: its columns are not needed.
    in_blocks = Candidates.empty()
    if cut_blocks.any():
        stored = [rows.read.get(seq, _NO_COLUMNS) for seq in rows.seqs.tolist()]
        in_blocks = Candidates.of_blocks(stored, units, cut_blocks)
        in_blocks = in_blocks.in_history_order(by_seq_and_place=True)
    reduced = in_blocks.take(extremes(in_blocks.points(), grid))
    candidates = decoded.plus(reduced, _extremes_of_whole(units, whole, grid))
    candidates = candidates.in_history_order()
    shown = candidates.points().take(extremes(candidates.points(), grid))
    return View(shown, count, len(shown) < count, grid)


def _chunks_of(rows: ViewRows, units: Units, keep: Array) -> list[int]:
    """The seqs of the chunks of the units of ``keep`` (a mask), each once."""
    return rows.seqs[np.unique(units.chunk[keep])].tolist() if keep.any() else []


def _of_all(rows: ViewRows, lo: int, hi: int, max_points: int, grid: Grid | None) -> View | Unread:
    """The view of every point of ``rows``' chunks, if it holds their columns."""
    seqs = rows.seqs.tolist()
    if any(seq not in rows.read for seq in seqs):
        return READ_ALL
    return _of_points(merge([rows.read[seq] for seq in seqs], lo, hi).points, max_points, grid)


def _of_points(points: Points, max_points: int, grid: Grid | None) -> View:
    """The view of ``points``: every point of a range."""
    if len(points) <= max_points:
        return View(points, len(points), False)
    grid = grid or Grid.spanning(points, max_points)
    return View(downsample(points, max_points, grid), len(points), True, grid)


async def _read_whole(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, max_points: int, grid: Grid | None
) -> View:
    """`read_view` by reading every chunk of the range."""
    every = await chunks.overlapping(metric_id, lo, hi, None, None)
    return _of_points(merge(every, lo, hi).points, max_points, grid)
