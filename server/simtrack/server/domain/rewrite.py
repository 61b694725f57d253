"""A metric's points rewritten as new chunks: compaction's and staging's output.

The points of the chunks given, in history order (step, seq, place in chunk), cut into chunks
of up to ``target`` points that take the highest of the inputs' seqs in increasing order: the
order of every point among all others, ties included, stays what it was.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from simtrack.codec import encode_chunk
from simtrack.server.db.blocks import PAGE_POINTS, block_summaries
from simtrack.server.db.chunks import (
    CompactedChunk,
    StoredChunk,
    extremes,
    pack_steps,
    pack_timestamps,
)
from simtrack.server.domain.series import history_order


def fill_from(first_seq: int, points: int, below: Sequence[tuple[int, int]], target: int) -> int:
    """Where a span of ``points`` points from ``first_seq`` starts once unfilled chunks below
    it are taken in (``below``: (seq, n) of the chunks under the span, highest first): down
    over the run of them with fewer than ``target`` points, if with the span they fill a
    chunk; else where it started. The series ends up in full ``target``-point chunks, each
    point rewritten a bounded number of times.
    """
    unfilled = list(itertools.takewhile(lambda chunk: chunk[1] < target, below))
    if unfilled and points + sum(n for _, n in unfilled) >= target:
        return unfilled[-1][0]
    return first_seq


def split_bounds(total: int, pieces: int) -> list[tuple[int, int]]:
    """[start, end) of ``pieces`` near-equal consecutive slices of ``total`` points."""
    edges = [total * i // pieces for i in range(pieces + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def output_bounds(total: int, target: int, rows: int) -> list[tuple[int, int]]:
    """[start, end) of the output chunks: full ones of ``target`` points and the rest; or, if
    that takes more chunks than the ``rows`` read (each output needs a seq of theirs),
    ``rows`` near-equal ones (inputs that large were stored that large).
    """
    pieces = math.ceil(total / target)
    if pieces > rows:
        return split_bounds(total, rows)
    return [(start, min(start + target, total)) for start in range(0, total, target)]


def compact(
    chunks: Sequence[StoredChunk], target: int, compress_from: int = 0
) -> list[CompactedChunk]:
    """The chunks' points in history order, as chunks of up to ``target`` points on the
    highest of the chunks' seqs in increasing order (`output_bounds`); those of
    ``compress_from`` points or more compressed with their blocks' summaries, the others
    packed as ingest packs them, without blocks.
    """
    points = history_order(chunks)
    bounds = output_bounds(len(points), target, len(chunks))
    seqs = sorted(c.seq for c in chunks)[len(chunks) - len(bounds) :]
    out = []
    for seq, (start, end) in zip(seqs, bounds, strict=True):
        steps = np.ascontiguousarray(points.steps[start:end])
        values = np.ascontiguousarray(points.decoded()[start:end])
        stamps = np.ascontiguousarray(points.times()[start:end])
        found = extremes(steps, values, stamps)
        blocks = None
        if end - start >= compress_from:
            steps_blob, vals_blob, ts_blob = encode_chunk(steps, values, stamps, page=PAGE_POINTS)
            blocks = block_summaries(steps, values, stamps)
        else:
            steps_blob = pack_steps(steps).packed
            vals_blob, ts_blob = values.tobytes(), pack_timestamps(stamps, 0.0)
        out.append(
            CompactedChunk(
                seq=seq,
                first_step=int(steps[0]),  # sorted: the lowest, as an elided column needs
                last_step=int(steps[-1]),
                n=end - start,
                **found._asdict(),
                blocks=blocks,
                steps=steps_blob,
                vals=vals_blob,
                ts=ts_blob,
            )
        )
    return out
