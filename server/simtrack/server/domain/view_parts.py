"""The parts a downsampled view (``domain/views.py``) is assembled from.

* `Units`: what can stand for its points by its min and max point: a block of a chunk with
  block summaries (``db/blocks.py``), else a whole chunk (its row's summaries);
* `Candidates`: points with their place in history order (seq, place in the chunk), read from
  chunks' columns (all of a chunk, or only some of its blocks) or taken from units' summaries.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simtrack.server.db.blocks import PAGE_POINTS, read_many, read_pages
from simtrack.server.db.chunks import FLOAT, STEP, Array, StoredChunk, unpack_many
from simtrack.server.db.view_rows import ViewRows
from simtrack.server.domain.series import Points


@dataclass(frozen=True)
class Units:
    """Parallel columns, one entry per unit: the unit's chunk (index in the rows), place
    of its first point in the chunk (-1: the whole chunk) and points, step range, whether its
    summaries stand for it (``valid``), and its min and max point.
    """

    chunk: Array
    start: Array
    length: Array
    first_step: Array
    last_step: Array
    valid: Array
    low: Candidates
    high: Candidates

    @classmethod
    def of(cls, rows: ViewRows, inside: Array) -> Units:
        """The units of the chunks of ``rows`` at ``inside`` (indexes, ascending): each
        compacted chunk's blocks, each other chunk whole.
        """
        has_blocks = np.isin(inside, rows.blocked)
        blocked, plain = inside[has_blocks], inside[~has_blocks]
        at = np.searchsorted(rows.blocked, blocked)
        found = read_many(
            [
                (rows.blocks[a], int(rows.counts[i]), int(rows.records["first_step"][i]))
                for a, i in zip(at.tolist(), blocked.tolist(), strict=True)
            ]
        )
        chunks_whole = rows.records[plain]

        def field(name: str) -> Array:
            return np.concatenate((found.fields[name], chunks_whole[name]))

        chunk = np.concatenate((blocked[found.owner], plain))
        start = np.concatenate((found.start, np.full(len(plain), -1, dtype=np.int64)))
        length = np.concatenate((found.length, rows.counts[plain])).astype(np.int64)
        seq = rows.seqs[chunk]
        vmin = field("vmin")
        return cls(
            chunk,
            start,
            length,
            field("first_step"),
            field("last_step"),
            ~np.isnan(vmin),
            Candidates.columns(field("vmin_step"), vmin, field("vmin_ts"), seq, field("vmin_at")),
            Candidates.columns(
                field("vmax_step"), field("vmax"), field("vmax_ts"), seq, field("vmax_at")
            ),
        )


@dataclass(frozen=True)
class Candidates:
    """Points with their place in history order (seq, place in the chunk)."""

    steps: Array
    values: Array
    stamps: Array
    seqs: Array
    places: Array

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def columns(
        cls, steps: Array, values: Array, stamps: Array, seqs: Array, places: Array
    ) -> Candidates:
        return cls(
            steps.astype(STEP, copy=False),
            values.astype(FLOAT, copy=False),
            stamps.astype(FLOAT, copy=False),
            seqs.astype(STEP, copy=False),
            places.astype(STEP, copy=False),
        )

    @classmethod
    def empty(cls) -> Candidates:
        nothing = np.empty(0)
        return cls.columns(nothing, nothing, nothing, nothing, nothing)

    @classmethod
    def of(cls, read: Sequence[StoredChunk], lo: int, hi: int) -> Candidates:
        """Every point of ``read`` with lo <= step <= hi."""
        steps, values, stamps = unpack_many(read).columns()
        counts = np.fromiter((c.n for c in read), dtype=np.int64, count=len(read))
        seqs = np.repeat(np.fromiter((c.seq for c in read), dtype=STEP, count=len(read)), counts)
        places = np.arange(len(steps), dtype=STEP) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = (steps >= lo) & (steps <= hi)
        return cls(steps[keep], values[keep], stamps[keep], seqs[keep], places[keep])

    @classmethod
    def of_blocks(cls, chunks: Sequence[StoredChunk], units: Units, keep: Array) -> Candidates:
        """The points of the blocks of ``units`` in ``keep`` (a mask; blocks of ``chunks``,
        the units' list of chunks), in (seq, place) order.
        """
        order = np.lexsort((units.start[keep], units.low.seqs[keep]))
        owner = units.chunk[keep][order]
        if not len(owner):
            return cls.empty()
        block_start, lengths = units.start[keep][order], units.length[keep][order]
        total = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths
        within = np.arange(total) - np.repeat(starts, lengths)  # a point's place in its block
        places = np.repeat(block_start, lengths) + within
        seqs = units.low.seqs[keep][order].repeat(lengths)
        # The pages holding the blocks, each once (in order: a page's blocks are adjacent).
        page = block_start // PAGE_POINTS
        new = np.concatenate(([True], (owner[1:] != owner[:-1]) | (page[1:] != page[:-1])))
        pages = list(zip(owner[new].tolist(), page[new].tolist(), strict=True))
        row = np.cumsum(new) - 1
        at = np.repeat(row * PAGE_POINTS + block_start - page * PAGE_POINTS, lengths)
        at += within  # each point's place in the pages read, flattened

        def column(name: str, dtype: np.dtype[Any]) -> Array:
            blobs = [(getattr(c, name), c.n, c.first_step) for c in chunks]
            read: Array = read_pages(blobs, dtype, pages).reshape(-1)[at]
            return read

        used = [chunks[i] for i in sorted(set(owner.tolist()))]
        if all(not c.steps for c in used):  # first_step, first_step + 1, ...
            firsts = np.array([c.first_step for c in chunks], dtype=STEP)
            steps = firsts[owner].repeat(lengths) + places
        else:
            steps = column("steps", STEP)
        if all(len(c.ts) == FLOAT.itemsize and c.n != 1 for c in used):  # one for all
            one = [struct.unpack("<d", c.ts)[0] if len(c.ts) == 8 else math.nan for c in chunks]
            stamps = np.array(one, dtype=FLOAT)[owner].repeat(lengths)
        else:
            stamps = column("ts", FLOAT)
        return cls(steps, column("vals", FLOAT), stamps, seqs, places)

    def take(self, index: Array | slice) -> Candidates:
        return Candidates(*(column[index] for column in self.all_columns()))

    def plus(self, *others: Candidates) -> Candidates:
        every = (self, *others)
        return Candidates(
            *(np.concatenate(c) for c in zip(*(o.all_columns() for o in every), strict=True))
        )

    def all_columns(self) -> tuple[Array, ...]:
        return self.steps, self.values, self.stamps, self.seqs, self.places

    def in_history_order(self, by_seq_and_place: bool = False) -> Candidates:
        """Sorted into history order; ``by_seq_and_place``: they are in (seq, place) order
        already (then a stable sort by step does, if any is needed).
        """
        steps = self.steps
        if by_seq_and_place:
            if len(steps) < 2 or bool((steps[1:] >= steps[:-1]).all()):
                return self
            return self.take(np.argsort(steps, kind="stable"))
        # Mostly sorted runs (blocks in step order): a stable sort by step is fast, and
        # enough when no two share a step.
        order = np.argsort(steps, kind="stable")
        if len(steps) < 2 or bool((np.diff(steps[order]) > 0).all()):
            return self.take(order)
        return self.take(np.lexsort((self.places, self.seqs, steps)))

    def points(self) -> Points:
        return Points(self.steps, self.values, self.stamps)
