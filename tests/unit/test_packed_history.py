"""The packed GetMetricHistoryResponse equals the one protobuf builds from the same columns,
byte for byte: int64 extremes and negative steps (ten-byte varints), NaN payloads, -0.0,
infinities, empty columns, tokens, counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from simtrack.client import MetricHistory
from simtrack.codec import decode_chunk, encode_chunk
from simtrack.server.api.packed import history_response, stored_history_response, varint, varints
from simtrack.server.db.chunks import StoredChunk
from simtrack.server.domain.series import Points, StoredPart
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support.compaction import ODD_VALUES

EDGES = [0, 1, 127, 128, 16_383, 16_384, 2**31, 2**35 - 1, 2**62, 2**63 - 1, -1, -128, -(2**63)]


def expected(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray, token: str, count: int,
             downsampled: bool) -> tpb.GetMetricHistoryResponse:  # fmt: skip
    return tpb.GetMetricHistoryResponse(
        steps=steps.tolist(),
        values=values.tolist(),
        timestamps=stamps.tolist(),
        next_page_token=token,
        range_count=count,
        downsampled=downsampled,
    )


@pytest.mark.parametrize("seed", range(20))
def test_packed_responses_equal_protobufs_own(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 3000))
    steps = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64, endpoint=True)
    if seed % 2:  # the usual: small, ascending
        steps = np.arange(n, dtype=np.int64) * int(rng.integers(1, 1000))
    steps[: len(EDGES)] = EDGES[: min(n, len(EDGES))]
    values = rng.standard_normal(n)
    values[: len(ODD_VALUES)] = ODD_VALUES[: min(n, len(ODD_VALUES))]
    stamps = 1.7e9 + rng.random(n)
    token = "" if seed % 3 else "tok-é" * seed
    count = int(rng.integers(0, 2**40)) if seed % 4 else 0
    got = history_response(steps, values, stamps, token, count, bool(seed % 5)).message()
    want = expected(steps, values, stamps, token, count, bool(seed % 5))
    assert got.SerializeToString() == want.SerializeToString()
    assert history_response(steps, values, stamps, token, count, bool(seed % 5)).wire == (
        want.SerializeToString()
    )  # sent as they are: protobuf's own bytes
    assert np.asarray(got.values).tobytes() == values.tobytes()  # NaN payloads kept


def test_varints_of_every_length() -> None:
    for value in (
        EDGES + [2 ** (7 * k) - 1 for k in range(1, 10)] + [2 ** (7 * k) for k in range(9)]
    ):
        if not value:
            continue  # proto3 leaves a zero out
        message = tpb.GetMetricHistoryResponse(range_count=value)
        assert message.SerializeToString() == b"\x28" + varints(np.array([value]))
        assert varint(value) == varints(np.array([value]))
    assert varints(np.array([], dtype=np.int64)) == b""


@pytest.mark.parametrize("seed", range(10))
def test_ascending_steps_take_the_blockwise_path_with_the_same_bytes(seed: int) -> None:
    """Ascending steps (every page's) are encoded a block per varint size; the bytes are the
    same as one value at a time (a single value takes the general path) and as protobuf's.
    """
    rng = np.random.default_rng(seed)
    sizes = [2 ** (7 * k) + d for k in range(1, 9) for d in (-1, 0)]  # each size's ends
    pool = np.array(EDGES + sizes, dtype=np.int64)
    drawn = rng.integers(-(2**63), 2**63 - 1, size=500, dtype=np.int64, endpoint=True)
    steps = np.sort(rng.choice(np.concatenate([pool, drawn]), size=int(rng.integers(2, 400))))
    one_by_one = b"".join(varints(steps[i : i + 1]) for i in range(len(steps)))
    assert varints(steps) == one_by_one
    packed = history_response(steps, np.zeros(len(steps)), np.zeros(len(steps)), "", 0, False)
    got = packed.message()
    want = expected(steps, np.zeros(len(steps)), np.zeros(len(steps)), "", 0, False)
    assert got.SerializeToString() == want.SerializeToString()


def little_endian(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray, token: str,
                  count: int, downsampled: bool) -> tpb.GetMetricHistoryResponse:  # fmt: skip
    """COLUMN_ENCODING_LITTLE_ENDIAN's response, by its rules, through protobuf's own code."""
    n = len(steps)
    dense = n > 0 and all(int(b) - int(a) == 1 for a, b in zip(steps, steps[1:], strict=False))
    shared = n > 1 and len({v.tobytes() for v in stamps.astype("<f8")}) == 1
    return tpb.GetMetricHistoryResponse(
        steps_le=b"" if dense else steps.astype("<i8").tobytes(),
        values_le=values.astype("<f8").tobytes(),
        timestamps_le=stamps[: 1 if shared else n].astype("<f8").tobytes(),
        first_step=int(steps[0]) if dense else 0,
        next_page_token=token,
        range_count=count,
        downsampled=downsampled,
    )


@pytest.mark.parametrize("seed", range(16))
def test_little_endian_columns_equal_protobufs_own_and_the_columns(seed: int) -> None:
    """COLUMN_ENCODING_LITTLE_ENDIAN: the columns as their bytes in the ``_le`` fields (the
    repeated ones empty), consecutive steps as first_step, a timestamp every point shares
    once; the wire protobuf's own, and the client reads each column back bit for bit.
    """
    rng = np.random.default_rng(seed)
    n = (0, 1, 2, 5000)[seed % 4] if seed < 8 else int(rng.integers(0, 3000))
    first = int(rng.choice([0, -5, 2**63 - n, -(2**63), 123_456_789]))
    steps = first + np.arange(n, dtype=np.int64)  # consecutive: the usual
    if seed % 3 == 1 and n > 2:  # a gap, a repeat, the extremes
        steps = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64, endpoint=True)
        steps[: len(EDGES)] = EDGES[: min(n, len(EDGES))]
    elif seed % 3 == 2 and n > 2:
        steps[n // 2 :] += 1
    values = rng.standard_normal(n)
    values[: len(ODD_VALUES)] = ODD_VALUES[: min(n, len(ODD_VALUES))]
    stamps = np.full(n, 1.7e9 + seed)  # one flush's: shared
    if seed % 2 and n > 1:
        stamps[-1] = -0.0 if seed % 4 == 1 else 1.7e9  # one differs (-0.0 is not 0.0's bits)
    token, count, downsampled = "tok" * (seed % 3), seed * 1000, bool(seed % 2)
    packed = history_response(steps, values, stamps, token, count, downsampled, little_endian=True)
    want = little_endian(steps, values, stamps, token, count, downsampled)
    assert packed.wire == want.SerializeToString()
    # What the caller knows of the columns (from the chunks' rows) spares the checks only.
    dense = n < 2 or bool((np.diff(steps) == 1).all()) and int(steps[-1]) - first == n - 1
    shared = n < 2 or len(np.unique(stamps.view(np.uint64))) == 1
    told = history_response(
        *(steps, values, stamps, token, count, downsampled, True),
        known_consecutive=dense,
        known_one_timestamp=shared,
    )
    assert told.wire == packed.wire
    got = packed.message()
    assert not got.steps and not got.values and not got.timestamps
    read = MetricHistory.of_page(got)
    assert np.array_equal(read.steps, steps)
    assert read.values.tobytes() == values.tobytes()  # NaN payloads kept
    assert read.timestamps.tobytes() == stamps.tobytes()
    assert (read.range_count, read.downsampled) == (count, downsampled)


def test_little_endian_elides_only_what_it_may() -> None:
    """Consecutive steps and a shared timestamp are sent once; anything else in full."""

    def sent(steps: list[int], stamps: list[float]) -> tpb.GetMetricHistoryResponse:
        column = np.array(steps, dtype=np.int64)
        return history_response(
            column, np.zeros(len(steps)), np.array(stamps), "", 0, False, True
        ).message()

    dense = sent([7, 8, 9], [5.0, 5.0, 5.0])
    assert (dense.steps_le, dense.first_step) == (b"", 7)
    assert dense.timestamps_le == np.float64(5.0).tobytes()
    apart = sent([0, 1], [1.0, 2.0])
    assert (apart.steps_le, apart.first_step, len(apart.timestamps_le)) == (b"", 0, 16)
    for steps in ([0, 2, 3], [3, 2, 1], [1, 1, 2], [2**63 - 1, -(2**63)]):  # int64 wraps: not +1
        assert len(sent(steps, [0.0] * len(steps)).steps_le) == 8 * len(steps)
    nan_bits = [float(np.nan), float(-np.float64(np.nan))]  # NaNs of other bits: not shared
    assert len(sent([0, 1], nan_bits).timestamps_le) == 16
    one = sent([-3], [9.0])
    assert (one.steps_le, one.first_step, len(one.timestamps_le)) == (b"", -3, 8)
    assert sent([], []).SerializeToString() == b""


def test_little_endian_columns_of_other_dtypes_are_converted() -> None:
    """Columns the server holds as other dtypes (int32 steps, float32) go as int64/float64."""
    steps = np.array([3, 1, 2], dtype=np.int32)
    got = history_response(
        steps, np.array([1.5, 2, 3], dtype=np.float32), np.arange(3.0)[::-1], "", 3, False, True
    ).message()
    assert np.frombuffer(got.steps_le, dtype="<i8").tolist() == [3, 1, 2]
    assert np.frombuffer(got.values_le, dtype="<f8").tolist() == [1.5, 2.0, 3.0]
    assert np.frombuffer(got.timestamps_le, dtype="<f8").tolist() == [2.0, 1.0, 0.0]


@pytest.mark.parametrize("seed", range(12))
def test_stored_parts_are_what_protobuf_serializes(seed: int) -> None:
    """COLUMN_ENCODING_STORED: each part's fields and blobs, as protobuf writes them (negative
    and extreme first steps, empty blobs, parts starting at 0), and the client decodes them to
    the chunks' points.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for seq in range(int(rng.integers(0, 4))):
        n = int(rng.integers(1, 2_000))
        first = int(rng.choice(EDGES))
        steps = first + np.arange(n, dtype="<i8") if seq % 2 else np.sort(rng.integers(-9, 9, n))
        values = ODD_VALUES[rng.integers(0, len(ODD_VALUES), n)]
        stamps = np.full(n, 1.7e9) if seq % 3 else rng.normal(size=n)
        blobs = encode_chunk(steps, values, stamps, page=512 if seq % 2 else None)
        chunk = StoredChunk(seq, int(steps.min()), int(steps.max()), n, *blobs)
        skip = int(rng.integers(0, n))
        parts.append(StoredPart(chunk._replace(first_step=int(steps[0])), skip, n - skip))
    token, count, downsampled = ("next" if seed % 2 else ""), seed * 1_000, bool(seed % 3)
    empty = Points(np.empty(0, "<i8"), np.empty(0), np.empty(0))
    packed = stored_history_response(parts, empty, token, count, downsampled)
    want = tpb.GetMetricHistoryResponse(
        stored=[
            tpb.StoredColumns(
                count=c.n,
                first_step=c.first_step,
                steps=c.steps,
                values=c.vals,
                timestamps=c.ts,
                skip=skip,
                take=take,
            )
            for c, skip, take in parts
        ],
        next_page_token=token,
        range_count=count,
        downsampled=downsampled,
    )
    assert packed.wire == want.SerializeToString()
    read = MetricHistory.of_page(packed.message())
    whole = [decode_chunk(c.n, c.first_step, c.steps, c.vals, c.ts) for c, _, _ in parts]
    for column, name in enumerate(("steps", "values", "timestamps")):
        expected_column = [
            w[column][skip : skip + take] for w, (_, skip, take) in zip(whole, parts, strict=True)
        ]
        joined = np.concatenate(expected_column) if parts else np.empty(0)
        assert getattr(read, name).tobytes() == joined.astype(getattr(read, name).dtype).tobytes()


@pytest.mark.parametrize("consecutive", [True, False])
@pytest.mark.parametrize("one_timestamp", [True, False])
def test_points_not_stored_as_parts_go_as_one_raw_part(
    consecutive: bool, one_timestamp: bool
) -> None:
    rng = np.random.default_rng(3)
    n = 1_000
    steps = (-5 if consecutive else np.cumsum(rng.integers(1, 4, n))) + np.arange(n, dtype="<i8")
    values = ODD_VALUES[rng.integers(0, len(ODD_VALUES), n)]
    stamps = np.full(n, 1.7e9) if one_timestamp else 1.7e9 + rng.normal(size=n)
    packed = stored_history_response(None, Points(steps, values, stamps), "", n, False)
    (part,) = packed.message().stored
    assert (part.count, part.skip, part.take, part.first_step) == (n, 0, n, steps[0])
    assert (part.steps == b"") == consecutive and (len(part.timestamps) == 8) == one_timestamp
    read = MetricHistory.of_page(packed.message())
    assert read.steps.tobytes() == steps.tobytes()
    assert (
        read.values.tobytes() == values.tobytes() and read.timestamps.tobytes() == stamps.tobytes()
    )
    assert (
        stored_history_response(None, Points(steps[:0], values[:0], stamps[:0]), "", 0, False).wire
        == b""
    )
