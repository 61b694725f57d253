"""Comparing runs on both databases: one run compared is its own history (the same points as
GetMetricHistory's for the same range and max_points), several runs line up on one grid per
metric spanning all their points in the range (each interval shows each run's own lowest and
highest value), and compaction changes no answer.

The runs' series differ in step range, density, repeated steps and NaN/±Inf values, and are
stored as small chunks (then compacted into compressed ones), so step ranges cut chunks; or,
with the writer staging small messages, staged (then moved into chunks, ``domain/staging.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.api.telemetry import decode
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.db.engine import create_engine
from simtrack.server.domain.compare import MAX_TOTAL_POINTS, CompareService, Comparison
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.views import Grid
from simtrack.server.ingest.writer import GroupCommitWriter
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support import CommitLog, Services, server_url
from tests.support.compaction import compactor
from tests.support.data import Sent

Array = np.ndarray[Any, Any]
RANGES = [(None, None), (1234, 3456), (10, 20), (4990, None), (None, 999), (7000, 9000)]


@dataclass
class Scene:
    runs: list[str]  # a: steps 0-4999; b: 1000-7998 every other step, no reward; c: 0-4999
    sent: dict[tuple[str, str], Sent]
    experiment_name: str


def series_of(rng: np.random.Generator, steps: Array) -> Array:
    values = rng.normal(size=len(steps)) * 100
    odd = rng.choice(len(steps), size=max(1, len(steps) // 50), replace=False)
    values[odd] = rng.choice([np.nan, np.inf, -np.inf], size=len(odd))
    return values


async def send_run(
    writer: GroupCommitWriter, run_id: str, metrics: dict[str, Array], rng: np.random.Generator
) -> dict[str, Sent]:
    """Each metric's steps in batches of 300 points (small chunks), values odd now and then."""
    sent = {name: Sent() for name in metrics}
    batches = max(-(-len(steps) // 300) for steps in metrics.values())
    for k in range(batches):
        seq = k + 1
        series = []
        for name, steps in metrics.items():
            part = steps[k * 300 : (k + 1) * 300]
            if not len(part):
                continue
            values = series_of(rng, part)
            stamps = 1.7e9 + part * 0.5 + rng.random(len(part))
            unit = "USD" if name == "reward" else "nats"
            series.append(
                tpb.MetricSeries(
                    name=name,
                    unit=unit,
                    steps=part.tolist(),
                    values=values.tolist(),
                    timestamps=stamps.tolist(),
                )
            )
            sent[name].add(seq, part, values, stamps)
        request = tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=series))
        await writer.submit(LOCAL_PRINCIPAL, run_id, decode(request))
    return sent


@pytest.fixture(params=[False, True], ids=["chunks", "staged"])
def stage(request: pytest.FixtureRequest) -> bool:
    """The ``writer`` storing each message as chunks, or staging the small ones."""
    return bool(request.param)


async def rows_of_points(services: Services) -> int:
    """Chunks and staged messages."""
    chunks = await services.scalar("SELECT count(*) FROM metric_chunks")
    return int(chunks) + int(await services.scalar("SELECT count(*) FROM staged_messages"))


@pytest.fixture
async def scene(services: Services, writer: tuple[GroupCommitWriter, CommitLog]) -> Scene:
    experiment = await services.experiment()
    runs = [(await services.run(experiment.id)).id for _ in range(3)]
    rng = np.random.default_rng(12)
    a_steps = np.arange(5000, dtype="<i8")
    b_steps = np.arange(1000, 8000, 2, dtype="<i8")
    c_steps = np.sort(np.r_[np.arange(0, 5000, 3), np.arange(0, 5000, 7)]).astype("<i8")  # repeats
    plans = [
        {"loss": a_steps, "reward": a_steps[::5]},
        {"loss": b_steps},
        {"loss": c_steps, "reward": c_steps[:-100]},
    ]
    sent: dict[tuple[str, str], Sent] = {}
    for run_id, plan in zip(runs, plans, strict=True):
        for name, stored in (await send_run(writer[0], run_id, plan, rng)).items():
            sent[run_id, name] = stored
    return Scene(runs, sent, experiment.name)


@pytest.fixture
async def server_engine(services: Services) -> AsyncIterator[AsyncEngine]:
    """An engine as the server connects (PostgreSQL: its role, under row-level security)."""
    engine = create_engine(server_url(services))
    yield engine
    await engine.dispose()


def same_bits(a: Array, b: Array) -> bool:
    return bool(a.dtype == b.dtype) and a.tobytes() == b.tobytes()


def answers(found: Comparison) -> Iterator[tuple[object, ...]]:
    """A comparison's answer as plain values, bit for bit."""
    yield found.max_points, tuple(found.grids)
    for s in found.series:
        p = s.view.points
        yield (s.run_id, s.name, p.steps.tobytes(), p.decoded().tobytes(), p.times().tobytes())
        yield s.view.range_count, s.view.downsampled, s.metric is None


async def test_one_run_compared_is_its_history(services: Services, scene: Scene) -> None:
    compare, history = CompareService(services.uow), HistoryService(services.uow)
    for run_id in scene.runs[0], scene.runs[2]:
        for lo, hi in RANGES:
            for max_points in (2, 3, 50, 1000, 100_000):
                found = await compare.compare([run_id], ["loss"], lo, hi, max_points)
                view = await history.history(run_id, "loss", lo, hi, max_points, 0, "")
                (series,) = found.series
                where = (run_id, lo, hi, max_points)
                assert same_bits(series.view.points.steps, view.points.steps), where
                assert same_bits(series.view.points.decoded(), view.points.decoded()), where
                assert same_bits(series.view.points.times(), view.points.times()), where
                assert (series.view.range_count, series.view.downsampled) == (
                    view.range_count,
                    view.downsampled,
                ), where
                steps = scene.sent[run_id, "loss"].columns(lo, hi)[0]
                (grid,) = found.grids
                if view.grid is not None:  # GetMetricHistory's grid
                    assert grid == ("loss", view.grid)
                elif steps.size:  # not downsampled: the run's own span
                    assert grid == ("loss", Grid(int(steps[0]), int(steps[-1]), max_points // 2))
                else:
                    assert grid == ("loss", None) and not series.view.points.steps.size


def rows(steps: Array, values: Array, stamps: Array) -> set[tuple[int, int, float]]:
    bits = values.view("<u8").tolist()  # NaN payloads and -0.0 told apart
    return set(zip(steps.tolist(), bits, stamps.tolist(), strict=True))


def check_on_grid(series_steps: Array, series_values: Array, sent: Sent, grid: Grid) -> None:
    """Each interval of ``grid`` shows the run's own lowest and highest value of its points
    there (NaN only where an interval has nothing else), and only stored points.
    """
    steps, values, _ = sent.columns(grid.lo, grid.hi)
    assert (np.diff(series_steps) >= 0).all()
    where = ((steps - grid.lo) * (grid.intervals / (grid.hi - grid.lo + 1))).astype(np.int64)
    shown = ((series_steps - grid.lo) * (grid.intervals / (grid.hi - grid.lo + 1))).astype(np.int64)
    for k in np.unique(where):
        mine = values[where == k]
        got = series_values[shown == k]
        finite = mine[~np.isnan(mine)]
        if finite.size:
            assert set(got[~np.isnan(got)].tolist()) == {finite.min(), finite.max()}, k
        else:
            assert len(got) == 1 and np.isnan(got[0]), k
    assert set(np.unique(shown)) <= set(np.unique(where)), "no point outside the run's own"


async def test_several_runs_line_up_on_one_grid_per_metric(
    services: Services, scene: Scene
) -> None:
    compare, history = CompareService(services.uow), HistoryService(services.uow)
    a, b, c = scene.runs
    for lo, hi in RANGES:
        found = await compare.compare([b, a, c], ["reward", "loss"], lo, hi, 200)
        assert [r.run.id for r in found.runs] == [b, a, c]
        assert {r.experiment_name for r in found.runs} == {scene.experiment_name}
        assert [r.run.run_number for r in found.runs] == [2, 1, 3]
        assert [(s.run_id, s.name) for s in found.series] == [
            (run, name) for run in (b, a, c) for name in ("reward", "loss")
        ]
        grids = dict(found.grids)
        for name in ("reward", "loss"):
            every = np.concatenate(
                [
                    scene.sent[run, name].columns(lo, hi)[0]
                    for run in (a, b, c)
                    if (run, name) in scene.sent
                ]
            )
            grid = grids[name]
            if not every.size:
                assert grid is None
                continue
            assert grid == Grid(int(every.min()), int(every.max()), 100), (name, lo, hi)
        for s in found.series:
            where = (s.run_id, s.name, lo, hi)
            if (s.run_id, s.name) not in scene.sent:
                assert s.metric is None and s.view.range_count == 0, where
                assert not s.view.points.steps.size, where
                continue
            assert s.metric is not None
            assert s.metric.unit == ("USD" if s.name == "reward" else "nats"), where
            sent = scene.sent[s.run_id, s.name]
            want_steps, want_values, want_stamps = sent.columns(lo, hi)
            assert s.view.range_count == len(want_steps), where
            grid = grids[s.name]
            if len(want_steps) <= 200:  # whole
                assert not s.view.downsampled and same_bits(s.view.points.steps, want_steps)
                assert same_bits(s.view.points.decoded(), want_values), where
                assert same_bits(s.view.points.times(), want_stamps), where
                continue
            assert s.view.downsampled and len(s.view.points) <= 200, where
            assert grid is not None
            check_on_grid(s.view.points.steps, s.view.points.decoded(), sent, grid)
            points = s.view.points  # only stored points: each shown was sent
            shown = rows(points.steps, points.decoded(), points.times())
            assert shown <= rows(want_steps, want_values, want_stamps), where
            if (int(want_steps[0]), int(want_steps[-1])) == (grid.lo, grid.hi):
                # A run spanning the whole grid: its own history, point for point.
                view = await history.history(s.run_id, s.name, lo, hi, 200, 0, "")
                assert same_bits(s.view.points.steps, view.points.steps), where
                assert same_bits(s.view.points.decoded(), view.points.decoded()), where


async def test_compaction_changes_no_comparison(
    services: Services, scene: Scene, server_engine: AsyncEngine
) -> None:
    compare = CompareService(services.uow)
    asks = [(lo, hi, m) for lo, hi in RANGES for m in (2, 100, 0)]
    metrics = ["loss", "reward"]
    before = [list(answers(await compare.compare(scene.runs, metrics, *a))) for a in asks]
    rows = await rows_of_points(services)
    report = await compactor(server_engine, target=2000).run_round()
    assert report.compacted or report.staged_messages
    assert await rows_of_points(services) < rows
    assert await services.scalar("SELECT count(*) FROM staged_messages") == 0
    after = [list(answers(await compare.compare(scene.runs, metrics, *a))) for a in asks]
    assert after == before


async def test_a_comparison_is_one_snapshot_while_compaction_commits(
    services: Services, scene: Scene, server_engine: AsyncEngine
) -> None:
    """Compaction rewriting the chunks mid-comparison shows no point twice, or none."""
    compare = CompareService(services.uow)
    expected = list(answers(await compare.compare(scene.runs, ["loss"], None, None, 100_000 // 3)))
    compaction = asyncio.create_task(compactor(server_engine, target=2000).run_round())
    while not compaction.done():
        found = await compare.compare(scene.runs, ["loss"], None, None, 100_000 // 3)
        assert list(answers(found)) == expected
    await compaction


async def test_bad_comparisons_name_the_field(services: Services, scene: Scene) -> None:
    compare = CompareService(services.uow)
    a, b, _ = scene.runs
    unknown = "00000000-0000-4000-8000-000000000000"
    invalid: list[tuple[tuple[Any, ...], str]] = [
        (([], ["loss"], None, None, 0), "run_ids"),
        (([str(i) for i in range(101)], ["loss"], None, None, 0), "run_ids[0]"),  # no UUID
        (([a] * 101, ["loss"], None, None, 0), "run_ids[1]"),
        (([a, b, a.upper()], ["loss"], None, None, 0), "run_ids[2]"),
        (([a, "nope"], ["loss"], None, None, 0), "run_ids[1]"),
        (([a], [], None, None, 0), "metrics"),
        (([a], ["loss", ""], None, None, 0), "metrics[1]"),
        (([a], ["loss", "reward", "loss"], None, None, 0), "metrics[2]"),
        (([a], [f"m{i}" for i in range(21)], None, None, 0), "metrics"),
        (([a], ["loss"], 5, 4, 0), "end_step"),
        (([a], ["loss"], None, None, 1), "max_points"),
        (([a], ["loss"], None, None, -1), "max_points"),
        (([a], ["loss"], None, None, 100_001), "max_points"),
        (([a, b], ["loss"] + [f"m{i}" for i in range(19)], None, None, 20_000), "max_points"),
    ]
    for args, field in invalid:
        with pytest.raises(InvalidArgument) as info:
            await compare.compare(*args)
        assert [v.field for v in info.value.violations] == [field], args
    many = [f"00000000-0000-4000-8000-{i:012d}" for i in range(101)]
    with pytest.raises(InvalidArgument) as info:  # 101 distinct: the count is refused
        await compare.compare(many, ["loss"], None, None, 0)
    assert [v.field for v in info.value.violations] == ["run_ids"]
    for args, field, name in [
        (([a, unknown], ["loss"], None, None, 0), "run_ids[1]", unknown),
        (([a, b], ["loss", "nope"], None, None, 0), "metrics[1]", "nope"),
    ]:
        with pytest.raises(NotFound) as missing:
            await compare.compare(*args)
        assert (missing.value.field, missing.value.resource_id) == (field, name)
    # The default fits the budget: 100 runs x 20 metrics would get 250 points each.
    assert MAX_TOTAL_POINTS // (100 * 20) == 250
    found = await compare.compare([b, a], ["reward", "loss"], None, None, 0)
    assert found.max_points == 1000 and found.series[0].metric is None
