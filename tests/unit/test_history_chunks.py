"""History reads from packed chunks: ordering, page keys, range counts and downsampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simtrack.codec import encode_steps, is_tagged
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.db.chunks import StoredChunk, pack_steps, pack_timestamps
from simtrack.server.domain.series import Points, merge, range_count
from simtrack.server.domain.views import downsample

Array = np.ndarray[Any, Any]


def chunk(seq: int, steps: list[int], values: list[float], stamp: float = 1.0) -> StoredChunk:
    packed = pack_steps(np.array(steps, dtype="<i8"))
    return StoredChunk(
        seq=seq,
        first_step=packed.first,
        last_step=packed.last,
        n=len(steps),
        steps=packed.packed,
        vals=np.array(values, dtype="<f8").tobytes(),
        ts=pack_timestamps(None, stamp),
    )


def points(steps: list[int], values: list[float]) -> Points:
    return Points(np.array(steps, dtype="<i8"), np.array(values), np.zeros(len(steps)))


def test_merge_orders_by_step_then_seq_then_place_in_the_batch() -> None:
    chunks = [chunk(1, [0, 1, 2], [0.0, 1.0, 2.0]), chunk(2, [2, 1, 2], [20.0, 10.0, 21.0])]
    merged = merge(chunks, INT64_MIN, INT64_MAX)
    assert merged.points.steps.tolist() == [0, 1, 1, 2, 2, 2]
    assert merged.points.decoded().tolist() == [0.0, 1.0, 10.0, 2.0, 20.0, 21.0]
    # Keys: (step, rank among the points of that step).
    assert [merged.key(i) for i in range(len(merged))] == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    after = merge(chunks, INT64_MIN, INT64_MAX, after=(2, 0))
    assert after.points.decoded().tolist() == [20.0, 21.0]
    # A key's rank counts the points of its step left out before: the next key goes on.
    assert [after.key(i) for i in range(len(after))] == [(2, 1), (2, 2)]
    assert merge(chunks, INT64_MIN, INT64_MAX, after=(1, 0)).points.decoded().tolist() == [
        10.0,
        2.0,
        20.0,
        21.0,
    ]
    assert len(merge(chunks, INT64_MIN, INT64_MAX, after=(2, 2))) == 0
    assert merge(chunks, 1, 1).points.decoded().tolist() == [1.0, 10.0]
    assert len(merge([], 0, 10)) == 0


def test_range_count_counts_contiguous_and_packed_steps_in_the_range() -> None:
    contiguous = (1000, 5000, b"")  # steps 5000..5999
    packed = (3, 7, np.array([7, 9000, 8], dtype="<i8").tobytes())
    columns = [contiguous, packed]
    assert range_count(columns, INT64_MIN, INT64_MAX) == 1003
    assert range_count(columns, 5990, 8999) == 10
    assert range_count(columns, 7, 5995) == 2 + 996
    assert range_count(columns, 6000, 6999) == 0
    assert range_count(columns, 5999, 5999) == 1


def test_downsample_keeps_each_intervals_lowest_and_highest_point() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 4.0, 2.0, 8.0, 6.0]
    shown = downsample(points(list(range(8)), values), 4)  # two intervals of four steps
    assert shown.steps.tolist() == [1, 2, 5, 6]
    assert shown.decoded().tolist() == [1.0, 9.0, 2.0, 8.0]


def test_downsample_skips_nan_keeps_inf_and_leaves_small_series_whole() -> None:
    nan, inf = float("nan"), float("inf")
    shown = downsample(points([0, 1, 2, 3, 4, 5], [nan, nan, nan, 1.0, -inf, nan]), 4)
    # First interval (steps 0-2) is only NaN: its first point stands for it.
    assert shown.steps.tolist() == [0, 3, 4]
    assert np.isnan(shown.decoded()[0]) and shown.decoded()[2] == -inf
    small = points([1, 2, 3], [3.0, 2.0, 1.0])
    assert downsample(small, 3) is small


@pytest.mark.parametrize("max_points", [2, 3, 7, 100])
def test_downsample_never_returns_more_than_asked_over_any_step_span(max_points: int) -> None:
    rng = np.random.default_rng(max_points)
    steps = np.sort(rng.integers(INT64_MIN // 2, INT64_MAX // 2, 5000))
    shown = downsample(Points(steps, rng.normal(size=5000), np.zeros(5000)), max_points)
    assert 1 <= len(shown) <= max_points
    assert (np.diff(shown.steps) >= 0).all()


def test_range_count_reads_compressed_step_columns() -> None:
    steps = np.arange(0, 6000, 3, dtype="<i8")  # gaps: the steps are stored, compressed
    blob = encode_steps(steps)
    assert is_tagged(blob)
    columns = [(len(steps), 0, blob), (2, 6000, b"")]
    assert range_count(columns, INT64_MIN, INT64_MAX) == 2002
    assert range_count(columns, 3, 6000) == 1999 + 1
    assert range_count(columns, 1, 2) == 0
