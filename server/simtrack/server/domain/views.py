"""Downsampled views of a metric: at most ``max_points`` of a step range, spikes kept.

The range is cut into equal step intervals (a `Grid`) and each interval keeps its lowest and
its highest point (the usual min/max decimation of time-series viewers).

A view reads the chunks' summaries first (no columns). A chunk lying within one interval,
every value finite, stands in for its points by its min and max point (value, step,
timestamp: ``ChunkSummary``); only the chunks an interval boundary or the range cuts are read
and unpacked (all of them in one read when they are most). A 1,000-point view of a 1M-point
series in 1,000-point chunks reads the summaries of a thousand chunks and no columns; chunks
larger than an interval (compaction's 16,384 points) are all cut, and all read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simtrack.server.db.chunks import FLOAT, STEP, Array, ChunkSummary, StoredChunk, unpack_many
from simtrack.server.domain.ports import ChunkRows
from simtrack.server.domain.series import Points, merge

# Above this share of a range's chunks to read anyway, one read of them all costs less than
# reading the summaries and then most of the chunks by seq.
READ_ALL_SHARE = 0.5


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
        where = (steps.astype(np.float64) - float(self.lo)) * (self.intervals / span)
        return np.minimum(where.astype(np.int64), self.intervals - 1)


def extremes(points: Points, grid: Grid) -> Array:
    """The indexes (ascending) of each interval's lowest and highest point of ``points`` (in
    history order, within the grid): ties keep the earliest; NaN is skipped, and an interval of
    only NaN keeps its first point.
    """
    interval = grid.interval(points.steps)
    starts = np.flatnonzero(np.r_[True, interval[1:] != interval[:-1]])
    lengths = np.diff(np.r_[starts, len(points)])
    chosen = []
    for extreme in (np.fmin, np.fmax):  # fmin/fmax ignore NaN unless all are NaN
        target = np.repeat(extreme.reduceat(points.values, starts), lengths)
        hits = np.flatnonzero(points.values == target)
        hit_interval = interval[hits]  # ascending: the first hit of each interval starts a run
        first = np.r_[True, hit_interval[1:] != hit_interval[:-1]]
        chosen.append(hits[first])
        found = np.zeros(grid.intervals, dtype=bool)
        found[hit_interval[first]] = True
        chosen.append(starts[~found[interval[starts]]])  # intervals of only NaN
    return np.unique(np.concatenate(chosen))


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


async def read_view(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, max_points: int, grid: Grid | None = None
) -> View:
    """At most ``max_points`` of the metric's points in [lo, hi] (see `downsample`); ``grid``
    must lie within [lo, hi]. Call inside a read snapshot (a compaction between two reads must
    not show a point twice or not at all).
    """
    summaries = await chunks.summaries(metric_id, lo, hi)
    if sum(s.n for s in summaries) <= max_points:
        return await _read_whole(chunks, metric_id, lo, hi, max_points, grid)
    inside = [s for s in summaries if lo <= s.first_step and s.last_step <= hi]
    edges = [s.seq for s in summaries if s.first_step < lo or s.last_step > hi]
    decoded = _Columns.of(await chunks.with_seqs(metric_id, edges) if edges else [], lo, hi)
    count = sum(s.n for s in inside) + len(decoded)
    if count <= max_points:
        return await _read_whole(chunks, metric_id, lo, hi, max_points, grid)
    if grid is None:
        ends = [(int(decoded.steps.min()), int(decoded.steps.max()))] if len(decoded) else []
        ends += [(s.first_step, s.last_step) for s in inside]
        grid = Grid(min(e[0] for e in ends), max(e[1] for e in ends), max_points // 2)
    first_interval = grid.interval(np.fromiter((s.first_step for s in inside), STEP, len(inside)))
    last_interval = grid.interval(np.fromiter((s.last_step for s in inside), STEP, len(inside)))
    whole = (first_interval == last_interval) & np.array(
        [s.vmin_ts is not None for s in inside], dtype=bool
    )
    cut = [s.seq for s, w in zip(inside, whole.tolist(), strict=True) if not w]
    if len(cut) + len(edges) > READ_ALL_SHARE * len(summaries):
        return await _read_whole(chunks, metric_id, lo, hi, max_points, grid)
    if cut:
        decoded = decoded.plus(_Columns.of(await chunks.with_seqs(metric_id, cut), lo, hi))
    summarised = [s for s, w in zip(inside, whole.tolist(), strict=True) if w]
    candidates = decoded.plus(_Columns.extremes_of(summarised)).in_history_order()
    shown = candidates.take(extremes(candidates, grid))
    return View(shown, count, len(shown) < count)


async def _read_whole(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, max_points: int, grid: Grid | None
) -> View:
    """`read_view` by reading every chunk of the range."""
    every = await chunks.overlapping(metric_id, lo, hi, None, None)
    points = merge(every, lo, hi).points
    shown = downsample(points, max_points, grid)
    return View(shown, len(points), len(shown) < len(points))


@dataclass(frozen=True)
class _Columns:
    """Points with their place in history order (seq, place in the chunk), in no order."""

    steps: Array
    values: Array
    stamps: Array
    seqs: Array
    places: Array

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def of(cls, read: list[StoredChunk], lo: int, hi: int) -> _Columns:
        """The points of ``read`` with lo <= step <= hi."""
        steps, values, stamps = unpack_many(read)
        counts = np.fromiter((c.n for c in read), dtype=np.int64, count=len(read))
        seqs = np.repeat(np.fromiter((c.seq for c in read), dtype=STEP, count=len(read)), counts)
        places = np.arange(len(steps), dtype=STEP) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = (steps >= lo) & (steps <= hi)
        return cls(steps[keep], values[keep], stamps[keep], seqs[keep], places[keep])

    @classmethod
    def extremes_of(cls, summarised: list[ChunkSummary]) -> _Columns:
        """Each chunk's min and max point, as its summaries have them. Their places are
        unknown and need not be: no other candidate shares their chunk, and the two share a
        step only as one point or with different values (never both the hit of one extreme).
        """
        n = len(summarised)
        lows = [(s.vmin_step, s.vmin, s.vmin_ts, s.seq) for s in summarised]
        highs = [(s.vmax_step, s.vmax, s.vmax_ts, s.seq) for s in summarised]
        steps, values, stamps, seqs = zip(*(lows + highs), strict=True) if n else ((),) * 4
        return cls(
            np.array(steps, dtype=STEP),
            np.array(values, dtype=FLOAT),
            np.array(stamps, dtype=FLOAT),
            np.array(seqs, dtype=STEP),
            np.zeros(2 * n, dtype=STEP),
        )

    def plus(self, other: _Columns) -> _Columns:
        return _Columns(
            *(np.concatenate((a, b)) for a, b in zip(self.columns(), other.columns(), strict=True))
        )

    def columns(self) -> tuple[Array, ...]:
        return self.steps, self.values, self.stamps, self.seqs, self.places

    def in_history_order(self) -> Points:
        order = np.lexsort((self.places, self.seqs, self.steps))
        return Points(self.steps[order], self.values[order], self.stamps[order])
