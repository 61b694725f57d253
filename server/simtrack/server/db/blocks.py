"""Block summaries of a compacted chunk (``metric_chunks.blocks``) and its columns read by page.

A compacted chunk's points are in history order and its compressed columns are paged
(``simtrack/codec.py``, pages of ``PAGE_POINTS``). Its ``blocks`` column summarises each block of
its points (``SHORT_POINTS`` or ``FULL_POINTS``: pages hold whole ones) as one `BLOCK`
record: the block's step range, and its min and max point (value, step, timestamp, place in
the chunk; the first holding each in history order, -Inf and Inf included), NaN as both
values when a NaN is among its points.

A downsampled view (``domain/views.py``) answers a block lying within one of its intervals
from its record, and decodes only the pages holding blocks an interval boundary or the range
cuts: a 1,000-point view of a 1M-point compacted series looks at some 500 blocks of 128
points, not at 62 chunks of 16,384.

Stored form: one flag byte, then the records packed. ``SHORT``: the chunk's steps run
``first_step, first_step + 1, ...`` and one timestamp stands for all (a fleet's series): that
timestamp, then records of only the values and places (24 bytes; the rest follows) of
``SHORT_POINTS`` each; else every field (72 bytes) of ``FULL_POINTS`` each.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from simtrack.codec import (
    FLOAT,
    STEP,
    Paged,
    decode_steps,
    decode_values,
    is_paged,
    is_tagged,
)

Array = np.ndarray[Any, Any]

PAGE_POINTS = 512
# Points a block: pages hold whole blocks. The fewer, the fewer points a view reads about each
# interval boundary (a block's worth) and the more bytes of records a point: 0.19 in the short
# form, 0.28 in the full one.
SHORT_POINTS = 128
FULL_POINTS = 256
BLOCK = np.dtype(
    [
        ("vmin", "<f8"),  # NaN: the block holds a NaN (its points must be read)
        ("vmax", "<f8"),
        ("vmin_at", "<u4"),  # the point's place in the chunk
        ("vmax_at", "<u4"),
        ("first_step", "<i8"),
        ("last_step", "<i8"),
        ("vmin_step", "<i8"),
        ("vmax_step", "<i8"),
        ("vmin_ts", "<f8"),
        ("vmax_ts", "<f8"),
    ]
)
BLOCK_FIELDS: tuple[str, ...] = BLOCK.names or ()
SHORT_FIELDS = ("vmin", "vmax", "vmin_at", "vmax_at")
SHORT = np.dtype([(name, BLOCK[name]) for name in SHORT_FIELDS])
FULL_FLAG, SHORT_FLAG = b"F", b"S"


def block_summaries(steps: Array, values: Array, stamps: Array) -> bytes:
    """The stored `BLOCK` records of a chunk's points (in history order)."""
    n = len(values)
    stamps = np.broadcast_to(stamps, values.shape)
    # The span in Python integers: np.diff and int64 subtraction wrap around at the extremes.
    elided = int(steps[-1]) - int(steps[0]) == n - 1 and bool((np.diff(steps) == 1).all())
    one_stamp = bool((stamps.view(np.uint64) == stamps[:1].view(np.uint64)).all())
    short = elided and one_stamp
    size = SHORT_POINTS if short else FULL_POINTS
    starts = np.arange(0, n, size)
    # Padded with copies of the last point: they change no block's min or max, nor which
    # point holds it first.
    padded = np.concatenate((values, np.repeat(values[-1:], -n % size))).reshape(-1, size)
    low, high = padded.min(axis=1), padded.max(axis=1)  # NaN if the block holds one
    low_at = starts + (padded == low[:, None]).argmax(axis=1)
    high_at = starts + (padded == high[:, None]).argmax(axis=1)
    nan = np.isnan(low) | np.isnan(high)
    records = np.zeros(len(starts), dtype=SHORT if short else BLOCK)
    records["vmin"] = np.where(nan, np.nan, values[low_at])
    records["vmax"] = np.where(nan, np.nan, values[high_at])
    records["vmin_at"], records["vmax_at"] = low_at, high_at
    if not short:
        records["first_step"] = steps[starts]
        records["last_step"] = steps[np.minimum(starts + size, n) - 1]
        records["vmin_step"], records["vmax_step"] = steps[low_at], steps[high_at]
        records["vmin_ts"], records["vmax_ts"] = stamps[low_at], stamps[high_at]
    if short:
        return SHORT_FLAG + stamps[:1].tobytes() + records.tobytes()
    return FULL_FLAG + records.tobytes()


def read_blocks(blob: bytes, n: int, first_step: int) -> Array:
    """The `BLOCK` records of a chunk of ``n`` points from its ``blocks`` column."""
    fields = read_many([(blob, n, first_step)]).fields
    records = np.empty(len(fields["vmin"]), dtype=BLOCK)
    for name, column in fields.items():
        records[name] = column
    return records


class Blocks(NamedTuple):
    """Block summaries of several chunks, field by field (``fields``: the `BLOCK` fields, a
    column each), with each block's chunk (index in the list given), place of its first point
    in the chunk, and number of points.
    """

    fields: dict[str, Array]
    owner: Array
    start: Array
    length: Array


def read_many(chunks: Sequence[tuple[bytes, int, int]]) -> Blocks:
    """The block summaries of chunks given as (blocks column, n, first_step), concatenated;
    vectorized, and in columns: a view reads the blocks of every chunk of a range (as one
    array of records, the copies into and out of 72-byte records took a third of a view).
    """
    packed: dict[bool, list[memoryview]] = {True: [], False: []}
    counts: dict[bool, list[int]] = {True: [], False: []}
    of: dict[bool, list[int]] = {True: [], False: []}
    stamps: list[float] = []
    for i, (blob, n, _) in enumerate(chunks):
        short = blob[:1] == SHORT_FLAG
        dtype, size = (SHORT, SHORT_POINTS) if short else (BLOCK, FULL_POINTS)
        view = memoryview(blob)[1 + FLOAT.itemsize if short else 1 :]
        count = -(-n // size)
        if blob[:1] not in (SHORT_FLAG, FULL_FLAG) or len(view) != count * dtype.itemsize:
            raise ValueError(f"a blocks column of {len(blob)} bytes for {n} points")
        packed[short].append(view)
        counts[short].append(count)
        of[short].append(i)
        if short:
            stamps.append(struct.unpack_from("<d", blob, 1)[0])
    parts = []
    for short in (True, False):
        if not packed[short]:
            continue
        each = np.array(counts[short])
        owner = np.repeat(of[short], each)
        size = SHORT_POINTS if short else FULL_POINTS
        start = (np.arange(each.sum()) - np.repeat(np.cumsum(each) - each, each)) * size
        points = np.array([chunks[i][1] for i in of[short]], dtype=STEP).repeat(each)
        length = np.minimum(points - start, size)
        got = np.frombuffer(b"".join(packed[short]), dtype=SHORT if short else BLOCK)
        fields = {name: got[name] for name in (SHORT_FIELDS if short else BLOCK_FIELDS)}
        if short:
            first = np.array([chunks[i][2] for i in of[short]], dtype=STEP).repeat(each)
            fields["first_step"] = first + start
            fields["last_step"] = fields["first_step"] + (length - 1)
            fields["vmin_step"] = first + fields["vmin_at"]
            fields["vmax_step"] = first + fields["vmax_at"]
            fields["vmin_ts"] = fields["vmax_ts"] = np.repeat(np.array(stamps, FLOAT), each)
        parts.append(Blocks(fields, owner, start, length))
    if not parts:
        nothing = np.empty(0, dtype=np.int64)
        empty = {name: np.empty(0, dtype=BLOCK[name]) for name in BLOCK_FIELDS}
        return Blocks(empty, nothing, nothing, nothing)
    if len(parts) == 1:
        return parts[0]
    one, other = parts
    fields = {name: np.concatenate((one.fields[name], other.fields[name])) for name in BLOCK_FIELDS}
    return Blocks(fields, *(np.concatenate(pair) for pair in zip(one[1:], other[1:], strict=True)))


def read_pages(
    columns: Sequence[tuple[bytes, int, int]],
    dtype: np.dtype[Any],
    wanted: Sequence[tuple[int, int]],
) -> Array:
    """Pages of chunks' columns, given as (blob, n, first_step): one row of ``PAGE_POINTS``
    per (column, page) of ``wanted`` (a last page's tail left unset). A paged blob decodes
    only those pages; any other decodes whole (raw: no copy).
    """
    out = np.empty((len(wanted), PAGE_POINTS), dtype=dtype)
    current = -1
    paged: Paged | None = None
    whole: Array | None = None
    n = 0
    for row, (i, page) in enumerate(wanted):
        if i != current:
            current = i
            blob, n, first_step = columns[i]
            paged = Paged(blob, n, dtype) if is_paged(blob) else None
            if paged is not None and paged.page_points != PAGE_POINTS:
                paged = None
            whole = None if paged is not None else _whole(blob, n, dtype, first_step)
        start = page * PAGE_POINTS
        size = min(PAGE_POINTS, n - start)
        if paged is not None:
            paged.page(page, out[row, :size])
        elif whole is not None:
            out[row, :size] = whole[start : start + size]
    return out


def _whole(blob: bytes, n: int, dtype: np.dtype[Any], first_step: int) -> Array:
    if dtype == STEP:
        return (
            decode_steps(blob, n, first_step)
            if is_tagged(blob) or not blob
            else np.frombuffer(blob, dtype=STEP)
        )
    if len(blob) == FLOAT.itemsize and n != 1:  # one for all
        return np.full(n, np.frombuffer(blob, dtype=FLOAT)[0])
    return decode_values(blob, n)
