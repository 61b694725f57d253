"""The packed chunk columns: every shape round-trips; the common shapes are elided."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from simtrack.codec import decode_chunk, encode_chunk, is_tagged
from simtrack.server.core.model import MetricKind
from simtrack.server.db.chunks import (
    Extremes,
    StoredChunk,
    compressed,
    extremes,
    pack_steps,
    pack_timestamps,
    unpack,
    unpack_many,
)
from simtrack.server.ingest.items import (
    SMALL_SERIES,
    SeriesChunk,
    pack_series,
    pack_small_series,
)


def _round_trip(steps: list[int], stamps: list[float]) -> tuple[bytes, bytes]:
    step_array = np.array(steps, dtype="<i8")
    values = np.arange(len(steps), dtype="<f8") * 0.5
    stamp_array = np.array(stamps, dtype="<f8")
    packed, packed_stamps = pack_steps(step_array), pack_timestamps(stamp_array, now=0.0)
    assert (packed.first, packed.last) == (min(steps), max(steps))
    assert steps[packed.top] == max(steps)
    got = unpack(len(steps), packed.first, packed.packed, values.tobytes(), packed_stamps)
    assert [a.tolist() for a in got] == [steps, values.tolist(), stamps]
    return packed.packed, packed_stamps


def test_contiguous_steps_and_one_shared_timestamp_are_elided() -> None:
    steps, stamps = _round_trip(list(range(100, 1100)), [7.5] * 1000)
    assert (steps, len(stamps)) == (b"", 8)


def test_a_single_point_is_contiguous() -> None:
    assert _round_trip([42], [1.0]) == (b"", np.array([1.0]).tobytes())


@pytest.mark.parametrize(
    "steps",
    [
        [0, 2, 2, 3],  # the right range and count, but a repeat and a gap
        [3, 2, 1, 0],  # descending
        [0, 1, 3, 4],  # a gap
        [0, 0],
        [5, 6, 7, 9],
        [0, 2, 1, 3],  # the right ends and count, out of order
    ],
)
def test_other_steps_are_kept_point_by_point(steps: list[int]) -> None:
    packed, _ = _round_trip(steps, [float(i) for i in range(len(steps))])
    assert len(packed) == 8 * len(steps)


def test_no_timestamps_means_now_for_every_point() -> None:
    assert unpack(3, 5, b"", bytes(24), pack_timestamps(None, now=9.5))[2].tolist() == [9.5] * 3


def test_varying_timestamps_are_kept_point_by_point() -> None:
    _, stamps = _round_trip([0, 1, 2], [1.0, 2.0, 1.0])  # same first and last, not all equal
    assert len(stamps) == 24


@pytest.mark.parametrize(
    ("n", "steps", "vals", "ts"),
    [
        (2, b"", b"\0" * 8, b"\0" * 8),  # one value short
        (2, b"\0" * 8, b"\0" * 16, b"\0" * 8),  # steps neither elided nor complete
        (2, b"", b"\0" * 16, b"\0" * 24),  # three timestamps for two points
    ],
)
def test_malformed_columns_are_refused(n: int, steps: bytes, vals: bytes, ts: bytes) -> None:
    with pytest.raises(ValueError, match="malformed"):
        unpack(n, 0, steps, vals, ts)
    good = StoredChunk(1, 0, 1, 2, b"", b"\0" * 16, b"\0" * 8)
    with pytest.raises(ValueError, match="malformed"):  # wherever it is among good ones
        unpack_many([good, StoredChunk(2, 0, 1, n, steps, vals, ts), good])


def _random_chunk(rng: np.random.Generator, seq: int) -> StoredChunk:
    n = int(rng.integers(1, 6))
    first = int(rng.integers(-(2**63), 2**63 - 10))
    shape = rng.integers(3)
    if shape == 0:  # contiguous
        steps = first + np.arange(n, dtype="<i8")
    elif shape == 1:  # repeats, gaps, descending
        steps = first + rng.integers(0, 8, n).astype("<i8")
    else:  # the top of int64
        steps = np.full(n, 2**63 - 1, dtype="<i8")
    packed = pack_steps(steps)
    stamps = rng.choice([np.full(n, 1.5), rng.random(n)])
    values = rng.standard_normal(n)
    return StoredChunk(
        seq, packed.first, packed.last, n, packed.packed, values.tobytes(),
        pack_timestamps(stamps, now=0.0),
    )  # fmt: skip


@pytest.mark.parametrize("count", [0, 1, 2, 50, 2_000])
def test_unpacking_many_chunks_equals_unpacking_each(count: int) -> None:
    rng = np.random.default_rng(count)
    chunks = [_random_chunk(rng, seq) for seq in range(count)]
    each = [unpack(c.n, c.first_step, c.steps, c.vals, c.ts) for c in chunks]
    many = unpack_many(chunks)
    for column, got in enumerate(many.columns()):
        expected = np.concatenate([e[column] for e in each]) if each else got[:0]
        assert got.dtype == (expected.dtype if each else got.dtype)
        assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("gap", [0, 1, -1])
def test_a_run_of_contiguous_chunks_unpacks_as_unpacking_each(gap: int) -> None:
    """Batches sent one after another: each chunk's steps follow the last one's (the common
    case, unpacked as one range); a gap or a repeated step in the middle breaks the run.
    """
    rng = np.random.default_rng(7)
    chunks, first = [], 2**40
    for seq in range(40):
        n = int(rng.integers(1, 50))
        steps = first + np.arange(n, dtype="<i8")
        packed = pack_steps(steps)
        assert packed.packed == b""  # elided: contiguous
        stamps = pack_timestamps(rng.random(n), now=0.0)
        chunks.append(
            StoredChunk(seq, packed.first, packed.last, n, b"", rng.random(n).tobytes(), stamps)
        )
        first += n + (gap if seq == 20 else 0)
    each = [unpack(c.n, c.first_step, c.steps, c.vals, c.ts) for c in chunks]
    for column, got in enumerate(unpack_many(chunks).columns()):
        assert got.tobytes() == np.concatenate([e[column] for e in each]).tobytes()


def _compressed_chunk(rng: np.random.Generator, seq: int, n: int) -> StoredChunk:
    """A chunk as compaction stores it: steps ascending with gaps, columns pcodec-encoded."""
    steps = np.cumsum(rng.integers(1, 3, n)).astype("<i8")
    values = np.round(rng.standard_normal(n), 2)
    stamps = 1.7e9 + np.arange(n) * 0.25
    columns = encode_chunk(steps, values, stamps)
    assert all(is_tagged(blob) for blob in columns)  # else this test checks nothing new
    return StoredChunk(seq, int(steps[0]), int(steps[-1]), n, *columns)


def _paged_chunk(rng: np.random.Generator, seq: int, first: int, n: int) -> StoredChunk:
    """A chunk as compaction stores a fleet's series: contiguous steps (elided), one timestamp
    (raw), the values pcodec-encoded in pages of 512 points.
    """
    steps = first + np.arange(n, dtype="<i8")
    columns = encode_chunk(steps, rng.standard_normal(n), np.full(n, 1.7e9), page=512)
    assert columns[0] == b"" and len(columns[2]) == 8 and is_tagged(columns[1])
    return StoredChunk(seq, first, first + n - 1, n, *columns)


def test_compressed_chunks_read_back_bit_for_bit_among_raw_ones() -> None:
    rng = np.random.default_rng(7)
    chunks = [
        _compressed_chunk(rng, 1, 3000),
        *(_random_chunk(rng, seq) for seq in range(2, 40)),
        _compressed_chunk(rng, 40, 1500),
        _random_chunk(rng, 41),
        _paged_chunk(rng, 42, 2**40, 16_384),
        _paged_chunk(rng, 43, 2**40 + 16_384, 1_000),  # a last page of 488
    ]
    each = [unpack(c.n, c.first_step, c.steps, c.vals, c.ts) for c in chunks]
    many = unpack_many(chunks)
    for column, got in enumerate(many.columns()):
        assert got.tobytes() == np.concatenate([e[column] for e in each]).tobytes()
    first = chunks[0]
    steps, values, _ = decode_chunk(first.n, first.first_step, first.steps, first.vals, first.ts)
    assert many[0][: first.n].tobytes() == steps.tobytes()
    assert many.columns()[1][: first.n].tobytes() == values.tobytes()


@pytest.mark.parametrize("seed", range(40))
def test_what_the_rows_tell_of_many_chunks_is_so(seed: int) -> None:
    """A fleet's compacted series (paged chunks, each starting where the last ended, one
    timestamp) unpacks with its steps known consecutive and its timestamps known one, made
    once for all the chunks: the same columns as unpacking each. A gap, a repeated step, stored
    steps, another timestamp or a timestamp per point leave it unknown (False), never wrong.
    """
    rng = np.random.default_rng(seed)
    first = int(rng.choice([0, -(2**40), 2**62]))
    chunks = []
    for seq in range(int(rng.integers(1, 6))):
        n = int(rng.integers(600, 1_500))  # compressible: random values in fewer points are not
        chunk = _paged_chunk(rng, seq, first, n)
        first += n
        change = rng.integers(8)
        if change == 0:  # a gap, or the same step again
            chunk = chunk._replace(first_step=chunk.first_step + 1, last_step=chunk.last_step + 1)
            first += 1
        elif change == 1:  # another timestamp
            chunk = chunk._replace(ts=np.array([1.8e9]).tobytes())
        elif change == 2:  # a timestamp per point
            chunk = chunk._replace(ts=rng.random(n).tobytes())
        elif change == 3:  # stored steps (the same ones)
            steps = chunk.first_step + np.arange(n, dtype="<i8")
            chunk = chunk._replace(steps=steps.tobytes())
        elif change == 4:  # raw values among compressed ones
            chunk = chunk._replace(vals=rng.random(n).tobytes())
        chunks.append(chunk)
    each = [unpack(c.n, c.first_step, c.steps, c.vals, c.ts) for c in chunks]
    many = unpack_many(chunks)
    for column, got in enumerate(many.columns()):
        assert got.tobytes() == np.concatenate([e[column] for e in each]).tobytes()
    steps, _, stamps = many.columns()
    dense = len(steps) < 2 or bool((np.diff(steps) == 1).all())
    equal = bool((stamps.view(np.uint64) == stamps.view(np.uint64)[0]).all())
    assert many.consecutive == (dense and all(not c.steps for c in chunks))
    assert many.one_timestamp == (equal and all(len(c.ts) == 8 for c in chunks))
    bare = unpack_many(chunks, values=False)  # as a page sent as stored is read
    assert bare.steps.tobytes() == steps.tobytes()
    if any(compressed(c) for c in chunks):  # only the steps: the rest is sent as stored
        assert bare.values is None and bare.timestamps is None
    else:  # all raw: not sent as stored, so every column comes (their bytes as read)
        assert bare.columns()[2].tobytes() == stamps.tobytes()
    if many.one_timestamp:  # one value, not a column of it written point by point
        assert stamps.strides == (0,) and not stamps.flags.writeable


@pytest.mark.parametrize("count", [1, 2, 50, 2_000])
def test_what_the_rows_tell_of_raw_chunks_is_so(count: int) -> None:
    """Raw chunks (told vectorized): the same facts as `unpack_many` tells of compressed ones."""
    rng = np.random.default_rng(count)
    for chunks in (
        [_random_chunk(rng, seq) for seq in range(count)],  # any steps, stamps
        _raw_run(rng, count, one_stamp=True),
        _raw_run(rng, count, one_stamp=False),
    ):
        many = unpack_many(chunks)
        steps, _, stamps = many.columns()
        dense = len(steps) < 2 or bool((np.diff(steps) == 1).all())
        equal = bool((stamps.view(np.uint64) == stamps.view(np.uint64)[0]).all())
        assert many.consecutive == (dense and all(not c.steps for c in chunks))
        assert many.one_timestamp == (equal and all(len(c.ts) == 8 for c in chunks))
        if many.one_timestamp:
            assert stamps.strides == (0,) and not stamps.flags.writeable


def _raw_run(rng: np.random.Generator, count: int, one_stamp: bool) -> list[StoredChunk]:
    """Raw chunks one after another, as a fleet's flushes: steps elided, one stamp each."""
    chunks, first = [], 100
    for seq in range(count):
        n = int(rng.integers(1, 12))
        stamp = 1.7e9 if one_stamp else 1.7e9 + seq
        values, stamps = rng.random(n).tobytes(), np.array([stamp]).tobytes()
        chunks.append(StoredChunk(seq, first, first + n - 1, n, b"", values, stamps))
        first += n
    return chunks


def test_extremes_are_the_first_points_in_history_order_holding_them() -> None:
    steps = np.array([5, 3, 9, 3, 7, 3], dtype="<i8")
    values = np.array([1.0, 4.0, -2.0, -2.0, 4.0, 4.0])
    stamps = np.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    # -2.0 at steps 9 and 3: step 3 comes first; 4.0 twice at step 3: the first sent.
    assert extremes(steps, values, stamps) == Extremes(-2.0, 4.0, 3, 3, 13.0, 11.0)
    # One timestamp for all points stands for each.
    assert extremes(steps, values, np.array([7.0])) == Extremes(-2.0, 4.0, 3, 3, 7.0, 7.0)


def test_extremes_skip_non_finite_values_and_then_stand_for_no_point_of_a_view() -> None:
    steps = np.array([1, 2, 3, 4], dtype="<i8")
    values = np.array([np.inf, 0.5, np.nan, -1.5])
    stamps = np.array([10.0, 11.0, 12.0, 13.0])
    assert extremes(steps, values, stamps) == Extremes(-1.5, 0.5, 4, 2, None, None)
    nothing = extremes(steps[:1], np.array([np.nan]), stamps[:1])
    assert nothing == Extremes(None, None, None, None, None, None)


def test_extremes_keep_the_points_own_zero() -> None:
    """-0.0 and 0.0 are equal: the extreme is the first point holding either, bit for bit."""
    steps = np.array([2, 1, 3], dtype="<i8")
    found = extremes(steps, np.array([0.0, -0.0, 1.0]), np.array([5.0]))
    assert found.vmin is not None
    assert (found.vmin_step, math.copysign(1.0, found.vmin)) == (1, -1.0)


def test_ingested_series_carry_their_extreme_steps() -> None:
    chunk = pack_series(
        name="m",
        unit="",
        kind=MetricKind.GAUGE,
        steps=np.array([10, 11, 12, 13], dtype="<i8"),
        values=np.array([np.nan, 2.0, -1.0, 2.0]),
        stamps=None,
        now=1.0,
    )
    assert (chunk.vmin, chunk.vmin_step, chunk.vmax, chunk.vmax_step) == (-1.0, 12, 2.0, 11)


SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 2.5, 2.5]


def _random_series(rng: random.Random, n: int) -> tuple[list[int], list[float], list[float] | None]:
    shape = rng.choice(["consecutive", "shuffled", "repeated", "extreme"])
    first = rng.choice([0, -5, 2**62, 2**63 - 40, -(2**63)])
    steps = list(range(first, first + n))
    if shape == "shuffled":
        rng.shuffle(steps)
    elif shape == "repeated":
        steps = [rng.choice(steps) for _ in steps]
    elif shape == "extreme":
        steps = [rng.choice([-(2**63), 2**63 - 1, 0, 1]) for _ in steps]
    values = [
        rng.choice(SPECIALS) if rng.random() < 0.3 else rng.uniform(-10, 10) for _ in range(n)
    ]
    if rng.random() < 0.05:
        values = [math.nan] * n
    stamps_shape = rng.choice(["none", "same", "each"])
    stamps = None if stamps_shape == "none" else [1.7e9] * n
    if stamps_shape == "each":
        stamps = [1.7e9 + rng.random() for _ in range(n)]
    return steps, values, stamps


def test_small_series_pack_exactly_as_numpy_packs_them() -> None:
    """The fleet's plain-Python path and the numpy path give the same chunk, bit for bit
    (summaries compared with ==, so 0.0 and -0.0 stand for each other as numpy's min has it).
    """
    rng = random.Random(11)
    for case in range(3000):
        n = rng.randint(1, SMALL_SERIES - 1)
        steps, values, stamps = _random_series(rng, n)
        small = pack_small_series(
            name="m", unit="u", kind=MetricKind.COUNTER, steps=steps, values=values,
            stamps=stamps, now=12.5,
        )  # fmt: skip
        big = pack_series(
            name="m",
            unit="u",
            kind=MetricKind.COUNTER,
            steps=np.array(steps, dtype=np.int64),
            values=np.array(values, dtype=np.float64),
            stamps=None if stamps is None else np.array(stamps, dtype=np.float64),
            now=12.5,
        )
        for name in SeriesChunk.__slots__:
            a, b = getattr(small, name), getattr(big, name)
            same = (a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
            assert same and type(a) is type(b), (case, name, a, b, steps, values)
