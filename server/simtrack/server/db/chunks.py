"""The packed columns of a metric chunk (``metric_chunks.steps``, ``vals``, ``ts``).

Little-endian numpy columns, one entry per point, with the two commonest shapes elided:

* ``steps`` (int64) is empty when the steps run ``first_step, first_step + 1, ...`` — a metric
  logged at every step, the usual case;
* ``vals`` (float64) is always one entry per point;
* ``ts`` (float64 Unix seconds) is a single entry when every point shares one timestamp — a
  batch stamped once, or stamped by the server on arrival.

Why: PostgreSQL's cost of storing a chunk grows with its bytes (out-of-line TOAST pieces and
WAL), and eliding both shapes cuts a typical chunk to a third.

Compacted chunks (``domain/compaction.py``) store their columns compressed (``simtrack/codec.py``);
a compressed blob's length is never a multiple of 8, so both readers here tell the formats
apart per blob and read either.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from simtrack.codec import decode_chunk, decode_chunk_into, decode_steps, is_tagged, step_run

Array = np.ndarray[Any, Any]
STEP = np.dtype("<i8")
FLOAT = np.dtype("<f8")


class StoredChunk(NamedTuple):
    """A ``metric_chunks`` row as history reads it (a plain row: no ORM object per chunk)."""

    seq: int
    first_step: int
    last_step: int
    n: int
    steps: bytes
    vals: bytes
    ts: bytes


_FIRST_STEP, _N, _STEPS, _VALS, _TS = (
    itemgetter(StoredChunk._fields.index(name))
    for name in ("first_step", "n", "steps", "vals", "ts")
)


class PageChunks(NamedTuple):
    """What one statement read for a page of a metric's history (``HistoryReads.page``)."""

    metric_id: str | None  # None: the run has no metric of that name
    points: int  # the metric's points
    chunks: list[StoredChunk]  # those the page needs, by (first_step, seq)
    # False: the chunks read do not tell where the page ends, or the run has staged messages
    # (then the page is read in steps, staged series and all).
    settled: bool
    unread: bool  # chunks starting past the page are left
    # A range's points (asked for a range): those of the chunks lying within it, and the
    # (n, first_step, steps) of the chunks it cuts.
    within: int | None = None
    edges: Sequence[tuple[int, int, bytes]] = ()
    version: int | None = None  # the metric row's version the statement saw (PostgreSQL)
    # The chunks' columns unpacked (`unpack_many`), when read ahead: decoding a compacted
    # chunk's columns is most of what a page costs the server.
    columns: Unpacked | None = None


class ChunkSummary(NamedTuple):
    """A ``metric_chunks`` row without its columns: what a downsampled view needs of a chunk
    that lies within one of its intervals (``vmin_ts`` set: every value finite).
    """

    seq: int
    first_step: int
    last_step: int
    n: int
    vmin: float | None
    vmax: float | None
    vmin_step: int | None
    vmax_step: int | None
    vmin_ts: float | None
    vmax_ts: float | None
    blocks: bytes | None  # per page (``db/blocks.py``): compacted chunks only


class SmallChunk(NamedTuple):
    """A small chunk as compaction chooses them: its seq, size and arrival (None: long ago)."""

    seq: int
    n: int
    written_at: datetime | None


class CompactedChunk(NamedTuple):
    """A chunk compaction writes: columns (compressed or raw) and the summaries of its points."""

    seq: int
    first_step: int
    last_step: int
    n: int
    vmin: float | None
    vmax: float | None
    vmin_step: int | None
    vmax_step: int | None
    vmin_ts: float | None
    vmax_ts: float | None
    blocks: bytes | None
    steps: bytes
    vals: bytes
    ts: bytes


@dataclass(frozen=True, slots=True)
class PackedSteps:
    first: int  # the lowest step
    last: int  # the highest step
    top: int  # where the highest step is: its value is the series' latest
    packed: bytes


def pack_steps(steps: Array) -> PackedSteps:
    """``steps`` (int64, at least one) packed; nothing when they run first, first + 1, ..."""
    n = len(steps)
    first, last = int(steps[0]), int(steps[-1])
    if last - first == n - 1 and (n == 1 or bool((np.diff(steps) == 1).all())):
        return PackedSteps(first, last, n - 1, b"")
    top = int(steps.argmax())
    return PackedSteps(int(steps.min()), int(steps[top]), top, steps.tobytes())


def pack_timestamps(stamps: Array | None, now: float) -> bytes:
    """``stamps`` (float64) packed, one value when they are all equal; None: all ``now``."""
    if stamps is None:
        return struct.pack("<d", now)
    if bool((stamps == stamps[0]).all()):
        return stamps[:1].tobytes()
    return stamps.tobytes()


class Extremes(NamedTuple):
    """A chunk's finite min and max, each with the first point holding it in history order
    (the lowest step, then the first sent): its step, its own value (so -0.0 or 0.0 as stored)
    and, when every value of the chunk is finite, its timestamp. Only then do the summaries
    stand for the chunk's extremes in a downsampled view, which keeps NaN and infinities.
    """

    vmin: float | None
    vmax: float | None
    vmin_step: int | None
    vmax_step: int | None
    vmin_ts: float | None
    vmax_ts: float | None


def extremes(steps: Array, values: Array, stamps: Array) -> Extremes:
    """The `Extremes` of a chunk's points (``stamps``: one per point, or one for all)."""
    finite = np.isfinite(values)
    every = bool(finite.all())
    if not every and not finite.any():
        return Extremes(None, None, None, None, None, None)
    candidates = values if every else values[finite]
    low = first_holding(steps, values, candidates.min())
    high = first_holding(steps, values, candidates.max())
    stamps = np.broadcast_to(stamps, values.shape)
    return Extremes(
        float(values[low]),
        float(values[high]),
        int(steps[low]),
        int(steps[high]),
        float(stamps[low]) if every else None,
        float(stamps[high]) if every else None,
    )


def first_holding(steps: Array, values: Array, value: float) -> int:
    """The index of the first point in history order whose value equals ``value``."""
    hits = np.flatnonzero(values == value)
    return int(hits[steps[hits].argmin()])  # argmin: the first of the lowest step


def unpack_steps(n: int, first_step: int, steps: bytes) -> Array:
    """A chunk's ``n`` steps from its steps column in any form: raw, compressed, or empty
    (contiguous from ``first_step``).
    """
    if steps and not is_tagged(steps):
        return np.frombuffer(steps, dtype=STEP)
    return decode_steps(steps, n, first_step)


def unpack(
    n: int, first_step: int, steps: bytes, vals: bytes, ts: bytes
) -> tuple[Array, Array, Array]:
    """A chunk's (steps, values, timestamps), each ``n`` long, raw or compressed."""
    if is_tagged(steps) or is_tagged(vals) or is_tagged(ts):
        return decode_chunk(n, first_step, steps, vals, ts)
    values = np.frombuffer(vals, dtype=FLOAT)
    stamps = np.frombuffer(ts, dtype=FLOAT)
    if len(values) != n or len(stamps) not in (1, n) or len(steps) not in (0, 8 * n):
        raise ValueError(f"a chunk of {n} points with malformed columns")
    return (
        np.frombuffer(steps, dtype=STEP) if steps else step_run(n, first_step),
        values,
        stamps if len(stamps) == n else np.full(n, stamps[0]),
    )


def compressed(chunk: StoredChunk) -> bool:
    """Whether any of the chunk's columns is compressed (a compacted chunk's usually are)."""
    return is_tagged(chunk.steps) or is_tagged(chunk.vals) or is_tagged(chunk.ts)


class Unpacked(NamedTuple):
    """Chunks' columns concatenated (`unpack_many`), with what their rows tell of them."""

    steps: Array
    values: Array | None  # None: not decoded (asked for without)
    timestamps: Array | None  # likewise; read-only where one_timestamp (one value, n times)
    # The steps run steps[0], steps[0] + 1, ...: every chunk's were elided, each chunk
    # starting where the one before ended (a series logged step by step, compacted or not).
    consecutive: bool
    one_timestamp: bool  # every point's timestamp has the first's bits (each chunk's was one)

    def columns(self) -> tuple[Array, Array, Array]:
        """(steps, values, timestamps), of chunks unpacked with their values."""
        if self.values is None or self.timestamps is None:
            raise ValueError("the chunks were unpacked without their values")
        return self.steps, self.values, self.timestamps


def unpack_many(chunks: Sequence[StoredChunk], values: bool = True) -> Unpacked:
    """The chunks' (steps, values, timestamps), concatenated in the order given; without
    ``values``, where some chunk is compressed, only the steps (a page sent as the chunks
    store them needs nothing else: decoding the values and timestamps is most of a compacted
    page's cost; chunks all raw are not sent so, `stored_parts`).

    The same as unpacking each chunk and concatenating, with a constant number of numpy calls
    for each run of raw chunks whatever its length: a fleet's series is thousands of two-point
    chunks, where a call per chunk costs more than the points. Compressed chunks are large
    (compaction makes them), so decoding them one by one costs little per point; each is
    decoded straight into its place in the columns, but for steps and timestamps their rows
    show to be one run or one value: the run is made once for all the chunks, the one value
    is a read-only view of it (no column of it is written).
    """
    if not any(compressed(c) for c in chunks):
        return _unpack_raw(chunks)  # raw values are their bytes: a page of them sends those
    consecutive = _one_run_of_steps(chunks)
    one_timestamp = _one_timestamp(chunks)
    total = sum(c.n for c in chunks)
    stamped = values and not one_timestamp  # a timestamps column to write
    out = (
        step_run(total, chunks[0].first_step) if consecutive else np.empty(total, STEP),
        np.empty(total if values else 0, dtype=FLOAT),
        np.empty(total if stamped else 0, dtype=FLOAT),
    )
    at = 0
    raw: list[StoredChunk] = []  # a run of raw chunks, unpacked together
    for chunk in [*chunks, None]:
        if chunk is not None and not compressed(chunk):
            raw.append(chunk)
            continue
        if raw:
            unpacked = _unpack_raw(raw, values)
            end = at + len(unpacked.steps)
            if not consecutive:
                out[0][at:end] = unpacked.steps
            if values:
                out[1][at:end] = unpacked.values
            if stamped:
                out[2][at:end] = unpacked.timestamps
            at, raw = end, []
        if chunk is not None:  # decoded straight into its place
            end = at + chunk.n
            place = (
                None if consecutive else out[0][at:end],
                out[1][at:end] if values else None,
                out[2][at:end] if stamped else None,
            )
            decode_chunk_into(chunk.n, chunk.first_step, chunk.steps, chunk.vals, chunk.ts, place)
            at = end
    steps, decoded, stamps = out
    if not values:
        return Unpacked(steps, None, None, consecutive, one_timestamp)
    if one_timestamp:
        stamps = np.broadcast_to(np.frombuffer(chunks[0].ts, dtype=FLOAT)[:1], (total,))
    return Unpacked(steps, decoded, stamps, consecutive, one_timestamp)


def _one_run_of_steps(chunks: Sequence[StoredChunk]) -> bool:
    """Whether every chunk's steps are elided and each starts where the one before ended
    (compressed chunks, a few large ones; `_unpack_raw` tells it of raw ones at once).
    """
    follows = chunks[0].first_step if chunks else 0
    for chunk in chunks:
        if chunk.steps or chunk.first_step != follows:
            return False
        follows += chunk.n
    return True


def _one_timestamp(chunks: Sequence[StoredChunk]) -> bool:
    """Whether every chunk's timestamps are one raw float64, the same bits in all."""
    first = chunks[0].ts if chunks else b""
    return all(len(c.ts) == FLOAT.itemsize and c.ts == first for c in chunks)


def _unpack_raw(chunks: Sequence[StoredChunk], with_values: bool = True) -> Unpacked:
    """`unpack_many` of raw chunks only, vectorized (the columns taken out of the rows by
    C-level maps: a staging move reads thousands of ten-point chunks).
    """
    if not chunks:
        empty = np.empty(0, dtype=FLOAT)
        return Unpacked(np.empty(0, dtype=STEP), empty if with_values else None, empty, True, True)
    count = len(chunks)
    counts = np.fromiter(map(_N, chunks), dtype=np.int64, count=count)
    total = int(counts.sum())
    vals, ts, packed_steps = (list(map(field, chunks)) for field in (_VALS, _TS, _STEPS))
    value_bytes = sum(map(len, vals))
    # Timestamps: each chunk holds n of them, or one that stands for all n.
    stamps = np.frombuffer(b"".join(ts), dtype=FLOAT)
    stamp_bytes = np.fromiter(map(len, ts), dtype=np.int64, count=count)
    # Steps: each chunk holds n of them, or none when they run first_step, first_step + 1, ...
    packed = np.frombuffer(b"".join(packed_steps), dtype=STEP)
    step_bytes = np.fromiter(map(len, packed_steps), dtype=np.int64, count=count)
    stamp_counts, step_counts = stamp_bytes // 8, step_bytes // 8
    malformed = (
        value_bytes != FLOAT.itemsize * total
        or bool(((stamp_counts != 1) & (stamp_counts != counts)).any())
        or bool(((step_counts != 0) & (step_counts != counts)).any())
        or bool(((stamp_bytes | step_bytes) % 8).any())
    )
    if malformed:
        raise ValueError("a chunk with malformed columns")
    kept = np.frombuffer(b"".join(vals), dtype=FLOAT) if with_values else None
    single = stamp_counts == 1  # one timestamp stands for the chunk's points
    bits = stamps.view(np.uint64)
    one_timestamp = bool(single.all()) and bool((bits == bits[0]).all())
    if one_timestamp:
        timestamps = np.broadcast_to(stamps[:1], (total,))
    elif bool((stamp_counts == counts).all()):  # a timestamp per point in every chunk
        timestamps = stamps
    else:
        timestamps = np.repeat(stamps, np.repeat(np.where(single, counts, 1), stamp_counts))
    starts = np.cumsum(counts) - counts
    elided = step_counts == 0
    firsts = np.fromiter(map(_FIRST_STEP, chunks), dtype=STEP, count=count)
    # first_step + offset, computed in int64 (an arange from first_step would go through float).
    if elided.all() and bool((firsts[1:] == firsts[:-1] + counts[:-1]).all()):
        steps = step_run(total, int(firsts[0]))  # one run of steps
        return Unpacked(steps, kept, timestamps, True, one_timestamp)
    steps = np.repeat(firsts, counts) + (np.arange(total, dtype=STEP) - np.repeat(starts, counts))
    if not elided.all():
        stored = np.repeat(~elided, counts)
        steps[stored] = packed
    return Unpacked(steps, kept, timestamps, False, one_timestamp)
