"""``python -m bench fleet``: a fleet of paced workers against one server, then compaction.

A server on PostgreSQL (the application role), then (full mode, or ``--sqlite``) one on SQLite
(figures prefixed ``sqlite_``), each with compaction on (a short interval and settle), takes
``streams`` concurrent StreamRun streams from a few client processes (``bench/fleet_worker.py``:
a lean equivalent of the worker helper logging 10 metrics at 10 ticks/s, which its flush policy
sends as one message of 10 series x 10 points every second, 32 unacked at most) for
``seconds``:

* ``fleet_points_per_s``: points acked over the wall time from the first send to the last ack;
* ``fleet_server_cores`` / ``fleet_postgres_cores``: CPU seconds per wall second from go to
  the last final status (compaction, running meanwhile, included); ``fleet_server_us_per_point``;
* ``fleet_ack_p50_ms`` / ``_p99_ms``: from a message's due tick to the ack covering it;
* ``rows_per_point_before`` / ``bytes_per_point_before``: the rows as ingest wrote them, those
  still there when the fleet stops: its staged messages (a row of 100 points each,
  ``domain/staging.py``; the chunks of 10 points each of a server that does not stage);
  PostgreSQL: ``pg_column_size`` of each row, headers, keys, summaries and blobs; SQLite: the
  columns' lengths, 8 bytes a number, as bench compaction counts them;
* ``compaction_lag_s``: from the fleet's last ack until no message is staged and no metric
  holds two small chunks (compaction leaves at most one small chunk a metric: a series' tail);
* ``bytes_per_point_after``: every chunk of the fleet's runs, the same measure;
* ``history_downsample_ms_fleet_series``: one series written by one stream in 10-point flushes
  (unpaced; each point its own value and time, as a worker logs them: a random walk, a clock of
  10 ticks/s), compacted, read back as a 1,000-point view; median of 15. On PostgreSQL after
  ``VACUUM`` (as autovacuum would have run by then), and ``..._before_vacuum`` right after
  compaction. Then, as ``bench query`` reads a series sent in 1,000-point batches:
  ``history_page_ms_fleet_series``, a page of 10,000 points from a random step (median of
  15), and ``history_read_vs_raw_fleet_series``, every point in pages of 100,000 (one call), the
  columns as stored and decoded by the client, against the same chunks read straight from
  the database and decoded (``bench/history.py``; ``..._little_endian_...`` and
  ``..._repeated_...`` in the other column encodings).

Every (run, metric) is checked exactly once: points = 10 x messages sent, step range
[0, points), each chunk (and staged series) dense over its step range; before and after
compaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.control import Control, percentile
from bench.fleet_worker import FleetConfig
from bench.history import ChunkReader, median_s, postgres_fetch, read_figures, sqlite_fetch
from bench.infra import (
    CpuMeter,
    PostgresDatabase,
    RunningServer,
    SqliteDatabase,
    child_env,
    machine_busy_cores,
    start_simtrack,
)
from bench.ingest_cases import ROOT, BenchError, read_json
from bench.report import Report, Target
from bench.stream_worker import Streamer, WorkerConfig, build_messages
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.db.staged import unpack_body
from simtrack.v1 import telemetry_pb2, telemetry_pb2_grpc

_DEFAULT = FleetConfig("", [], 1, 0.0)
SERIES, STEPS = _DEFAULT.series, _DEFAULT.steps  # a message every second: 10 x 10 points
# Shorter than the defaults (2 s, 5 s, 30 s), so the lag after the fleet is measured quickly.
COMPACTION = {"compaction_interval": 1.0, "compaction_settle": 2.0, "compaction_idle": 5.0}
# Issue 11 item 3's goals, printed beside the figures (the rate's: keeping up with the fleet's
# offered load, within the up to one interval by which the workers' starts are staggered).
KEEPING_UP = 0.98
TARGETS = {
    "fleet_server_cores": Target(1.0, at_least=False),
    "fleet_ack_p99_ms": Target(500, at_least=False),
    # Issue 12's, for a fleet's series once compacted, as for one sent in 1,000-point batches.
    "history_downsample_ms_fleet_series": Target(10, at_least=False),
    "history_page_ms_fleet_series": Target(10, at_least=False),
    "history_read_vs_raw_fleet_series": Target(0.5),
}


@dataclass(frozen=True)
class Sizes:
    streams: int
    processes: int
    channels: int  # per process
    seconds: float
    history_points: int


FULL = Sizes(streams=1000, processes=4, channels=4, seconds=150, history_points=1_000_000)
QUICK = Sizes(streams=200, processes=2, channels=2, seconds=20, history_points=100_000)

# Chunks have no index on their run: the runs' chunks are found through their metrics.
_OF_RUNS = "metric_id IN (SELECT id FROM metrics WHERE run_id {runs})"
_DENSE = """
SELECT c.run_id, m.name, sum(c.n), min(c.first_step), max(c.last_step),
       sum(c.last_step - c.first_step + 1), count(*)
FROM metric_chunks c JOIN metrics m ON m.id = c.metric_id
WHERE m.run_id {runs} GROUP BY c.run_id, m.name
"""
_NAMES = "SELECT id, run_id, name FROM metrics WHERE run_id {runs}"
_STAGED = "SELECT seq, body FROM staged_messages WHERE run_id {runs}"


def _merge_dense(
    found: dict[tuple[str, str], tuple[Any, ...]], key: tuple[str, str], row: tuple[Any, ...]
) -> None:
    """Fold a (points, first step, last step, steps spanned, rows) row into ``found[key]``."""
    old = found.get(key)
    if old is None:
        found[key] = (*key, *row)
        return
    n, first, last, spanned, count = old[2:]
    found[key] = (
        *key, n + row[0], min(first, row[1]), max(last, row[2]), spanned + row[3], count + row[4]
    )  # fmt: skip


class Chunks:
    """The benchmark's metric_chunks, read past the server (PostgreSQL as the superuser)."""

    def __init__(self, prefix: str, url: str, pg_database: str | None) -> None:
        self.prefix = prefix  # of the figures' names: "" for PostgreSQL, "sqlite_"
        self.url = url
        self.pg_database = pg_database
        if pg_database is not None:
            self.row_size = "pg_column_size(c.*)"
            self.row_note = "pg_column_size of each row (header, keys, summaries, blobs)"
        else:  # the columns' lengths, 8 bytes a number (as bench compaction counts them)
            self.row_size = (
                "length(steps) + length(vals) + coalesce(length(ts), 0) + length(metric_id)"
                " + length(tenant_id) + length(run_id) + 72"
            )
            self.row_note = "the columns' lengths, 8 bytes a number (keys, summaries, blobs)"

    def rows(self, query: str, run_ids: list[str]) -> list[tuple[Any, ...]]:
        return self.snapshot([query], run_ids)[0]

    def snapshot(self, queries: list[str], run_ids: list[str]) -> list[list[tuple[Any, ...]]]:
        """Each query's rows, all read in one snapshot (compaction goes on meanwhile: read
        apart, a run's staged messages could be read after they moved, and missed).
        """
        if self.pg_database is not None:
            with psycopg.connect(self.url) as connection:
                connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                return [
                    list(connection.execute(q.format(runs="= ANY(%s)"), (run_ids,)))
                    for q in queries
                ]
        marks = "IN (" + ",".join("?" * len(run_ids)) + ")"
        lite = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30)
        try:
            lite.execute("BEGIN")  # a read transaction: one snapshot in WAL mode
            return [list(lite.execute(q.format(runs=marks), run_ids)) for q in queries]
        finally:
            lite.close()

    def verify(self, expected: dict[str, int], names: list[str]) -> int:
        """Check every (run, metric) holds points 0..n-1 exactly once, in its chunks and its
        staged messages together; return the points.
        """
        run_ids = list(expected)
        dense, named, staged = self.snapshot([_DENSE, _NAMES, _STAGED], run_ids)
        found = {(r[0], r[1]): tuple(r) for r in dense}
        metrics = {m: (run_id, name) for m, run_id, name in named}
        for seq, body in staged:
            for s in unpack_body(seq, bytes(body)):
                spanned = s.last_step - s.first_step + 1
                _merge_dense(
                    found, metrics[s.metric_id], (s.n, s.first_step, s.last_step, spanned, 1)
                )
        rows = list(found.values())
        total = 0
        for run_id, points in expected.items():
            for name in names:
                got = found.get((run_id, name))
                want = (run_id, name, points, 0, points - 1, points)
                if got is None or tuple(got[:6]) != want:
                    raise BenchError(f"run {run_id} metric {name}: stored {got}, expected {want}")
                total += points
        if len(rows) != len(expected) * len(names):
            raise BenchError(f"{len(rows)} series stored, {len(expected) * len(names)} sent")
        return total

    def sizes(self, run_ids: list[str], only_n: int | None) -> tuple[int, int, int]:
        """(rows, points, bytes) of the runs' chunks (of ``only_n`` points, if given)."""
        where = "" if only_n is None else f" AND n = {only_n}"
        query = (
            f"SELECT count(*), coalesce(sum(n), 0), coalesce(sum({self.row_size}), 0)"
            f" FROM metric_chunks c WHERE {_OF_RUNS}{where}"
        )
        row = self.rows(query, run_ids)[0]
        return int(row[0]), int(row[1]), int(row[2])

    def staged_sizes(self, run_ids: list[str]) -> tuple[int, int, int]:
        """(rows, points, bytes) of the runs' staged messages, measured as chunks are."""
        size = (
            "pg_column_size(s.*)"
            if self.pg_database is not None
            else "length(body) + length(tenant_id) + length(run_id) + 24"
        )
        query = (
            f"SELECT count(*), coalesce(sum(points), 0), coalesce(sum({size}), 0)"
            " FROM staged_messages s WHERE run_id {runs}"
        )
        row = self.rows(query, run_ids)[0]
        return int(row[0]), int(row[1]), int(row[2])

    def fetch(self, run_id: str, metric: str) -> ChunkReader:
        """The metric's chunk rows, read straight (the raw read's)."""
        if self.pg_database is not None:
            return postgres_fetch(self.url, run_id, metric)
        return sqlite_fetch(Path(self.url.removeprefix("sqlite:///")), run_id, metric)

    def vacuum(self) -> None:
        """What autovacuum does after compaction deletes a fleet's small chunks. This
        machine's PostgreSQL runs with autovacuum off (a CI setting); a default one vacuums a
        table once a fifth of its rows are dead, within its naptime (a minute). Until then,
        views walk the deleted rows' index entries.
        """
        assert self.pg_database is not None
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE metric_chunks, staged_messages, metrics, runs")

    def uncompacted(self, run_ids: list[str]) -> int:
        """Staged messages of the runs, and metrics holding two or more small chunks
        (compaction's work left).
        """
        query = (
            "SELECT count(*) FROM (SELECT metric_id FROM metric_chunks"
            f" WHERE {_OF_RUNS} AND n < {SMALL_CHUNK_POINTS}"
            " GROUP BY metric_id HAVING count(*) > 1) AS due"
        )
        staged = "SELECT count(*) FROM staged_messages WHERE run_id {runs}"
        return int(self.rows(query, run_ids)[0][0]) + int(self.rows(staged, run_ids)[0][0])


VIEWS = 15  # GetMetricHistory calls per view or page figure (its median)
READS = 9  # reads of the whole series (and raw reads, in turn), each figure their median
PAGE = 10_000  # points
POLL_S = 0.25  # the lag's resolution; polling more often would take CPU from compaction


async def wait_compacted(db: Chunks, run_ids: list[str], timeout: float = 1800) -> float:
    """Poll until compaction is done with the runs; the monotonic time it was."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(db.uncompacted, run_ids):
        if time.monotonic() > deadline:
            raise BenchError(f"compaction not done after {timeout:g} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic()


async def start_clients(config: FleetConfig) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.fleet_worker",
        cwd=ROOT,
        env=child_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,  # the result line holds every message's latency
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(asdict(config)).encode() + b"\n")
    await process.stdin.drain()
    return process


async def run_fleet(
    report: Report, server: RunningServer, control: Control, db: Chunks, sizes: Sizes
) -> None:
    run_ids = await control.create_runs(sizes.streams)
    per = -(-sizes.streams // sizes.processes)
    shares = [run_ids[i : i + per] for i in range(0, len(run_ids), per)]
    processes = []
    try:
        with report.phase(f"fleet: {sizes.streams} streams open in {len(shares)} processes"):
            for share in shares:
                config = FleetConfig(server.address, share, sizes.channels, sizes.seconds)
                processes.append(await start_clients(config))
            await asyncio.gather(*(read_json(p, "ready") for p in processes))
        # The CPU meter starts at go: the ``ready`` lines came once every hello was answered.
        meter = CpuMeter(server.pid, [p.pid for p in processes], db.pg_database)
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        # A stream behind schedule still sends every tick's message (as the window allows), so
        # an overloaded server stretches the run past ``seconds``: the CPU is measured over all
        # of it, the span the rate is taken over (go to the last final status).
        with report.phase(f"fleet: {sizes.seconds:g} s of ticks, streamed"):
            results = [(await read_json(p, "result"))["result"] for p in processes]
            cpu = meter.stop()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()
    report.other_load.append(cpu.other)
    await measure_fleet(report, server, db, run_ids, results, cpu.server, cpu.postgres)
    report.add(
        f"{db.prefix}fleet_clients_cores",
        cpu.workers,
        "cores",
        note=f"the {len(processes)} client processes, on the same machine; {cpu.describe()}",
    )


async def measure_fleet(
    report: Report,
    server: RunningServer,
    db: Chunks,
    run_ids: list[str],
    results: list[dict[str, Any]],
    server_cores: float,
    postgres_cores: float,
) -> None:
    names, p = [f"m{i}" for i in range(SERIES)], db.prefix
    messages: dict[str, int] = {}
    for result in results:
        messages.update(result["messages"])
    rows, raw_points, raw_bytes = await asyncio.to_thread(db.staged_sizes, run_ids)
    written_as = f"staged messages ({SERIES * STEPS} points)"
    if not rows:  # a server that does not stage: the chunks of one series of a message
        rows, raw_points, raw_bytes = await asyncio.to_thread(db.sizes, run_ids, STEPS)
        written_as = f"chunks ({STEPS} points)"
    expected = {run_id: messages[run_id] * STEPS for run_id in run_ids}
    points = await asyncio.to_thread(db.verify, expected, names)
    first = min(r["first_send"] for r in results)
    last_ack = max(r["last_ack"] for r in results)
    rate = points / (last_ack - first)
    in_flight = max(r["max_in_flight"] for r in results)
    offered = len(run_ids) * SERIES * STEPS / _DEFAULT.interval  # 1,000 streams: 100,000
    latencies = [v for r in results for v in r["latencies_ms"]]
    report.add(
        f"{p}fleet_points_per_s",
        rate,
        "points/s",
        note=f"{len(run_ids)} streams, {points:,} points in {sum(messages.values()):,} messages,"
        f" first send to last ack {last_ack - first:.1f} s (starts staggered over"
        f" {_DEFAULT.interval:g} s); offered {offered:,.0f}; max in flight {in_flight}",
        target=Target(KEEPING_UP * offered),
    )
    report.add(
        f"{p}fleet_server_cores",
        server_cores,
        "cores",
        note="server process over the fleet's wall time, compaction included;"
        f" other processes (not of this bench) {report.other_load[-1]:.2f}",
        target=TARGETS["fleet_server_cores"],
    )
    if db.pg_database is not None:
        report.add(
            f"{p}fleet_postgres_cores", postgres_cores, "cores", note="this database's backends"
        )
    report.add(
        f"{p}fleet_server_us_per_point",
        server_cores / rate * 1e6,
        "us",
        note="server CPU per point",
    )
    report.add(f"{p}fleet_ack_p50_ms", percentile(latencies, 0.5), "ms")
    report.add(
        f"{p}fleet_ack_p99_ms",
        percentile(latencies, 0.99),
        "ms",
        note=f"{len(latencies):,} messages, from the message's due tick to its ack",
        target=TARGETS["fleet_ack_p99_ms"],
    )
    report.add(
        f"{p}rows_per_point_before",
        rows / max(raw_points, 1),
        "rows/point",
        note=f"the {rows:,} {written_as} still as ingest wrote them at the fleet's end",
    )
    report.add(
        f"{p}bytes_per_point_before",
        raw_bytes / max(raw_points, 1),
        "B/point",
        note=f"{db.row_note}; no indexes",
    )
    meter = CpuMeter(server.pid, [], db.pg_database)
    done = await wait_compacted(db, run_ids)
    cpu = meter.stop()
    report.add(
        f"{p}compaction_lag_s",
        done - last_ack,
        "s",
        note=f"last ack -> no metric with 2+ small chunks; interval"
        f" {COMPACTION['compaction_interval']:g} s, settle {COMPACTION['compaction_settle']:g} s,"
        f" idle {COMPACTION['compaction_idle']:g} s;"
        f" polled every {POLL_S:g} s",
    )
    report.add(
        f"{p}compaction_after_fleet_points_per_s",
        raw_points / (done - last_ack),
        "points/s",
        note=f"the {raw_points:,} points left in {written_as} over that lag; meanwhile"
        f" server {cpu.server:.2f} cores, PostgreSQL {cpu.postgres:.2f}",
    )
    rows, all_points, all_bytes = await asyncio.to_thread(db.sizes, run_ids, None)
    await asyncio.to_thread(db.verify, expected, names)
    report.add(
        f"{p}bytes_per_point_after",
        all_bytes / all_points,
        "B/point",
        note=f"{rows:,} chunks, {all_points / rows:.0f} points each; same measure",
    )
    report.add(
        f"{p}fleet_verified", 1, note=f"{points:,} points stored exactly once, checked twice"
    )


async def history_series(
    report: Report, server: RunningServer, control: Control, db: Chunks, points: int
) -> None:
    run_id = await control.create_run()
    config = WorkerConfig(server.address, run_id, points, STEPS, clocked=True)
    messages = build_messages(config)
    telemetry = telemetry_pb2_grpc.TelemetryServiceStub(control.channel)
    with report.phase(f"history series: {points:,} points in {len(messages):,} messages"):
        streamer = Streamer(telemetry.StreamRun(), 32)
        await streamer.hello(run_id, "fleet-history")
        for message in messages:
            await streamer.send(message)
        final = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_COMPLETED)
        await streamer.send(telemetry_pb2.StreamRunRequest(seq=len(messages) + 1, status=final))
        await streamer.wait_acked(len(messages) + 1)
        await streamer.close()
    with report.phase("history series: compaction"):
        await wait_compacted(db, [run_id])
    await asyncio.to_thread(db.verify, {run_id: points}, [config.metric])
    request = telemetry_pb2.GetMetricHistoryRequest(
        run_id=run_id, metric=config.metric, max_points=1000
    )
    view = await telemetry.GetMetricHistory(request)
    if not view.downsampled or view.range_count != points or len(view.steps) > 1000:
        raise BenchError(f"unexpected downsampled view: {view.range_count} points")

    async def median_ms() -> float:
        times = []
        for _ in range(VIEWS):
            started = time.perf_counter()
            await telemetry.GetMetricHistory(request)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    written = (
        f"{points:,} points (each its own value and time) written in {STEPS}-point flushes,"
        " compacted, to <= 1,000"
    )

    def goal(name: str) -> Target | None:
        """Issue 12's goal for the figure: PostgreSQL's (SQLite's figures stand beside it)."""
        return TARGETS[name] if db.pg_database is not None else None

    if db.pg_database is not None:
        report.add(
            "history_downsample_ms_fleet_series_before_vacuum",
            await median_ms(),
            "ms",
            note=f"{written}; right after compaction, beside the rows it deleted; median of"
            f" {VIEWS}",
        )
        await asyncio.to_thread(db.vacuum)
    report.add(
        f"{db.prefix}history_downsample_ms_fleet_series",
        await median_ms(),
        "ms",
        note=f"{written}; median of {VIEWS}"
        + ("; after VACUUM (see vacuum's note)" if db.pg_database is not None else ""),
        target=goal("history_downsample_ms_fleet_series"),
    )
    rng = random.Random(6)

    async def page() -> None:
        start = rng.randrange(0, points - PAGE)
        response = await telemetry.GetMetricHistory(
            telemetry_pb2.GetMetricHistoryRequest(
                run_id=run_id, metric=config.metric, start_step=start, page_size=PAGE
            )
        )
        if len(response.steps) != PAGE:
            raise BenchError(f"a page of {len(response.steps):,} points, not {PAGE:,}")

    report.add(
        f"{db.prefix}history_page_ms_fleet_series",
        await median_s(page, VIEWS) * 1000,
        "ms",
        note=f"{PAGE:,} points from a random step; median of {VIEWS}",
        target=goal("history_page_ms_fleet_series"),
    )
    rates = await read_figures(
        server.address,
        telemetry,
        run_id,
        config.metric,
        points,
        READS,
        db.fetch(run_id, config.metric),
    )
    report.add(
        f"{db.prefix}history_read_vs_raw_fleet_series",
        rates.stored / rates.raw,
        "x",
        note=f"every point, one call of pages of 100,000, the columns as stored, decoded by the"
        f" client (its way), {rates.stored / 1e6:.1f}M points/s, against"
        f" {rates.raw / 1e6:.1f}M read straight (a kept connection) and decoded; medians of"
        f" {READS}",
        target=goal("history_read_vs_raw_fleet_series"),
    )
    report.add(
        f"{db.prefix}history_read_little_endian_vs_raw_fleet_series",
        rates.columns / rates.raw,
        "x",
        note=f"the same as little-endian columns, {rates.columns / 1e6:.1f}M points/s",
    )
    report.add(
        f"{db.prefix}history_read_repeated_vs_raw_fleet_series",
        rates.repeated / rates.raw,
        "x",
        note=f"the same in the repeated fields, {rates.repeated / 1e6:.1f}M points/s",
    )


async def on_database(report: Report, sizes: Sizes, db: Chunks, server_url: str, log: Path) -> None:
    server = await start_simtrack(server_url, log, **COMPACTION)
    control = Control(server.address)
    try:
        await control.setup()
        await run_fleet(report, server, control, db, sizes)
        await history_series(report, server, control, db, sizes.history_points)
    finally:
        await control.close()
        await server.stop()


async def _main(report: Report, sizes: Sizes, admin_url: str, workdir: Path, sqlite: bool) -> None:
    postgres = PostgresDatabase(admin_url)
    try:
        await asyncio.to_thread(postgres.create)
        await postgres.migrate()
        db = Chunks("", postgres.url(), postgres.pg_database)
        await on_database(report, sizes, db, postgres.server_url, workdir / "pg.log")
    finally:
        await asyncio.to_thread(postgres.drop)
    if sqlite:
        url = SqliteDatabase(workdir).server_url
        await on_database(report, sizes, Chunks("sqlite_", url, None), url, workdir / "sqlite.log")


def run_fleet_bench(quick: bool, admin_url: str, sqlite: bool | None = None) -> int:
    sqlite = not quick if sqlite is None else sqlite
    sizes = QUICK if quick else FULL
    report = Report()
    report.add("cpu_cores", os.cpu_count() or 0, "cores", note="server, PostgreSQL, clients share")
    report.add(
        "machine_busy_before_cores",
        machine_busy_cores(1.0),
        "cores",
        note="CPU used by other processes in the second before the bench started",
    )
    report.info(
        f"{sizes.streams} streams in {sizes.processes} processes for {sizes.seconds:g} s;"
        f" {'PostgreSQL, then SQLite' if sqlite else 'PostgreSQL only (no SQLite)'};"
        " clients are a lean equivalent of the worker helper"
    )
    workdir = Path(tempfile.mkdtemp(prefix="simtrack-bench-fleet-"))
    try:
        asyncio.run(_main(report, sizes, admin_url, workdir, sqlite))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if report.other_load:
        others = max(report.other_load)
        report.add("other_processes_cores_max", others, "cores", note="during the fleet(s)")
    report.table(f"simtrack fleet benchmark ({'quick' if quick else 'full'})")
    return 0
