"""The chunk codec: bit-exact round trips, old raw rows still readable, damage always detected."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bench.corpus import METRICS, STEPS, TIMESTAMPS, VALUES
from simtrack import codec
from simtrack.server.db.chunks import pack_steps, pack_timestamps

Array = np.ndarray[Any, Any]
I64 = np.iinfo(np.int64)

# Every class of float64 bit pattern, by its bits: zeros, subnormals, normals, infinities, and
# NaNs quiet and signalling, of both signs and with payloads.
SPECIAL_BITS = [
    0x0000000000000000,  # +0.0
    0x8000000000000000,  # -0.0
    0x0000000000000001,  # the smallest subnormal
    0x800FFFFFFFFFFFFF,  # the largest negative subnormal
    0x0010000000000000,  # the smallest normal
    0x7FEFFFFFFFFFFFFF,  # the largest finite
    0xFFEFFFFFFFFFFFFF,  # the most negative finite
    0x7FF0000000000000,  # +Inf
    0xFFF0000000000000,  # -Inf
    0x7FF8000000000000,  # the canonical quiet NaN
    0xFFF8000000000000,  # the quiet NaN with its sign bit set
    0x7FF0000000000001,  # a signalling NaN, the smallest payload
    0x7FF4000000000123,  # a signalling NaN with a payload
    0xFFF7FFFFFFFFFFFF,  # a negative signalling NaN, the largest payload
    0x7FFFFFFFFFFFFFFF,  # a quiet NaN, every payload bit set
    0xFFFFFFFFFFFFFFFF,
]


def _floats(bits: list[int] | Array) -> Array:
    return np.asarray(bits, dtype=np.uint64).view(np.float64)


def _same_bits(a: Array, b: Array) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _round_trip_values(values: Array) -> bytes:
    blob = codec.encode_values(values)
    assert _same_bits(codec.decode_values(blob, len(values)), values)
    return blob


def _round_trip_steps(steps: Array) -> bytes:
    blob = codec.encode_steps(steps)
    first = int(steps[0]) if len(steps) else 0
    assert _same_bits(codec.decode_steps(blob, len(steps), first), steps)
    return blob


def _round_trip_stamps(stamps: Array) -> bytes:
    blob = codec.encode_timestamps(stamps)
    assert _same_bits(codec.decode_timestamps(blob, len(stamps)), stamps)
    return blob


@pytest.mark.parametrize("name", sorted(VALUES))
@pytest.mark.parametrize("size", [1, 7, 1_000, 4_096, 20_000])
def test_every_corpus_series_round_trips_and_shrinks(name: str, size: int) -> None:
    values = VALUES[name](20_000)[:size]
    blob = _round_trip_values(values)
    if size >= 1_000:
        # Even the noise shrinks a little; the rest by far more.
        assert len(blob) < (7.5 if name == "noise" else 7) * size


@pytest.mark.parametrize("make", [*STEPS.values(), *TIMESTAMPS.values()])
def test_corpus_steps_and_timestamps_round_trip(make: Callable[[int], Array]) -> None:
    array = make(5_000)
    for chunk in (array[:1], array[:1_000], array):
        blob = _round_trip_steps(chunk) if chunk.dtype == np.int64 else _round_trip_stamps(chunk)
        assert len(blob) <= chunk.nbytes


def test_the_corpus_pairs_only_known_shapes() -> None:
    assert {m.name for m in METRICS} == set(VALUES)
    assert all(m.steps in STEPS and m.stamps in TIMESTAMPS for m in METRICS)


def test_every_special_float_survives_alone_mixed_and_repeated() -> None:
    special = _floats(SPECIAL_BITS)
    for bits in SPECIAL_BITS:
        _round_trip_values(_floats([bits] * 100))
    _round_trip_values(special)
    tiled = _round_trip_values(np.tile(special, 500))
    assert codec.is_tagged(tiled)  # compressed, not the raw fallback: pcodec itself is exact
    # Specials sprinkled into data pcodec compresses with its float modes (multiples of 0.01).
    currency = VALUES["currency"](4_096).copy()
    rng = np.random.default_rng(3)
    currency[rng.integers(0, len(currency), 200)] = rng.choice(special, 200)
    assert codec.is_tagged(_round_trip_values(currency))
    _round_trip_stamps(currency)


@pytest.mark.parametrize("seed", range(5))
def test_random_bit_patterns_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**64, 3_000, dtype=np.uint64, endpoint=False)
    _round_trip_values(bits.view(np.float64))
    _round_trip_stamps(bits.view(np.float64))
    _round_trip_steps(bits.view(np.int64))
    # Few distinct patterns: the dictionary mode's case.
    _round_trip_values(rng.choice(bits[:20], 3_000).view(np.float64))


def test_few_distinct_values_use_the_dictionary_mode() -> None:
    rate = VALUES["rate"](4_096)  # hits / attempts: ~5.8 B/point in pcodec's auto mode
    assert len(_round_trip_values(rate)) < 4 * len(rate)


@pytest.mark.parametrize(
    "steps",
    [
        [I64.min, I64.max],
        [I64.max, I64.min],  # differ by 1 in wrapping int64 arithmetic: not consecutive
        [I64.max - 2, I64.max - 1, I64.max, I64.max - 3],
        [I64.min + 1, I64.min],
        [5, 3, 4, 1_000_000, -7],  # decreasing and unordered: any int64 sequence is allowed
        [3, 3, 3, 3],
        list(range(I64.max - 999, I64.max)) + [I64.min],
    ],
)
def test_step_extremes_and_orders_round_trip(steps: list[int]) -> None:
    array = np.array(steps, dtype=np.int64)
    assert _round_trip_steps(array) != b""
    assert _round_trip_steps(np.tile(array, 400)) != b""


def test_consecutive_steps_are_elided_like_chunks_does() -> None:
    for steps in ([I64.max], [I64.min, I64.min + 1], list(range(I64.max - 4_095, I64.max + 1))):
        array = np.array(steps, dtype=np.int64)
        assert _round_trip_steps(array) == b"" == pack_steps(array).packed
    assert codec.encode_steps(np.empty(0, dtype=np.int64)) == b""


def test_equal_timestamps_are_one_raw_float_like_chunks_does() -> None:
    stamps = np.full(4_096, 1.75e9 + 0.123)
    assert _round_trip_stamps(stamps) == pack_timestamps(stamps, now=0.0) == stamps[:1].tobytes()
    # Equality is by bits: a NaN column is one value, +0.0 beside -0.0 is not.
    assert len(_round_trip_stamps(_floats([0x7FF4000000000123] * 10))) == 8
    assert len(_round_trip_stamps(np.array([0.0, -0.0] * 500))) != 8


def test_empty_and_single_points() -> None:
    empty = np.empty(0, dtype=np.float64)
    assert _round_trip_values(empty) == b"" == _round_trip_stamps(empty)
    assert _round_trip_values(np.array([2.5])) == np.array([2.5]).tobytes()
    assert codec.decode_steps(b"", 0, first_step=9).tolist() == []


def test_a_huge_chunk_round_trips() -> None:
    rng = np.random.default_rng(4)
    values = np.round(np.cumsum(rng.normal(0, 1, 2_000_000)), 2)
    steps = np.cumsum(rng.integers(1, 4, 2_000_000)).astype(np.int64)
    assert len(_round_trip_values(values)) < 2 * len(values)
    _round_trip_steps(steps)


def test_incompressible_columns_fall_back_to_raw() -> None:
    bits = np.random.default_rng(5).integers(0, 2**63, 10, dtype=np.int64)
    blob = _round_trip_values(bits.view(np.float64))  # too short to pay for a header
    assert blob == bits.tobytes() and not codec.is_tagged(blob)


def test_raw_blobs_of_old_rows_still_decode() -> None:
    values, stamps = VALUES["price"](1_000), TIMESTAMPS["ticks_10hz"](1_000)
    steps = STEPS["irregular"](1_000)
    got = codec.decode_chunk(1_000, 0, steps.tobytes(), values.tobytes(), stamps.tobytes())
    assert [a.tobytes() for a in got] == [steps.tobytes(), values.tobytes(), stamps.tobytes()]
    one_stamp = codec.decode_timestamps(struct.pack("<d", 7.0), 3)
    assert one_stamp.tolist() == [7.0, 7.0, 7.0]
    assert codec.decode_steps(b"", 3, first_step=10).tolist() == [10, 11, 12]


def test_tagged_blobs_are_never_a_multiple_of_8_long_and_raw_ones_always_are() -> None:
    """The format rule that keeps old rows unambiguous, over many payload lengths."""
    rng = np.random.default_rng(6)
    padded = 0
    for n in range(2, 400, 3):
        values = np.round(rng.normal(0, 100, n), 1)
        blob = _round_trip_values(values)
        assert codec.is_tagged(blob) == (len(blob) % 8 != 0)
        if codec.is_tagged(blob) and blob[0] == codec.PCO_PADDED:
            # Padded exactly when the unpadded blob would have been a multiple of 8 long.
            assert (len(blob) - 1) % 8 == 0 and blob[-1] == 0
            padded += 1
        else:
            assert blob[0] == codec.PCO or not codec.is_tagged(blob)
    assert padded  # the padded form was exercised


def test_chunk_helpers_round_trip_all_three_columns() -> None:
    steps, values = STEPS["strided"](4_096), VALUES["loss"](4_096)
    stamps = TIMESTAMPS["batch"](4_096)
    blobs = codec.encode_chunk(steps, values, stamps)
    assert all(codec.is_tagged(b) for b in blobs)
    got = codec.decode_chunk(4_096, int(steps[0]), *blobs)
    assert [a.tobytes() for a in got] == [steps.tobytes(), values.tobytes(), stamps.tobytes()]


def _a_tagged_blob() -> bytes:
    blob = codec.encode_values(VALUES["currency"](2_000))
    assert codec.is_tagged(blob)
    return blob


def test_every_truncation_raises() -> None:
    blob = _a_tagged_blob()
    for length in range(len(blob)):
        with pytest.raises(ValueError):
            codec.decode_values(blob[:length], 2_000)


def test_every_flipped_byte_raises() -> None:
    blob = _a_tagged_blob()
    for index in range(len(blob)):
        damaged = bytearray(blob)
        damaged[index] ^= 0x5A
        with pytest.raises(ValueError):
            codec.decode_values(bytes(damaged), 2_000)


def _tagged(tag: int, payload: bytes) -> bytes:
    blob = struct.pack("<BI", tag, zlib.crc32(payload)) + payload
    return blob + b"\0" if tag == codec.PCO_PADDED else blob


def test_wrong_count_type_or_tag_raises() -> None:
    blob = _a_tagged_blob()
    for n in (0, 1_999, 2_001):
        with pytest.raises(ValueError, match="not"):
            codec.decode_values(blob, n)
    with pytest.raises(ValueError, match="not 2000 values of int64"):
        codec.decode_steps(blob, 2_000, first_step=0)
    with pytest.raises(ValueError, match="unknown format tag"):
        codec.decode_values(b"\x07" + blob[1:], 2_000)
    # A well-formed header around bytes that are not pcodec's.
    with pytest.raises(ValueError, match="does not decode"):
        codec.decode_values(_tagged(codec.PCO, b"not pcodec at all"), 2)
    # A padded blob (valid as such) whose pad byte is not zero.
    payload = blob[5:-1] if blob[0] == codec.PCO_PADDED else blob[5:]
    padded = _tagged(codec.PCO_PADDED, payload)
    assert codec.is_tagged(padded)
    assert _same_bits(codec.decode_values(padded, 2_000), VALUES["currency"](2_000))
    with pytest.raises(ValueError, match="pad byte"):
        codec.decode_values(padded[:-1] + b"\x01", 2_000)
    with pytest.raises(ValueError, match="only"):
        codec.decode_values(b"\xa0\x00\x00", 1)


def test_raw_blobs_of_the_wrong_length_raise() -> None:
    values = np.arange(10, dtype=np.float64)
    with pytest.raises(ValueError, match="raw column"):
        codec.decode_values(values.tobytes(), 11)
    with pytest.raises(ValueError, match="raw column"):
        codec.decode_timestamps(values.tobytes(), 9)
    with pytest.raises(ValueError, match="raw column"):
        codec.decode_steps(values[:4].tobytes(), 5, first_step=0)


def _chunk_shapes(rng: np.random.Generator, n: int) -> list[tuple[Array, Array, Array]]:
    """Columns of ``n`` points in each shape a chunk stores: consecutive or scattered steps,
    smooth or special values, one timestamp or one a point.
    """
    special = _floats(
        np.array(SPECIAL_BITS, dtype=np.uint64)[rng.integers(0, len(SPECIAL_BITS), n)]
    )
    return [
        (
            np.arange(-5, n - 5, dtype="<i8"),
            np.cumsum(rng.normal(size=n)),
            np.full(n, 1.7e9),
        ),
        (
            np.sort(rng.integers(I64.min, I64.max, n, dtype="<i8")),
            special,
            1.7e9 + np.arange(n) * 0.25,
        ),
    ]


@pytest.mark.parametrize("page", [None, 512, 100])
@pytest.mark.parametrize("n", [1, 7, 1_000, 3_000])
def test_a_part_of_a_chunk_decodes_to_those_points_of_the_whole(n: int, page: int | None) -> None:
    """`decode_part_into` (what the client decodes a page sent as stored with) gives points
    skip to skip + take of what `decode_chunk` gives, bit for bit, for raw, compressed and
    paged columns, parts inside one page, across pages, whole, empty and at either end.
    """
    rng = np.random.default_rng(n)
    for steps, values, stamps in _chunk_shapes(rng, n):
        blobs = codec.encode_chunk(steps, values, stamps, page=page)
        raw = (pack_steps(steps).packed, values.tobytes(), pack_timestamps(stamps, 0.0))
        first = int(steps[0])
        for stored in (blobs, raw):
            whole = codec.decode_chunk(n, first, *stored)
            parts = {(0, n), (0, 0), (n, n), (n - 1, n), (0, 1)}  # (first, end)
            for _ in range(20):
                lo, hi = sorted(int(i) for i in rng.integers(0, n + 1, 2))
                parts.add((lo, hi))
            for lo, hi in parts:
                out = (np.empty(hi - lo, "<i8"), np.empty(hi - lo), np.empty(hi - lo))
                codec.decode_part_into(n, first, *stored, lo, out)
                for got, want in zip(out, whole, strict=True):
                    assert got.tobytes() == want[lo:hi].tobytes(), (lo, hi, page)


def test_a_part_beyond_its_chunk_raises() -> None:
    steps, values, stamps = np.arange(10, dtype="<i8"), np.ones(10), np.zeros(10)
    blobs = codec.encode_chunk(steps, values, stamps, page=4)
    for skip, take in ((-1, 2), (9, 2), (0, 11), (11, 0)):
        out = (np.empty(take, "<i8"), np.empty(take), np.empty(take))
        with pytest.raises(ValueError, match="of a chunk of 10"):
            codec.decode_part_into(10, 0, *blobs, skip, out)
