"""Reading telemetry back: a run's metrics, one metric's history, a run's events.

A metric's points live in packed chunks (``db/chunks.py``), one per stream message, each with
its step range. History is served in step order (points of equal step in the order they were
sent: by seq, then place in the batch), either

* page by page: chunks are read in order of their first step until no unread chunk can hold a
  point of the page (the next one starts after the page's last step); the page token is the
  last point's (step, rank among the points of that step), which compaction preserves; or
* downsampled to at most ``max_points``: every chunk of the range is read and each of
  ``max_points // 2`` equal step intervals keeps its lowest and its highest point, so spikes
  survive (the usual min/max decimation of time-series viewers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import (
    optional_str,
    ordered_text,
    parse_int,
    parse_number,
    parse_time,
)
from simtrack.server.core.listing import (
    Listing,
    Page,
    decode_position,
    encode_position,
    enum_parser,
    page_size,
)
from simtrack.server.core.model import (
    INT64_MAX,
    INT64_MIN,
    MetricKind,
    require_id,
    require_name,
)
from simtrack.server.db.chunks import FLOAT, STEP, Array, StoredChunk, unpack_many
from simtrack.server.db.codec import decode_steps, is_tagged
from simtrack.server.db.models import Event, Metric
from simtrack.server.domain.ports import ChunkRows, UnitOfWorkFactory
from simtrack.server.domain.runs import load_run

HISTORY_PAGE_DEFAULT = 10_000
HISTORY_PAGE_MAX = 100_000
MAX_POINTS_MAX = 100_000
CHUNKS_PER_READ = 64  # a 10,000-point page of 1,000-point chunks is one read

METRIC_LISTING = Listing(
    "metrics",
    {
        "name": ordered_text,
        "kind": enum_parser(MetricKind),
        "count": parse_int,
        "last_step": parse_int,
        "last_value": parse_number,
        "min": parse_number,
        "max": parse_number,
        "create_time": parse_time,
        "update_time": parse_time,
    },
    position=(str,),  # by name
)
EVENT_LISTING = Listing(
    "events",
    {"type": ordered_text, "agent_id": optional_str, "step": parse_int},
    position=(int, int),  # as sent: (seq, position)
)

# A point's place in history order: (step, rank), the rank counting the points of that step
# before it. Compaction rewrites chunks (new seqs, new places in them) but keeps history order,
# and later points sort after every stored one of their step, so a key, and the page token
# that carries it, outlives compaction.
Key = tuple[int, int]


@dataclass(frozen=True)
class Points:
    """Parallel columns: int64 steps, float64 values, float64 Unix-second timestamps."""

    steps: Array
    values: Array
    timestamps: Array

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, index: Array | slice) -> Points:
        return Points(self.steps[index], self.values[index], self.timestamps[index])


@dataclass(frozen=True)
class History:
    points: Points
    range_count: int  # stored points in the requested step range, all pages together
    downsampled: bool
    next_page_token: str


@dataclass(frozen=True)
class Merged:
    """Points in history order, the first ``skipped`` of step ``after_step`` left out."""

    points: Points
    after_step: int | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.points)

    def key(self, i: int) -> Key:
        """The key of point ``i``: its step and its rank among the points of that step."""
        steps = self.points.steps
        step = int(steps[i])
        rank = i - int(np.searchsorted(steps, steps[i], side="left"))
        return step, rank + (self.skipped if step == self.after_step else 0)


def history_order(chunks: Sequence[StoredChunk]) -> tuple[Points, Array]:
    """The chunks' points sorted by (step, seq, place in the chunk), and the order applied."""
    steps, values, stamps = unpack_many(chunks)
    points = Points(steps, values, stamps)
    if len(steps) < 2 or bool((steps[1:] > steps[:-1]).all()):  # already in order
        return points, np.arange(len(steps))
    counts = np.fromiter((c.n for c in chunks), dtype=np.int64, count=len(chunks))
    seqs = np.repeat(np.fromiter((c.seq for c in chunks), dtype=STEP, count=len(chunks)), counts)
    index = np.arange(len(steps), dtype=STEP) - np.repeat(np.cumsum(counts) - counts, counts)
    order = np.lexsort((index, seqs, steps))
    return points.take(order), order


def merge(chunks: Sequence[StoredChunk], lo: int, hi: int, after: Key | None = None) -> Merged:
    """The chunks' points with lo <= step <= hi (and key > ``after``), in history order.

    With ``after``, the chunks must include every one holding a point of its step (the rank
    counts them).
    """
    if after is not None:
        lo = max(lo, after[0])
    if not chunks:
        empty = np.empty(0, dtype=FLOAT)
        return Merged(Points(np.empty(0, dtype=STEP), empty, empty))
    points, _ = history_order(chunks)
    steps = points.steps
    if any(c.first_step < lo or c.last_step > hi for c in chunks):
        # Sorted by step: the range is one slice.
        start = int(np.searchsorted(steps, lo, side="left"))
        end = int(np.searchsorted(steps, hi, side="right"))
        points = points.take(slice(start, end))
    if after is None:
        return Merged(points)
    step, rank = after
    # The points of the token's step come first (lo is that step); its first rank + 1 are read.
    same = int(np.searchsorted(points.steps, step, side="right"))
    skipped = min(same, rank + 1)
    return Merged(points.take(slice(skipped, None)), step, skipped)


def range_count(step_columns: Sequence[tuple[int, int, bytes]], lo: int, hi: int) -> int:
    """How many points of chunks given as (n, first_step, steps) lie in [lo, hi], the chunks
    being those that reach into it (so no difference below overflows int64).
    """
    raw = b"".join(steps for _, _, steps in step_columns if not is_tagged(steps))
    stored = [np.frombuffer(raw, dtype=STEP)] + [
        decode_steps(steps, n, first) for n, first, steps in step_columns if is_tagged(steps)
    ]
    total = sum(int(np.count_nonzero((s >= lo) & (s <= hi))) for s in stored)
    elided = [(n, first) for n, first, steps in step_columns if not steps]
    if elided:  # contiguous: first, first + 1, ..., first + n - 1
        n, first = np.array(elided, dtype=STEP).T
        last = first + (n - 1)
        total += int((np.minimum(last, hi) - np.maximum(first, lo) + 1).clip(min=0).sum())
    return total


def downsample(points: Points, max_points: int) -> Points:
    """At most ``max_points`` of ``points`` (in step order): each of ``max_points // 2`` equal
    step intervals keeps its lowest and highest value (ties: the earliest; NaN is skipped, and
    an interval of only NaN keeps its first point).
    """
    if len(points) <= max_points:
        return points
    intervals = max_points // 2
    steps = points.steps.astype(np.float64)  # float: a step span may not fit in int64
    span = steps[-1] - steps[0] + 1.0
    interval = np.minimum(((steps - steps[0]) * (intervals / span)).astype(np.int64), intervals - 1)
    starts = np.flatnonzero(np.r_[True, interval[1:] != interval[:-1]])
    lengths = np.diff(np.r_[starts, len(points)])
    chosen = []
    for extreme in (np.fmin, np.fmax):  # fmin/fmax ignore NaN unless all are NaN
        target = np.repeat(extreme.reduceat(points.values, starts), lengths)
        hits = np.flatnonzero(points.values == target)
        hit_interval = interval[hits]  # ascending: the first hit of each interval starts a run
        first = np.r_[True, hit_interval[1:] != hit_interval[:-1]]
        chosen.append(hits[first])
        found = np.zeros(intervals, dtype=bool)
        found[hit_interval[first]] = True
        chosen.append(starts[~found[interval[starts]]])  # intervals of only NaN
    return points.take(np.unique(np.concatenate(chosen)))


async def read_page(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, after: Key | None, size: int
) -> tuple[Merged, bool]:
    """Up to ``size`` points after ``after`` in [lo, hi], and whether more may follow."""
    read: list[StoredChunk] = []
    chunk_after: tuple[int, int] | None = None
    start = lo if after is None else max(lo, after[0])
    limit = CHUNKS_PER_READ
    while True:
        batch = await chunks.overlapping(metric_id, start, hi, chunk_after, limit)
        read += batch
        merged = merge(read, start, hi, after)
        if len(batch) < limit:
            return merged, len(merged) > size
        # Unread chunks start at or after this one: the page is settled once that is past
        # its last step (equal is not enough: an unread chunk may hold an earlier seq).
        if len(merged) >= size and batch[-1].first_step > merged.points.steps[size - 1]:
            return merged, True
        chunk_after = (batch[-1].first_step, batch[-1].seq)
        # Doubling: a page of small chunks (a fleet's flushes) takes a few reads and merges,
        # not one per 64 chunks, each merging all read so far.
        limit *= 2


class HistoryService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def list_metrics(
        self, run_id: str, size: int, token: str, filter_text: str, order_by: str = ""
    ) -> Page[Metric]:
        """A run's metrics in ``order_by`` order, else by name."""
        run_id = require_id("run_id", run_id)
        page = METRIC_LISTING.request(size, token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.metrics.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def history(
        self,
        run_id: str,
        metric: str,
        start_step: int | None,
        end_step: int | None,
        max_points: int,
        size: int,
        token: str,
    ) -> History:
        run_id = require_id("run_id", run_id)
        metric = require_name("metric", metric)
        lo = INT64_MIN if start_step is None else start_step
        hi = INT64_MAX if end_step is None else end_step
        if lo > hi:
            raise InvalidArgument.of("end_step", f"must be >= start_step ({lo}), got {hi}")
        if max_points and not 2 <= max_points <= MAX_POINTS_MAX:
            raise InvalidArgument.of(
                "max_points", f"must be 0 or between 2 and {MAX_POINTS_MAX}, got {max_points}"
            )
        if max_points and token:
            raise InvalidArgument.of("page_token", "a downsampled history has only one page")
        size = page_size(size, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)
        scope = f"history/{run_id}/{metric}/{lo}/{hi}"
        after: Key | None = None
        if token:
            step, rank = decode_position(token, scope, (int, int))
            after = (step, rank)
        async with self.uow() as uow:
            # One snapshot for all statements below: a compaction committing between two of
            # them must not show a point twice (old rows, then the new) or not at all.
            await uow.read_snapshot()
            run = await load_run(uow, run_id, "run_id")
            stored = await uow.metrics.named(run.id, metric)
            if stored is None:
                raise NotFound("metric", metric, "metric")
            if max_points:  # every point of the range is read: it counts itself
                every = await uow.chunks.overlapping(stored.id, lo, hi, None, None)
                points = merge(every, lo, hi).points
                shown = downsample(points, max_points)
                return History(shown, len(points), len(shown) < len(points), "")
            count = range_count(await uow.chunks.step_columns(stored.id, lo, hi), lo, hi)
            merged, more = await read_page(uow.chunks, stored.id, lo, hi, after, size)
        shown_count = min(size, len(merged.points))
        next_token = ""
        if more and shown_count:
            next_token = encode_position(merged.key(shown_count - 1), scope)
        return History(merged.points.take(slice(0, shown_count)), count, False, next_token)

    async def list_events(
        self, run_id: str, size: int, token: str, filter_text: str, order_by: str = ""
    ) -> Page[Event]:
        """A run's events in ``order_by`` order, else in the order sent: by (seq, position)."""
        run_id = require_id("run_id", run_id)
        page = EVENT_LISTING.request(size, token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.events.list(page, run_id)
        return Page(rows, page.next_token(cursor))
