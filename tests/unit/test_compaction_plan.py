"""Compaction's pure parts: which chunks a compaction takes, how it splits them, and that the
history order (so every page key) is the same before and after.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.db.chunks import SmallChunk, StoredChunk, pack_steps, pack_timestamps
from simtrack.server.domain.compaction import (
    MIN_TARGET_POINTS,
    CompactionService,
    Span,
    choose_span,
)
from simtrack.server.domain.rewrite import compact, fill_from, output_bounds, split_bounds
from simtrack.server.domain.series import merge

NOW = datetime(2026, 12, 1, tzinfo=UTC)
OLD, NEW = NOW - timedelta(seconds=10), NOW + timedelta(seconds=1)


def test_the_span_runs_from_the_lowest_small_chunk_to_the_highest_settled_one() -> None:
    small = [SmallChunk(3, 2, OLD), SmallChunk(4, 2, OLD), SmallChunk(7, 2, NEW)]
    span = choose_span(small, NOW)
    assert span is not None and (span.first_seq, span.last_seq, span.oldest) == (3, 4, OLD)
    # The newest settled decides: an unsettled one before it is taken too (a prefix).
    small = [SmallChunk(3, 2, NEW), SmallChunk(4, 2, OLD), SmallChunk(9, 2, NEW)]
    span = choose_span(small, NOW)
    assert span is not None and (span.first_seq, span.last_seq) == (3, 4)


@pytest.mark.parametrize(
    "small",
    [
        [],
        [SmallChunk(3, 2, OLD)],  # one: nothing to merge
        [SmallChunk(3, 2, NEW), SmallChunk(4, 2, NEW)],  # none settled
        [SmallChunk(3, 2, OLD), SmallChunk(4, 2, NEW)],  # settled, but alone
    ],
)
def test_no_span_without_two_small_chunks_to_merge(small: list[SmallChunk]) -> None:
    assert choose_span(small, NOW) is None


def test_a_growing_series_waits_until_its_small_chunks_make_a_chunk_that_is_not_small() -> None:
    """Compacting a few points of a series still written to would make a small chunk again,
    rewritten with the next ones round after round: it waits for 1,000 points, or idleness.
    """
    growing = [SmallChunk(seq, 10, OLD) for seq in range(1, 50)] + [SmallChunk(50, 10, NEW)]
    assert choose_span(growing, NOW, idle_before=OLD - timedelta(seconds=1)) is None
    # Written to no more since before idle_before: its few points are compacted.
    assert choose_span(growing, NOW, idle_before=NEW) is not None
    # Settled small chunks of 1,000 points or more: compacted now, still written to or not.
    enough = [SmallChunk(seq, 10, OLD) for seq in range(1, 101)] + [SmallChunk(101, 10, NEW)]
    span = choose_span(enough, NOW, idle_before=OLD - timedelta(seconds=1))
    assert span is not None and (span.first_seq, span.last_seq, span.points) == (1, 100, 1000)


def test_rows_from_before_arrival_times_count_as_settled_and_a_long_backlog_is_cut() -> None:
    small = [SmallChunk(seq, 400, None) for seq in range(1, 11)]
    span = choose_span(small, NOW, max_points=1000)
    assert span is not None and (span.first_seq, span.last_seq, span.oldest) == (1, 3, None)
    assert span.cut  # settled chunks remain: the compactor goes on with the metric
    whole = choose_span(small, NOW)
    assert whole is not None and (whole.last_seq, whole.cut) == (10, False)


def test_outputs_are_full_chunks_and_the_rest() -> None:
    assert output_bounds(5, 2, rows=9) == [(0, 2), (2, 4), (4, 5)]
    assert output_bounds(4, 2, rows=9) == [(0, 2), (2, 4)]
    assert output_bounds(3, 5, rows=9) == [(0, 3)]
    # Not enough seqs for full chunks: near-equal ones, one per row.
    assert output_bounds(10, 2, rows=3) == split_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]


def test_unfilled_chunks_below_join_the_span_once_they_fill_a_chunk() -> None:
    span = Span(first_seq=50, last_seq=60, points=300, oldest=None)
    # Highest first: two unfilled (1,200 and 1,000 points) over a full one.
    below = [(40, 1200), (30, 1000), (20, 2000), (10, 1500)]
    assert fill_from(span.first_seq, span.points, below, target=2000) == 30
    assert (
        fill_from(span.first_seq, span.points, below[:1], target=2000) == 50
    )  # 1,500 points fill none
    assert (
        fill_from(span.first_seq, span.points, [(20, 2000), (10, 1500)], target=2000) == 50
    )  # full stays
    assert fill_from(span.first_seq, span.points, [], target=2000) == 50


def chunk(seq: int, steps: list[int], values: list[float]) -> StoredChunk:
    packed = pack_steps(np.array(steps, dtype="<i8"))
    stamps = np.array([1.0e9 + seq + i / 8 for i in range(len(steps))])
    return StoredChunk(
        seq, packed.first, packed.last, len(steps), packed.packed,
        np.array(values, dtype="<f8").tobytes(), pack_timestamps(stamps, 0.0),
    )  # fmt: skip


def fleet(count: int, start_seq: int = 1) -> list[StoredChunk]:
    """Two-point chunks whose steps repeat (ties) and go back now and then."""
    rng = np.random.default_rng(count)
    return [
        chunk(seq, [seq // 3, seq // 3 - (seq % 5 == 0)], rng.standard_normal(2).tolist())
        for seq in range(start_seq, start_seq + count)
    ]


def keys_and_points(chunks: list[StoredChunk]) -> tuple[list[tuple[int, int]], bytes]:
    merged = merge(chunks, INT64_MIN, INT64_MAX)
    points = merged.points
    keys = [merged.key(i) for i in range(len(merged))]
    return keys, points.steps.tobytes() + points.decoded().tobytes() + points.times().tobytes()


def test_compaction_keeps_history_order_and_every_key_with_later_chunks_after_it() -> None:
    inputs, later = fleet(3000), fleet(20, start_seq=3001)
    outputs = compact(inputs, 2000)
    # 6,000 points in chunks of up to 2,000: three, on the three highest seqs, in order.
    assert [c.seq for c in outputs] == [2998, 2999, 3000]
    assert [c.n for c in outputs] == [2000, 2000, 2000]
    assert all(a.last_step <= b.first_step for a, b in zip(outputs, outputs[1:], strict=False))
    compacted = [StoredChunk(*(getattr(c, f) for f in StoredChunk._fields)) for c in outputs]
    assert keys_and_points(compacted + later) == keys_and_points(inputs + later)


def test_compaction_keeps_ties_across_an_output_boundary_in_order() -> None:
    # Every point at step 7: the history order is the seq order, across both outputs.
    inputs = [chunk(seq, [7, 7], [float(seq), -float(seq)]) for seq in range(1, 1501)]
    outputs = compact(inputs, 2000)
    assert [c.n for c in outputs] == [2000, 1000]
    compacted = [StoredChunk(*(getattr(c, f) for f in StoredChunk._fields)) for c in outputs]
    assert keys_and_points(compacted) == keys_and_points(inputs)


def test_no_more_output_chunks_than_input_rows() -> None:
    big = chunk(2, list(range(10, 10_010)), [0.5] * 10_000)
    outputs = compact([chunk(1, [0, 1], [1.0, 2.0]), big], 2000)
    assert [(c.seq, c.n) for c in outputs] == [(1, 5001), (2, 5001)]


def test_summaries_skip_non_finite_values_and_name_the_first_step_of_each_extreme() -> None:
    inputs = [
        chunk(1, [5, 6], [np.nan, 3.0]),
        chunk(2, [4, 6], [3.0, -np.inf]),
        chunk(3, [9], [-1]),
    ]
    (out,) = compact(inputs, MIN_TARGET_POINTS)
    assert (out.first_step, out.last_step, out.n) == (4, 9, 5)
    assert (out.vmin, out.vmin_step, out.vmax, out.vmax_step) == (-1.0, 9, 3.0, 4)
    (nothing,) = compact([chunk(1, [1], [np.nan]), chunk(2, [2], [np.inf])], MIN_TARGET_POINTS)
    assert (nothing.vmin, nothing.vmin_step, nothing.vmax, nothing.vmax_step) == (None,) * 4


def test_a_target_that_would_make_small_chunks_again_is_refused() -> None:
    with pytest.raises(ValueError, match="below"):
        CompactionService(None, timedelta(0), target=MIN_TARGET_POINTS - 1)  # type: ignore[arg-type]
