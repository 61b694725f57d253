"""Ranking and duration arithmetic of the run queries."""

from __future__ import annotations

from datetime import timedelta

from simtrack.server.domain.rankings import competition_ranks, duration_stats, nearest_rank


def test_equal_values_share_the_better_rank() -> None:
    assert competition_ranks([9.0, 7.0, 7.0, 5.0, 5.0, 5.0, 1.0]) == [1, 2, 2, 4, 4, 4, 7]
    assert competition_ranks([]) == []


def test_percentiles_by_nearest_rank() -> None:
    seconds = [timedelta(seconds=s) for s in range(1, 21)]  # 1 .. 20 s
    assert nearest_rank(seconds, 0.5) == timedelta(seconds=10)
    assert nearest_rank(seconds, 0.95) == timedelta(seconds=19)
    assert nearest_rank(seconds[:1], 0.95) == timedelta(seconds=1)


def test_duration_stats_of_unsorted_durations() -> None:
    stats = duration_stats([timedelta(seconds=s) for s in (4, 1, 3, 2)])
    assert stats is not None
    assert (stats.count, stats.min, stats.max) == (4, timedelta(seconds=1), timedelta(seconds=4))
    assert stats.mean == timedelta(seconds=2.5) and stats.p50 == timedelta(seconds=2)
    assert duration_stats([]) is None
