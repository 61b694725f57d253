"""Compressed chunk columns: steps, values and timestamps encoded with pcodec, bit-exact.

A column blob is in one of two formats, told apart by its length alone:

* **raw** (every row written before this module): little-endian int64 or float64, so its length
  is a multiple of 8 — including the two elisions, ``b""`` for steps that run ``first_step,
  first_step + 1, ...`` and one float64 for timestamps that are all equal;
* **tagged**: ``tag (1 byte) | CRC-32 of the payload (4 bytes, LE) | payload | pad``, where the
  pad is one zero byte exactly when the blob would otherwise be a multiple of 8 long, and the tag
  says which it is. A tagged blob's length is therefore never a multiple of 8.
* **paged** (tagged too, compacted chunks since ``a4c2e9d17b35``): the payload is pcodec's
  wrapped format cut into pages of ``page`` points that decode one by one (a downsampled view
  decodes only the pages an interval cuts, ``db/pages.py``): ``u32 head length | head (pcodec
  header and chunk meta) | u32 page points | u32 pages | (u32 length, u32 CRC-32) per page |
  pages``; the blob's CRC covers everything but the pages, each of which has its own.

Why the length, not new columns: old rows stay readable with no migration and no second set of
columns, and no raw blob can ever be mistaken for a tagged one whatever its bytes (a raw blob's
length is ``0 mod 8``, a tagged blob's never is), so the decoder never guesses from content.
A blob that is neither (a truncated raw column, an unknown tag, a bad checksum, a payload that
decodes to the wrong type or count) raises ValueError. The CRC is there because pcodec ignores
trailing bytes and has no checksum of its own: without it, a damaged payload could decode to
plausible wrong numbers.

The encoder keeps the elisions (they stay raw: an empty blob, or 8 bytes), falls back to raw
when compression does not make the column smaller, and decodes what it encoded before
returning it, storing raw if that is not bit-identical: a codec bug then costs space, never data.
pcodec maps floats to integers bijectively, so NaN payloads, signs, ±Inf, -0.0 and subnormals
come back bit for bit; the tests hold it to that.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from typing import Any

import numpy as np
from pcodec import ChunkConfig, ModeSpec, PagingSpec, standalone, wrapped

Array = np.ndarray[Any, Any]
STEP = np.dtype("<i8")
FLOAT = np.dtype("<f8")

# Chosen with ``python -m bench codec``: level 8 (pcodec's default) is within 0.5% of level
# 12's size on the corpus at 2-3x its encoding speed; level 4 encodes up to 1.5x faster but misses
# the 7 B/point target on incompressible noise.
DEFAULT_LEVEL = 8

PCO = 0xA0  # the payload is one pcodec standalone file
PCO_PADDED = 0xA1  # the same, followed by one zero pad byte
PAGED = 0xA2  # the payload is pcodec's wrapped format in pages (see above)
PAGED_PADDED = 0xA3
_HEADER = struct.Struct("<BI")  # tag, CRC-32 of the payload
_PAGED_HEAD = struct.Struct("<I")  # the head's length
_PAGING = struct.Struct("<II")  # page points, pages; then (length, CRC) per page
_PCO_TYPES = {STEP: "i64", FLOAT: "f64"}


def encode_steps(steps: Array, level: int = DEFAULT_LEVEL, page: int | None = None) -> bytes:
    """``steps`` (int64) as a blob: empty when they run ``steps[0], steps[0] + 1, ...``.

    Any int64 sequence is allowed (decreasing, repeated, the extremes). The elided form decodes
    with ``first_step = steps[0]``, which for consecutive steps is also their minimum.
    """
    steps = np.ascontiguousarray(steps, dtype=STEP)
    if consecutive(steps):
        return b""
    return _encode(steps, level, page)


def consecutive(steps: Array) -> bool:
    """Whether ``steps`` (int64) run ``steps[0], steps[0] + 1, ...`` (true of none or one)."""
    n = len(steps)
    # np.diff wraps around in int64 (int64 max then min differ by "1"); the span, in Python
    # integers, rules that out.
    return n <= 1 or (int(steps[-1]) - int(steps[0]) == n - 1 and bool((np.diff(steps) == 1).all()))


def decode_steps(blob: bytes, n: int, first_step: int) -> Array:
    """The ``n`` steps in ``blob``; an empty blob stands for ``first_step, first_step + 1, ...``."""
    return _decode(blob, n, STEP) if blob else step_run(n, first_step)


def step_run(n: int, first_step: int) -> Array:
    """``first_step, first_step + 1, ...``, ``n`` of them (what an empty steps blob stands for).

    first_step + arange, not arange(first_step, ...): that overflows to float64 near the top of
    int64, though every step fits. Added in place: one array made, not two.
    """
    steps = np.arange(n, dtype=STEP)
    steps += first_step
    return steps


def encode_values(values: Array, level: int = DEFAULT_LEVEL, page: int | None = None) -> bytes:
    """``values`` (float64, any bit patterns) as a blob; in pages of ``page`` points if given."""
    return _encode(np.ascontiguousarray(values, dtype=FLOAT), level, page)


def decode_values(blob: bytes, n: int) -> Array:
    """The ``n`` values in ``blob``."""
    return _decode(blob, n, FLOAT)


def encode_timestamps(stamps: Array, level: int = DEFAULT_LEVEL, page: int | None = None) -> bytes:
    """``stamps`` (float64 Unix seconds) as a blob: one raw float64 when they are all equal.

    "Equal" is bitwise, so NaN stamps and ``0.0`` beside ``-0.0`` are kept as they were.
    """
    stamps = np.ascontiguousarray(stamps, dtype=FLOAT)
    if len(stamps) and all_equal(stamps):
        return stamps[:1].tobytes()
    return _encode(stamps, level, page)


def all_equal(column: Array) -> bool:
    """Whether every value of a non-empty float64 ``column`` has the first one's bits."""
    bits = column.view(np.uint64)
    return bool((bits == bits[0]).all())


def decode_timestamps(blob: bytes, n: int) -> Array:
    """The ``n`` timestamps in ``blob``; a single raw float64 stands for all ``n``."""
    if len(blob) == FLOAT.itemsize and n != 1:
        return np.full(n, np.frombuffer(blob, dtype=FLOAT)[0])
    return _decode(blob, n, FLOAT)


def encode_chunk(
    steps: Array,
    values: Array,
    stamps: Array,
    level: int = DEFAULT_LEVEL,
    page: int | None = None,
) -> tuple[bytes, bytes, bytes]:
    """A chunk's three column blobs (``steps``, ``vals``, ``ts``), compressed ones in pages of
    ``page`` points if given; decode with `decode_chunk`.
    """
    return (
        encode_steps(steps, level, page),
        encode_values(values, level, page),
        encode_timestamps(stamps, level, page),
    )


def decode_chunk(
    n: int, first_step: int, steps: bytes, vals: bytes, ts: bytes
) -> tuple[Array, Array, Array]:
    """A chunk's (steps, values, timestamps), each ``n`` long, from blobs of either format."""
    return decode_steps(steps, n, first_step), decode_values(vals, n), decode_timestamps(ts, n)


def decode_chunk_into(
    n: int,
    first_step: int,
    steps: bytes,
    vals: bytes,
    ts: bytes,
    out: tuple[Array | None, Array | None, Array | None],
) -> None:
    """`decode_chunk` into ``out`` (steps, values, timestamps: each ``n`` long), where a page
    of history gathers its chunks' points: a paged column is decoded in place, any other
    copied there; a column whose ``out`` is None is left (its caller fills it at once).
    """
    decode_part_into(n, first_step, steps, vals, ts, 0, out)


def decode_part_into(
    n: int,
    first_step: int,
    steps: bytes,
    vals: bytes,
    ts: bytes,
    skip: int,
    out: tuple[Array | None, Array | None, Array | None],
) -> None:
    """Points ``skip`` to ``skip + len(out)`` of a chunk of ``n`` (`decode_chunk`'s blobs)
    into ``out`` (steps, values, timestamps, as long as each other; None: that column is
    left): of a paged column, only the pages holding them are decoded. A part beyond the
    chunk raises ValueError.
    """
    out_steps, out_values, out_stamps = out
    take = next((len(column) for column in out if column is not None), 0)
    if skip < 0 or skip + take > n:
        raise ValueError(f"points {skip} to {skip + take} of a chunk of {n}")
    if out_steps is not None:
        if steps:
            _decode_part_into(steps, n, STEP, skip, out_steps)
        else:  # first_step + arange, as decode_steps (added in place: one array made)
            np.add(np.arange(skip, skip + take, dtype=STEP), first_step, out=out_steps)
    if out_values is not None:
        _decode_part_into(vals, n, FLOAT, skip, out_values)
    if out_stamps is not None:
        if len(ts) == FLOAT.itemsize and n != 1:  # one for all, as decode_timestamps
            out_stamps[:] = np.frombuffer(ts, dtype=FLOAT)[0]
        else:
            _decode_part_into(ts, n, FLOAT, skip, out_stamps)


def _decode_part_into(blob: bytes, n: int, dtype: np.dtype[Any], skip: int, out: Array) -> None:
    if is_paged(blob):
        Paged(blob, n, dtype).decode_range_into(skip, out)
    else:
        out[:] = _decode(blob, n, dtype)[skip : skip + len(out)]


def is_tagged(blob: bytes) -> bool:
    """Whether ``blob`` is in the tagged (compressed) format rather than raw."""
    return len(blob) % 8 != 0


def _encode(array: Array, level: int, page: int | None = None) -> bytes:
    raw = array.tobytes()
    if not len(array):
        return raw
    configs = [ChunkConfig(compression_level=level)]
    if array.dtype == FLOAT and len(np.unique(array.view(np.uint64))) * 2 <= len(array):
        # Few distinct values that share no structure pcodec's auto mode sees (a rate of small
        # integers, hits / attempts): its dictionary mode, tried only then, can halve them.
        configs.append(ChunkConfig(compression_level=level, mode_spec=ModeSpec.try_dict()))
    if page is None:
        tag = PCO
        payload: bytes = min((standalone.simple_compress(array, c) for c in configs), key=len)
    else:
        tag = PAGED
        payloads = [_paged(array, c, page) for c in configs]
        payload = min(payloads, key=len)
        if len(payloads) == 2 and len(payloads[1]) <= len(payload) + len(array) // 4:
            # Pages are decoded one by one (views): dictionary mode's decode, up to 4x faster
            # than auto mode's on such data (1.8 against 7.2 us a page of 512), is worth two
            # bits a point.
            payload = payloads[1]
    size = _HEADER.size + len(payload)
    if size >= len(raw):
        return raw
    padded = size % 8 == 0
    crc = zlib.crc32(_paged_index(payload) if tag == PAGED else payload)
    blob = _HEADER.pack(tag + padded, crc) + payload + (b"\0" if padded else b"")
    try:
        decoded = _decode(blob, len(array), array.dtype)
    except ValueError:
        return raw
    if decoded.tobytes() != raw:
        return raw  # not bit-exact: a codec bug must cost space, never data
    return blob


def _paged(array: Array, config: ChunkConfig, page: int) -> bytes:
    """``array`` in pcodec's wrapped format, pages of ``page`` points (the last: the rest)."""
    n = len(array)
    config.paging_spec = PagingSpec.exact_page_sizes([min(page, n - s) for s in range(0, n, page)])
    file = wrapped.FileCompressor()
    chunk = file.chunk_compressor(array, config)
    head: bytes = file.write_header() + chunk.write_meta()
    pages = [chunk.write_page(i) for i in range(len(chunk.n_per_page()))]
    table = b"".join(struct.pack("<II", len(p), zlib.crc32(p)) for p in pages)
    paging = _PAGING.pack(page, len(pages))
    return _PAGED_HEAD.pack(len(head)) + head + paging + table + b"".join(pages)


def _paged_index(payload: bytes | memoryview) -> bytes | memoryview:
    """The part of a paged payload its CRC covers: all but the pages."""
    (head,) = _PAGED_HEAD.unpack_from(payload)
    _, pages = _PAGING.unpack_from(payload, _PAGED_HEAD.size + head)
    return payload[: _PAGED_HEAD.size + head + _PAGING.size + 8 * pages]


def _decode(blob: bytes, n: int, dtype: np.dtype[Any]) -> Array:
    if not is_tagged(blob):
        if len(blob) != n * dtype.itemsize:
            raise ValueError(f"a raw column of {len(blob)} bytes for {n} points")
        return np.frombuffer(blob, dtype=dtype)
    tag, payload = _payload(blob)
    if tag == PAGED:
        return Paged(blob, n, dtype).decode_all()
    if zlib.crc32(payload) != _HEADER.unpack_from(blob)[1]:
        raise ValueError("a compressed column whose checksum does not match")
    try:
        decoded: Array | None = standalone.simple_decompress(payload)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"a compressed column that does not decode: {exc}") from exc
    if decoded is None or decoded.dtype != dtype or len(decoded) != n:
        raise ValueError(f"a compressed column that is not {n} values of {dtype}")
    return decoded


def _payload(blob: bytes) -> tuple[int, bytes]:
    """A tagged blob's tag (PCO or PAGED) and payload."""
    tag, view = _payload_view(blob)
    return tag, bytes(view)


def _payload_view(blob: bytes) -> tuple[int, memoryview]:
    """`_payload`, not copied."""
    if len(blob) < _HEADER.size + 1:
        raise ValueError(f"a tagged column of only {len(blob)} bytes")
    tag = blob[0]
    view = memoryview(blob)
    if tag in (PCO_PADDED, PAGED_PADDED):
        if blob[-1] != 0:
            raise ValueError("a padded column whose pad byte is not zero")
        return tag - 1, view[_HEADER.size : -1]
    if tag in (PCO, PAGED):
        return tag, view[_HEADER.size :]
    raise ValueError(f"a column with the unknown format tag {tag:#04x}")


def is_paged(blob: bytes) -> bool:
    """Whether ``blob`` is a paged column (its pages decode one by one: `Paged`)."""
    return is_tagged(blob) and len(blob) > _HEADER.size and blob[0] in (PAGED, PAGED_PADDED)


class Paged:
    """A paged column (`is_paged`), its index read and checked: decodes a page or all."""

    def __init__(self, blob: bytes, n: int, dtype: np.dtype[Any]) -> None:
        tag, payload = _payload_view(blob)  # not copied: pages are read from it one by one
        if tag != PAGED:
            raise ValueError("not a paged column")
        try:
            (head,) = _PAGED_HEAD.unpack_from(payload)
            at = _PAGED_HEAD.size + head
            self.page_points, pages = _PAGING.unpack_from(payload, at)
            at += _PAGING.size
            table = struct.unpack_from(f"<{2 * pages}I", payload, at)
        except struct.error as exc:
            raise ValueError(f"a paged column with a truncated index: {exc}") from exc
        at += 8 * pages
        if zlib.crc32(payload[:at]) != _HEADER.unpack_from(blob)[1]:
            raise ValueError("a compressed column whose checksum does not match")
        if self.page_points < 1 or pages != -(-n // self.page_points):
            raise ValueError(f"a paged column of {pages} pages for {n} points")
        self.crcs = table[1::2]
        self.starts = list(itertools.accumulate(table[::2], initial=at))
        if self.starts[-1] != len(payload):
            raise ValueError("a paged column whose pages do not fill it")
        self.payload = payload
        self.n = n
        self.dtype = dtype
        try:
            pco_head = bytes(payload[_PAGED_HEAD.size : _PAGED_HEAD.size + head])
            file, read = wrapped.FileDecompressor.new(pco_head)
            self.chunk, _ = file.chunk_decompressor(pco_head[read:], _PCO_TYPES[dtype])
        except (RuntimeError, TypeError, KeyError) as exc:
            raise ValueError(f"a compressed column that does not decode: {exc}") from exc

    def page_count(self) -> int:
        return len(self.crcs)

    def page(self, i: int, out: Array | None = None) -> Array:
        """The points of page ``i`` (into ``out``, as long as the page, if given)."""
        start = i * self.page_points
        size = self.page_points if start + self.page_points <= self.n else self.n - start
        data = self.payload[self.starts[i] : self.starts[i + 1]].tobytes()
        if zlib.crc32(data) != self.crcs[i]:
            raise ValueError("a compressed page whose checksum does not match")
        dst = np.empty(size, dtype=self.dtype) if out is None else out
        try:
            done = self.chunk.read_page_into(data, size, dst)[0].n_processed
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"a compressed page that does not decode: {exc}") from exc
        if done != size:
            raise ValueError(f"a compressed page that is not {size} values")
        return dst

    def decode_all(self) -> Array:
        return self.decode_into(np.empty(self.n, dtype=self.dtype))

    def decode_into(self, out: Array) -> Array:
        """Every point, into ``out`` (``n`` long)."""
        return self.decode_range_into(0, out)

    def decode_range_into(self, start: int, out: Array) -> Array:
        """Points ``start`` to ``start + len(out)``, into ``out``: the pages holding them
        decoded, whole ones in place.
        """
        end, size = start + len(out), self.page_points
        for i in range(start // size, -(-end // size)):
            lo, hi = i * size, min((i + 1) * size, self.n)
            if start <= lo and hi <= end:
                self.page(i, out[lo - start : hi - start])
            else:
                part = slice(max(lo, start), min(hi, end))
                out[part.start - start : part.stop - start] = self.page(i)[
                    part.start - lo : part.stop - lo
                ]
        return out
