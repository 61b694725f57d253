"""Compressed chunk columns: steps, values and timestamps encoded with pcodec, bit-exact.

A column blob is in one of two formats, told apart by its length alone:

* **raw** (every row written before this module): little-endian int64 or float64, so its length
  is a multiple of 8 — including the two elisions, ``b""`` for steps that run ``first_step,
  first_step + 1, ...`` and one float64 for timestamps that are all equal;
* **tagged**: ``tag (1 byte) | CRC-32 of the payload (4 bytes, LE) | payload | pad``, where the
  pad is one zero byte exactly when the blob would otherwise be a multiple of 8 long, and the tag
  says which it is. A tagged blob's length is therefore never a multiple of 8.

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

import struct
import zlib
from typing import Any

import numpy as np
from pcodec import ChunkConfig, ModeSpec, standalone

Array = np.ndarray[Any, Any]
STEP = np.dtype("<i8")
FLOAT = np.dtype("<f8")

# Chosen with ``python -m bench codec``: level 8 (pcodec's default) is within 0.5% of level
# 12's size on the corpus at 2-3x its encoding speed; level 4 encodes up to 1.5x faster but misses
# the 7 B/point target on incompressible noise.
DEFAULT_LEVEL = 8

PCO = 0xA0  # the payload is one pcodec standalone file
PCO_PADDED = 0xA1  # the same, followed by one zero pad byte
_HEADER = struct.Struct("<BI")  # tag, CRC-32 of the payload


def encode_steps(steps: Array, level: int = DEFAULT_LEVEL) -> bytes:
    """``steps`` (int64) as a blob: empty when they run ``steps[0], steps[0] + 1, ...``.

    Any int64 sequence is allowed (decreasing, repeated, the extremes). The elided form decodes
    with ``first_step = steps[0]``, which for consecutive steps is also their minimum.
    """
    steps = np.ascontiguousarray(steps, dtype=STEP)
    # np.diff wraps around in int64 (int64 max then min differ by "1"); the span, in Python
    # integers, rules that out.
    n = len(steps)
    if n <= 1 or (int(steps[-1]) - int(steps[0]) == n - 1 and bool((np.diff(steps) == 1).all())):
        return b""
    return _encode(steps, level)


def decode_steps(blob: bytes, n: int, first_step: int) -> Array:
    """The ``n`` steps in ``blob``; an empty blob stands for ``first_step, first_step + 1, ...``."""
    if not blob:
        # first_step + arange, not arange(first_step, ...): that overflows to float64 near the
        # top of int64, though every step fits.
        return first_step + np.arange(n, dtype=STEP)
    return _decode(blob, n, STEP)


def encode_values(values: Array, level: int = DEFAULT_LEVEL) -> bytes:
    """``values`` (float64, any bit patterns) as a blob."""
    return _encode(np.ascontiguousarray(values, dtype=FLOAT), level)


def decode_values(blob: bytes, n: int) -> Array:
    """The ``n`` values in ``blob``."""
    return _decode(blob, n, FLOAT)


def encode_timestamps(stamps: Array, level: int = DEFAULT_LEVEL) -> bytes:
    """``stamps`` (float64 Unix seconds) as a blob: one raw float64 when they are all equal.

    "Equal" is bitwise, so NaN stamps and ``0.0`` beside ``-0.0`` are kept as they were.
    """
    stamps = np.ascontiguousarray(stamps, dtype=FLOAT)
    bits = stamps.view(np.uint64)
    if len(stamps) and bool((bits == bits[0]).all()):
        return stamps[:1].tobytes()
    return _encode(stamps, level)


def decode_timestamps(blob: bytes, n: int) -> Array:
    """The ``n`` timestamps in ``blob``; a single raw float64 stands for all ``n``."""
    if len(blob) == FLOAT.itemsize and n != 1:
        return np.full(n, np.frombuffer(blob, dtype=FLOAT)[0])
    return _decode(blob, n, FLOAT)


def encode_chunk(
    steps: Array, values: Array, stamps: Array, level: int = DEFAULT_LEVEL
) -> tuple[bytes, bytes, bytes]:
    """A chunk's three column blobs (``steps``, ``vals``, ``ts``); decode with `decode_chunk`."""
    return (
        encode_steps(steps, level),
        encode_values(values, level),
        encode_timestamps(stamps, level),
    )


def decode_chunk(
    n: int, first_step: int, steps: bytes, vals: bytes, ts: bytes
) -> tuple[Array, Array, Array]:
    """A chunk's (steps, values, timestamps), each ``n`` long, from blobs of either format."""
    return decode_steps(steps, n, first_step), decode_values(vals, n), decode_timestamps(ts, n)


def is_tagged(blob: bytes) -> bool:
    """Whether ``blob`` is in the tagged (compressed) format rather than raw."""
    return len(blob) % 8 != 0


def _encode(array: Array, level: int) -> bytes:
    raw = array.tobytes()
    if not len(array):
        return raw
    payload: bytes = standalone.simple_compress(array, ChunkConfig(compression_level=level))
    if array.dtype == FLOAT and len(np.unique(array.view(np.uint64))) * 2 <= len(array):
        # Few distinct values that share no structure pcodec's auto mode sees (a rate of small
        # integers, hits / attempts): its dictionary mode, tried only then, can halve them.
        config = ChunkConfig(compression_level=level, mode_spec=ModeSpec.try_dict())
        payload = min(payload, standalone.simple_compress(array, config), key=len)
    size = _HEADER.size + len(payload)
    if size >= len(raw):
        return raw
    decoded = standalone.simple_decompress(payload)
    if decoded is None or decoded.dtype != array.dtype or decoded.tobytes() != raw:
        return raw  # not bit-exact: a codec bug must cost space, never data
    padded = size % 8 == 0
    header = _HEADER.pack(PCO_PADDED if padded else PCO, zlib.crc32(payload))
    return header + payload + (b"\0" if padded else b"")


def _decode(blob: bytes, n: int, dtype: np.dtype[Any]) -> Array:
    if not is_tagged(blob):
        if len(blob) != n * dtype.itemsize:
            raise ValueError(f"a raw column of {len(blob)} bytes for {n} points")
        return np.frombuffer(blob, dtype=dtype)
    if len(blob) < _HEADER.size + 1:
        raise ValueError(f"a tagged column of only {len(blob)} bytes")
    tag, crc = _HEADER.unpack_from(blob)
    if tag == PCO_PADDED:
        if blob[-1] != 0:
            raise ValueError("a padded column whose pad byte is not zero")
        payload = blob[_HEADER.size : -1]
    elif tag == PCO:
        payload = blob[_HEADER.size :]
    else:
        raise ValueError(f"a column with the unknown format tag {tag:#04x}")
    if zlib.crc32(payload) != crc:
        raise ValueError("a compressed column whose checksum does not match")
    try:
        decoded: Array | None = standalone.simple_decompress(payload)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"a compressed column that does not decode: {exc}") from exc
    if decoded is None or decoded.dtype != dtype or len(decoded) != n:
        raise ValueError(f"a compressed column that is not {n} values of {dtype}")
    return decoded
