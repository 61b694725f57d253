"""Comparing runs: some metrics of several runs, each series downsampled on a grid that every
run's series of the metric shares, so that the runs line up.

A metric's grid spans, over the compared runs, the lowest to the highest step of their points
in the requested range (``step_bounds``), cut into ``max_points // 2`` intervals (history's
``Grid``); each series is then read as history reads one (``read_view``) on that grid. With
one run the grid is the one GetMetricHistory takes for the same range, and so are the points.
Everything is read in one snapshot: a compaction committing meanwhile must not show a point
twice, nor move a grid's bounds under the series read on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.model import (
    INT64_MAX,
    INT64_MIN,
    distinct,
    require_id,
    require_name,
)
from simtrack.server.db.chunks import STEP, unpack_steps
from simtrack.server.db.models import Metric, Run
from simtrack.server.domain.history import MAX_POINTS_MAX
from simtrack.server.domain.ports import ChunkRows, UnitOfWork, UnitOfWorkFactory
from simtrack.server.domain.series import Points
from simtrack.server.domain.views import Grid, View, read_view

MAX_RUNS = 100
MAX_METRICS = 20
DEFAULT_MAX_POINTS = 1000
# runs x metrics x max_points: ~26 bytes a point at most (a 10-byte step varint, two doubles)
# keeps a response under ~13 MB, within the Python client's 16 MiB.
MAX_TOTAL_POINTS = 500_000


@dataclass(frozen=True)
class ComparedRun:
    run: Run
    experiment_name: str


@dataclass(frozen=True)
class Series:
    """One run's view of one metric; ``metric`` is None when the run has no such metric."""

    run_id: str
    name: str
    metric: Metric | None
    view: View


@dataclass(frozen=True)
class Comparison:
    runs: list[ComparedRun]  # in the order asked
    grids: list[tuple[str, Grid | None]]  # per metric in the order asked; None: no points
    series: list[Series]  # run-major: series[i * len(metrics) + j] is run i's metric j
    max_points: int


@dataclass(frozen=True)
class CompareRequest:
    """A comparison's arguments, checked."""

    run_ids: list[str]
    metrics: list[str]
    lo: int
    hi: int
    max_points: int

    @classmethod
    def of(
        cls,
        run_ids: Sequence[str],
        metrics: Sequence[str],
        start_step: int | None,
        end_step: int | None,
        max_points: int,
    ) -> CompareRequest:
        ids = distinct("run_ids", [require_id(f"run_ids[{i}]", r) for i, r in enumerate(run_ids)])
        names = distinct(
            "metrics", [require_name(f"metrics[{j}]", m) for j, m in enumerate(metrics)]
        )
        for field, values, most in (("run_ids", ids, MAX_RUNS), ("metrics", names, MAX_METRICS)):
            if not 1 <= len(values) <= most:
                raise InvalidArgument.of(field, f"must list 1 to {most}, got {len(values)}")
        lo = INT64_MIN if start_step is None else start_step
        hi = INT64_MAX if end_step is None else end_step
        if lo > hi:
            raise InvalidArgument.of("end_step", f"must be >= start_step ({lo}), got {hi}")
        series = len(ids) * len(names)
        if max_points == 0:
            max_points = max(2, min(DEFAULT_MAX_POINTS, MAX_TOTAL_POINTS // series))
        elif not 2 <= max_points <= MAX_POINTS_MAX:
            raise InvalidArgument.of(
                "max_points", f"must be 0 or between 2 and {MAX_POINTS_MAX}, got {max_points}"
            )
        elif series * max_points > MAX_TOTAL_POINTS:
            raise InvalidArgument.of(
                "max_points",
                f"{series} series x {max_points} points is over {MAX_TOTAL_POINTS:,}: at most "
                f"{MAX_TOTAL_POINTS // series} for this many runs and metrics",
            )
        return cls(ids, names, lo, hi, max_points)


async def step_bounds(
    chunks: ChunkRows, metric_ids: Sequence[str], lo: int, hi: int
) -> dict[str, tuple[int, int]]:
    """The lowest and the highest step of each metric's points in [lo, hi] (metrics with none
    left out): chunks lying wholly in the range answer from their step range; only those that
    a bound cuts (none without bounds) are decoded, and only their steps.
    """
    bounds = dict(await chunks.inner_spans(metric_ids, lo, hi))
    if lo == INT64_MIN and hi == INT64_MAX:
        return bounds
    for metric_id, n, first, packed in await chunks.edge_steps(metric_ids, lo, hi):
        steps = unpack_steps(n, first, packed)
        inside = steps[(steps >= lo) & (steps <= hi)]
        if not inside.size:
            continue
        low, high = int(inside.min()), int(inside.max())
        if metric_id in bounds:
            known = bounds[metric_id]
            low, high = min(low, known[0]), max(high, known[1])
        bounds[metric_id] = (low, high)
    return bounds


def _merge_bounds(spans: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    found = list(spans)
    if not found:
        return None
    return min(lo for lo, _ in found), max(hi for _, hi in found)


class CompareService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def compare(
        self,
        run_ids: Sequence[str],
        metrics: Sequence[str],
        start_step: int | None,
        end_step: int | None,
        max_points: int,
    ) -> Comparison:
        asked = CompareRequest.of(run_ids, metrics, start_step, end_step, max_points)
        async with self.uow() as uow:
            await uow.read_snapshot()  # one view of the data for bounds and every series
            runs = await self._runs(uow, asked.run_ids)
            stored = {
                (m.run_id, m.name): m
                for m in await uow.metrics.named_in(asked.run_ids, asked.metrics)
            }
            for j, name in enumerate(asked.metrics):
                if not any((run_id, name) in stored for run_id in asked.run_ids):
                    raise NotFound("metric", name, f"metrics[{j}]")
            bounds = await step_bounds(
                uow.chunks, [m.id for m in stored.values()], asked.lo, asked.hi
            )
            grids: dict[str, Grid | None] = {}
            alone: set[str] = set()  # metrics of one series: its view takes its own grid
            for name in asked.metrics:
                ids = [stored[r, name].id for r in asked.run_ids if (r, name) in stored]
                span = _merge_bounds(bounds[i] for i in ids if i in bounds)
                grids[name] = None if span is None else Grid(*span, asked.max_points // 2)
                if len(ids) == 1:
                    alone.add(name)
            series = [
                await self._series(
                    uow,
                    asked,
                    run_id,
                    name,
                    stored.get((run_id, name)),
                    None if name in alone else grids[name],
                )
                for run_id in asked.run_ids
                for name in asked.metrics
            ]
        for one in series:  # as GetMetricHistory's view of the series: perhaps fewer intervals
            if one.name in alone and one.view.grid is not None:
                grids[one.name] = one.view.grid
        return Comparison(runs, list(grids.items()), series, asked.max_points)

    @staticmethod
    async def _runs(uow: UnitOfWork, run_ids: list[str]) -> list[ComparedRun]:
        """The runs in the order asked with their experiments' names; NOT_FOUND naming the
        first unknown one.
        """
        by_id = {run.id: run for run in await uow.runs.many(run_ids)}
        for i, run_id in enumerate(run_ids):
            if run_id not in by_id:
                raise NotFound("run", run_id, f"run_ids[{i}]")
        names: dict[str, str] = {}
        for run in by_id.values():  # a comparison's runs come from a few experiments
            if run.experiment_id not in names:
                experiment = await uow.experiments.get(run.experiment_id)
                names[run.experiment_id] = experiment.name if experiment else ""
        return [ComparedRun(by_id[r], names[by_id[r].experiment_id]) for r in run_ids]

    @staticmethod
    async def _series(
        uow: UnitOfWork,
        asked: CompareRequest,
        run_id: str,
        name: str,
        metric: Metric | None,
        grid: Grid | None,
    ) -> Series:
        if metric is None:
            empty = np.empty(0, dtype=np.float64)
            points = Points(np.empty(0, dtype=STEP), empty, empty)
            return Series(run_id, name, None, View(points, 0, False))
        view = await read_view(uow.chunks, metric.id, asked.lo, asked.hi, asked.max_points, grid)
        return Series(run_id, name, metric, view)
