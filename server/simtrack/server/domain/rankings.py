"""Questions across runs: which runs of a scenario did best by a metric, and how runs fare.

A leaderboard ranks runs by a summary value their metric keeps current (latest, min or max),
so it reads one row per run, never the points.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import timedelta

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import parse_filter
from simtrack.server.core.model import (
    RUN_FINAL,
    MetricAggregate,
    RankOrder,
    RunStatus,
    optional_id,
    require_name,
)
from simtrack.server.db.models import Ranked
from simtrack.server.domain.experiments import load_experiment
from simtrack.server.domain.ports import UnitOfWorkFactory
from simtrack.server.domain.runs import RUN_LISTING
from simtrack.server.scenario_catalogue import ScenarioCatalogue

LEADERBOARD_DEFAULT = 10
LEADERBOARD_MAX = 1000


@dataclass(frozen=True)
class Entry:
    rank: int  # competition ranking: equal values share a rank (1, 2, 2, 4)
    ranked: Ranked


@dataclass(frozen=True)
class Leaderboard:
    entries: list[Entry]
    ranked_runs: int


@dataclass(frozen=True)
class DurationStats:
    count: int
    mean: timedelta
    min: timedelta
    p50: timedelta
    p95: timedelta
    max: timedelta


@dataclass(frozen=True)
class RunStats:
    total: int
    by_status: dict[RunStatus, int]  # every status, in lifecycle order
    success_rate: float  # completed / ended; NaN when none ended
    durations: DurationStats | None  # None when no run ended after starting


def competition_ranks(values: list[float]) -> list[int]:
    """1-based ranks of values already in rank order; equal values share the better rank."""
    ranks: list[int] = []
    for index, value in enumerate(values):
        ranks.append(ranks[-1] if index and value == values[index - 1] else index + 1)
    return ranks


def nearest_rank(ordered: list[timedelta], fraction: float) -> timedelta:
    """The ``fraction`` percentile of an ascending list, by the nearest-rank method."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def duration_stats(durations: list[timedelta]) -> DurationStats | None:
    if not durations:
        return None
    ordered = sorted(durations)
    mean = timedelta(seconds=statistics.fmean(d.total_seconds() for d in ordered))
    return DurationStats(
        count=len(ordered),
        mean=mean,
        min=ordered[0],
        p50=nearest_rank(ordered, 0.5),
        p95=nearest_rank(ordered, 0.95),
        max=ordered[-1],
    )


class Rankings:
    def __init__(self, uow: UnitOfWorkFactory, catalogue: ScenarioCatalogue) -> None:
        self.uow = uow
        self.catalogue = catalogue

    async def leaderboard(
        self,
        scenario_id: str,
        metric: str,
        aggregate: MetricAggregate,
        order: RankOrder,
        limit: int,
        experiment_id: str,
        include_unfinished: bool,
    ) -> Leaderboard:
        if not scenario_id:
            raise InvalidArgument.of("scenario_id", "is required")
        if scenario_id not in self.catalogue:
            raise NotFound("scenario", scenario_id, "scenario_id")
        metric = require_name("metric", metric)
        if not 0 <= limit <= LEADERBOARD_MAX:
            raise InvalidArgument.of("limit", f"must be between 0 and {LEADERBOARD_MAX}")
        experiment = optional_id("experiment_id", experiment_id)
        async with self.uow() as uow:
            if experiment is not None:
                await load_experiment(uow, experiment, "experiment_id")
            rows, count = await uow.runs.ranked(
                scenario_id,
                metric,
                aggregate,
                order == RankOrder.LOWEST_FIRST,
                limit or LEADERBOARD_DEFAULT,
                experiment_id=experiment,
                completed_only=not include_unfinished,
            )
        ranks = competition_ranks([row.value for row in rows])
        return Leaderboard([Entry(r, row) for r, row in zip(ranks, rows, strict=True)], count)

    async def stats(self, filter_text: str) -> RunStats:
        conditions = parse_filter(filter_text, RUN_LISTING.fields)
        async with self.uow() as uow:
            counts = await uow.runs.status_counts(conditions)
            durations = await uow.runs.durations(conditions)
        ended = sum(counts.get(s, 0) for s in RUN_FINAL)
        return RunStats(
            total=sum(counts.values()),
            by_status={status: counts.get(status, 0) for status in RunStatus},
            success_rate=counts.get(RunStatus.COMPLETED, 0) / ended if ended else math.nan,
            durations=duration_stats(durations),
        )
