"""``python -m bench compaction``: compacting a fleet-shaped series, on PostgreSQL and SQLite.

On each database a server (compaction off) creates a run; then, in this process, the group-
commit writer stores ``points`` points of one metric in 2-point chunks (a worker flushing
every 0.2 s), as the server's writer does, and one compaction round rewrites them, as the
server's loop does (``SqlCompactionStore``; PostgreSQL as the application role):

* ``compaction_<db>_points_per_s``: the round's points over its wall time;
* ``compaction_<db>_row_bytes_per_point_before`` / ``_after``: the chunk rows' stored bytes
  per point (PostgreSQL: ``pg_column_size`` of each row, so headers, keys and summaries count;
  SQLite: the columns' lengths, 8 bytes per number);
* ``compaction_<db>_blob_bytes_per_point_before`` / ``_after``: the steps, values and
  timestamps columns alone;
* ``compaction_<db>_fleet_round_points_per_s``: one round over a fleet's backlog, ``fleet_runs``
  runs of 10 metrics each holding ``fleet_chunks`` 2-point chunks (what a second of a
  1,000-worker fleet leaves a metric is 10 points): the round's points over its wall time;
* ``compaction_<db>_lag_mean_s`` / ``_max_s``: with the server's default settle time and
  interval, a fleet of ``lag_metrics`` metrics logged every 0.2 s for ``lag_seconds``: from a
  small chunk's arrival to the commit that compacted it (the oldest chunk of each compaction).

Values are the corpus' ``loss`` (``bench/corpus.py``) at consecutive steps with 10 Hz
timestamps, so the bytes compare with ``python -m bench codec``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from bench import corpus
from bench.control import Control
from bench.infra import PostgresDatabase, SqliteDatabase, run_bench, start_simtrack
from bench.report import Report
from simtrack.server.config import Settings
from simtrack.server.core.model import MetricKind
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.db.compaction_store import SqlCompactionStore
from simtrack.server.db.engine import create_engine
from simtrack.server.db.ingest_store import IngestStore
from simtrack.server.domain.compaction import CompactionService
from simtrack.server.ingest.items import Batch, pack_series
from simtrack.server.ingest.writer import GroupCommitWriter

METRIC = "loss"


@dataclass(frozen=True)
class Sizes:
    points: int
    lag_metrics: int
    lag_seconds: float
    fleet_runs: int = 200
    fleet_chunks: int = 10


FULL = Sizes(points=1_000_000, lag_metrics=50, lag_seconds=60, fleet_runs=1000)
QUICK = Sizes(points=100_000, lag_metrics=20, lag_seconds=20)
FLEET_METRICS = [f"m{i}" for i in range(10)]


class _Quiet:
    def group_committed(self, batches: int, points: int, events: int, seconds: float) -> None:
        pass


async def _nobody(run_ids: Iterable[str]) -> None:
    pass


def fleet_batches(seq0: int, steps: np.ndarray, names: Iterable[str]) -> list[Batch]:
    """2-point batches of the corpus' loss (steps[i] in batch i // 2), one series per name."""
    values, stamps = corpus.loss(len(steps)), corpus.ticks_10hz(len(steps))
    batches = []
    for i in range(0, len(steps), 2):
        batch = Batch(seq=seq0 + i // 2)
        for name in names:
            batch.metrics.append(
                pack_series(
                    name=name,
                    unit="",
                    kind=MetricKind.GAUGE,
                    steps=steps[i : i + 2],
                    values=values[i : i + 2],
                    stamps=stamps[i : i + 2],
                    now=0.0,
                )
            )
        batches.append(batch)
    return batches


async def submit(writer: GroupCommitWriter, run_id: str, batches: list[Batch]) -> None:
    await asyncio.gather(*(writer.submit(LOCAL_PRINCIPAL, run_id, b) for b in batches))


def row_bytes(name: str, url: str, run_id: str) -> tuple[int, int, int, int]:
    """(chunks, points, row bytes, blob bytes) of the run's chunks."""
    blobs = "length(steps) + length(vals) + length(ts)"
    if name == "pg":
        query = (
            f"SELECT count(*), sum(n), sum(pg_column_size(c.*)), sum({blobs}) "
            "FROM metric_chunks c WHERE metric_id IN (SELECT id FROM metrics WHERE run_id = %s)"
        )
        with psycopg.connect(url) as connection:
            row = connection.execute(query, (run_id,)).fetchone()
    else:
        numbers = 8 * 9  # seq, steps range, n, min/max and their steps, written_at
        keys = "length(metric_id) + length(tenant_id) + length(run_id)"
        query = (
            f"SELECT count(*), sum(n), sum({blobs} + {keys} + {numbers}), sum({blobs}) "
            "FROM metric_chunks WHERE metric_id IN (SELECT id FROM metrics WHERE run_id = ?)"
        )
        lite = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            row = lite.execute(query, (run_id,)).fetchone()
        finally:
            lite.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def measure(
    report: Report, name: str, server_url: str, admin_url: str, sizes: Sizes, log: Path
) -> None:
    server = await start_simtrack(server_url, log, compaction_interval=0)
    control = Control(server.address)
    try:
        await control.setup()
        run_id, lag_run_id = await control.create_run(), await control.create_run()
        fleet_run_ids = await control.create_runs(sizes.fleet_runs)
    finally:
        await control.close()
        await server.stop()
    engine = create_engine(server_url, poolclass=NullPool)
    writer = GroupCommitWriter(IngestStore(engine), _nobody, _Quiet())
    await writer.start()
    try:
        with report.phase(f"{name}: store {sizes.points:,} points in 2-point chunks"):
            steps = np.arange(sizes.points, dtype="<i8")
            await submit(writer, run_id, fleet_batches(1, steps, [METRIC]))
        chunks, points, before_rows, before_blobs = row_bytes(name, admin_url, run_id)
        service = CompactionService(SqlCompactionStore(engine), timedelta(0))
        started = time.perf_counter()
        done = await service.run_round()
        seconds = time.perf_counter() - started
        compacted = sum(c.points for c in done.compacted)
        if compacted != points or done.failed:
            raise RuntimeError(f"{name}: compacted {compacted} of {points} points")
        after_chunks, after_points, after_rows, after_blobs = row_bytes(name, admin_url, run_id)
        if after_points != points:
            raise RuntimeError(f"{name}: {after_points} points after compaction, not {points}")
        note = f"{points:,} points, {chunks:,} chunks into {after_chunks}, one round"
        report.add(f"compaction_{name}_points_per_s", points / seconds, "points/s", note=note)
        for label, value in (
            ("row_bytes_per_point_before", before_rows),
            ("row_bytes_per_point_after", after_rows),
            ("blob_bytes_per_point_before", before_blobs),
            ("blob_bytes_per_point_after", after_blobs),
        ):
            report.add(f"compaction_{name}_{label}", value / points, "B/point")
        await fleet_round(report, name, engine, writer, fleet_run_ids, sizes)
        await lag(report, name, engine, writer, lag_run_id, sizes)
    finally:
        await writer.stop()
        await engine.dispose()


async def fleet_round(
    report: Report,
    name: str,
    engine: AsyncEngine,
    writer: GroupCommitWriter,
    run_ids: list[str],
    sizes: Sizes,
) -> None:
    """One round over many metrics of a few small chunks each (a fleet's backlog)."""
    metrics = len(run_ids) * len(FLEET_METRICS)
    with report.phase(f"{name}: store {sizes.fleet_chunks} chunks of {metrics:,} metrics"):
        steps = np.arange(2 * sizes.fleet_chunks, dtype="<i8")
        batches = fleet_batches(1, steps, FLEET_METRICS)
        await asyncio.gather(*(submit(writer, run_id, batches) for run_id in run_ids))
    service = CompactionService(SqlCompactionStore(engine), timedelta(0))
    started = time.perf_counter()
    done = await service.run_round()
    while done.full:  # the round stops at a query's limit of due metrics; the loop goes on
        more = await service.run_round()
        done.compacted.extend(more.compacted)
        done.full, done.failed = more.full, done.failed + more.failed
    seconds = time.perf_counter() - started
    points = sum(c.points for c in done.compacted)
    if points != metrics * len(steps) or done.failed:
        raise RuntimeError(f"{name}: compacted {points} of {metrics * len(steps)} fleet points")
    note = f"{metrics:,} metrics of {sizes.fleet_chunks} 2-point chunks, {seconds:.2f} s"
    report.add(
        f"compaction_{name}_fleet_round_points_per_s", points / seconds, "points/s", note=note
    )


async def lag(
    report: Report,
    name: str,
    engine: AsyncEngine,
    writer: GroupCommitWriter,
    run_id: str,
    sizes: Sizes,
) -> None:
    """The server's loop (default settle and interval) beside a fleet logging every 0.2 s."""
    settings = Settings()
    service = CompactionService(
        SqlCompactionStore(engine),
        timedelta(seconds=settings.compaction_settle),
        settings.compaction_target_points,
    )
    names = [f"m{i}" for i in range(sizes.lag_metrics)]
    lags: list[float] = []
    stop = asyncio.Event()

    async def fleet() -> None:
        seq, step = 1, 0
        deadline = time.monotonic() + sizes.lag_seconds
        while time.monotonic() < deadline:
            steps = np.arange(step, step + 2, dtype="<i8")
            await submit(writer, run_id, fleet_batches(seq, steps, names))
            seq, step = seq + 1, step + 2
            await asyncio.sleep(0.2)
        stop.set()

    async def compact() -> None:
        while not stop.is_set():
            report_ = await service.run_round()
            lags.extend(c.lag.total_seconds() for c in report_.compacted if c.lag is not None)
            await asyncio.sleep(settings.compaction_interval)

    with report.phase(f"{name}: the loop beside {len(names)} metrics for {sizes.lag_seconds} s"):
        await asyncio.gather(fleet(), compact())
    if not lags:
        raise RuntimeError(f"{name}: nothing compacted while the fleet ran")
    note = (
        f"settle {settings.compaction_settle:g} s, interval {settings.compaction_interval:g} s; "
        f"{len(lags)} compactions"
    )
    report.add(f"compaction_{name}_lag_mean_s", float(np.mean(lags)), "s", note=note)
    report.add(f"compaction_{name}_lag_max_s", float(np.max(lags)), "s")


async def _main(sizes: Sizes, admin_url: str, workdir: Path) -> None:
    report = Report()
    postgres = PostgresDatabase(admin_url)
    sqlite = SqliteDatabase(workdir)
    try:
        await asyncio.to_thread(postgres.create)
        await postgres.migrate()
        await measure(report, "pg", postgres.server_url, postgres.url(), sizes, workdir / "pg.log")
        url = sqlite.server_url
        await measure(report, "sqlite", url, url, sizes, workdir / "sqlite.log")
    finally:
        await asyncio.to_thread(postgres.drop)
    report.table("simtrack compaction benchmark")


def run_compaction(quick: bool, admin_url: str) -> int:
    sizes = QUICK if quick else FULL
    return run_bench("compaction", lambda workdir: _main(sizes, admin_url, workdir))
