"""A metric's points in history order, read from its packed chunks (``db/chunks.py``).

History order is step order, points of equal step in the order they were sent: by seq, then
place in the batch. Compaction rewrites chunks but keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from simtrack.server.db.chunks import (
    FLOAT,
    STEP,
    Array,
    StoredChunk,
    Unpacked,
    compressed,
    unpack_many,
    unpack_steps,
)

# A point's place in history order: (step, rank), the rank counting the points of that step
# before it. Compaction rewrites chunks (new seqs, new places in them) but keeps history order,
# and later points sort after every stored one of their step, so a key, and the page token
# that carries it, outlives compaction.
Key = tuple[int, int]


@dataclass(frozen=True)
class Points:
    """Parallel columns: int64 steps, float64 values, float64 Unix-second timestamps; and
    what is known of them without looking (from the chunks' rows: `Unpacked`), so a response
    need not check it point by point.
    """

    steps: Array
    values: Array | None  # None: not decoded (a page sent as its chunks' stored parts)
    timestamps: Array | None  # likewise
    consecutive: bool = False  # the steps run steps[0], steps[0] + 1, ... (False: unknown)
    one_timestamp: bool = False  # every timestamp has the first's bits (False: unknown)
    # The first point's place among the points of the chunks read, in their order, when the
    # points are one run of them (None: unknown, or reordered): they are then those chunks'
    # parts as stored (`stored_parts`).
    origin: int | None = None

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, index: Array | slice) -> Points:
        """The points at ``index``; a slice keeps what is known of the columns."""
        values = None if self.values is None else self.values[index]
        stamps = None if self.timestamps is None else self.timestamps[index]
        if not (isinstance(index, slice) and index.step in (None, 1)):
            return Points(self.steps[index], values, stamps)
        start = index.indices(len(self))[0]
        return Points(
            self.steps[index],
            values,
            stamps,
            self.consecutive,
            self.one_timestamp,
            None if self.origin is None else self.origin + start,
        )

    def decoded(self) -> Array:
        """The values, which only a page sent as stored parts leaves undecoded."""
        if self.values is None:
            raise ValueError("the points' values were not decoded")
        return self.values

    def times(self) -> Array:
        """The timestamps, which only a page sent as stored parts leaves undecoded."""
        if self.timestamps is None:
            raise ValueError("the points' timestamps were not decoded")
        return self.timestamps


class StoredPart(NamedTuple):
    """Points ``skip`` to ``skip + take`` of a stored chunk."""

    chunk: StoredChunk
    skip: int
    take: int


def stored_parts(chunks: Sequence[StoredChunk], points: Points) -> list[StoredPart] | None:
    """``points`` as parts of ``chunks`` (the chunks they were read from, in the order read),
    where they are one run of the chunks' points (`Points.origin`) and some chunk is
    compressed; else None. Chunks all raw are as large as the points' little-endian columns,
    and each part costs the reader a call: their points go as one part.
    """
    if points.origin is None or not any(compressed(c) for c in chunks):
        return None
    start, end = points.origin, points.origin + len(points)
    parts, at = [], 0
    for chunk in chunks:
        lo, hi = max(start, at), min(end, at + chunk.n)
        if lo < hi:
            parts.append(StoredPart(chunk, lo - at, hi - lo))
        at += chunk.n
        if at >= end:
            break
    return parts


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


def history_order(
    chunks: Sequence[StoredChunk], unpacked: Unpacked | None = None, values: bool = True
) -> Points:
    """The chunks' points sorted by (step, seq, place in the chunk); ``unpacked``: the chunks
    unpacked already (`unpack_many`). Without ``values``, the values and timestamps are left
    undecoded where the chunks' points come in order (`Points.origin`: they are then sent as
    stored).
    """
    got = unpack_many(chunks, values) if unpacked is None else unpacked
    steps = got.steps
    in_order = got.consecutive or len(steps) < 2 or bool((steps[1:] > steps[:-1]).all())
    if got.values is None and (values or not in_order):
        got = unpack_many(chunks)
    points = Points(steps, got.values, got.timestamps, got.consecutive, got.one_timestamp, origin=0)
    if in_order:
        return points  # the chunks' points as they come
    counts = np.fromiter((c.n for c in chunks), dtype=np.int64, count=len(chunks))
    seqs = np.repeat(np.fromiter((c.seq for c in chunks), dtype=STEP, count=len(chunks)), counts)
    index = np.arange(len(steps), dtype=STEP) - np.repeat(np.cumsum(counts) - counts, counts)
    return points.take(np.lexsort((index, seqs, steps)))


def merge(
    chunks: Sequence[StoredChunk],
    lo: int,
    hi: int,
    after: Key | None = None,
    unpacked: Unpacked | None = None,
    values: bool = True,
) -> Merged:
    """The chunks' points with lo <= step <= hi (and key > ``after``), in history order.

    With ``after``, the chunks must include every one holding a point of its step (the rank
    counts them). ``unpacked``: the chunks unpacked already; ``values``: as `history_order`.
    """
    if after is not None:
        lo = max(lo, after[0])
    if not chunks:
        empty = np.empty(0, dtype=FLOAT)
        return Merged(Points(np.empty(0, dtype=STEP), empty, empty))
    points = history_order(chunks, unpacked, values)
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
    """How many points of chunks given as (n, first_step, steps) lie in [lo, hi]."""
    total = 0
    for n, first, steps in step_columns:
        unpacked = unpack_steps(n, first, steps)
        total += int(np.count_nonzero((unpacked >= lo) & (unpacked <= hi)))
    return total
