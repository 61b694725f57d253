"""``python -m bench ingest [--quick]``: durable ingest through StreamRun, its limits, and more.

In one run, on this machine (client processes and server share its cores):

* durable points/s through TelemetryService.StreamRun into PostgreSQL and SQLite, with 1 and 4
  concurrent worker processes at 100 and 1000 points per message (one metric per message,
  contiguous steps, one timestamp per message, ~32 messages unacknowledged); points/s = points
  acked / (last ack - first send); the stored point count is checked against what was sent
  (``*_verified = 1``, or the bench fails); the full run adds 4x1000 with a timestamp per point
  (``pg_ingest_4x1000_distinct_ts``: the chunks then hold every timestamp);
* the worker helper (``simtrack.client.Worker``), one thread calling ``log_metrics``;
* the limits beside them: psycopg binary COPY of the same points as one row per point into an
  indexed table, and the same client against a gRPC server that acks without a database;
* server peak RSS, cancel delivery latency (p50/p99), and the RSS of 1,000 idle streams.

Every figure is printed as ``name = value unit`` when it is known; a table closes the run.
Nothing measured overlaps anything else: servers start, and worker processes import and build
their messages, before the clock of any case starts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.control import Control, IdleStreams, cancel_latency, summary
from bench.copy_limit import copy_limit
from bench.helper_worker import HelperConfig
from bench.infra import (
    PostgresDatabase,
    RunningServer,
    SqliteDatabase,
    child_env,
    machine_busy_cores,
    start_process_server,
    start_simtrack,
)
from bench.ingest_cases import (
    ROOT,
    TARGETS,
    BenchError,
    Started,
    WorkerPool,
    ingest_case,
    ingest_cases,
    read_json,
)
from bench.report import Report
from bench.spy import Profiler

QUICK_BUDGET_S = 50.0  # --quick sizes its idle-stream count to end within this (limit: 60 s)
QUICK_RESERVE_S = 6.0  # what comes after the idle streams: cancels, teardown, the table


@dataclass(frozen=True)
class Sizes:
    """How much each part moves; --quick keeps the whole run under a minute."""

    points_1000: int  # points per 1000-point-batch case (all workers together); also COPY rows
    points_100: int  # points per 100-point-batch case
    grpc_points: int
    cancels: int
    idle_streams: int  # at most; --quick may open fewer to stay in its budget
    helper_steps: int  # x 10 metrics
    sqlite_4x100: bool
    distinct_timestamps: bool  # also 4x1000 into PostgreSQL with a timestamp per point
    coalesced_acks: bool  # also measure gRPC with coalesced acks (bench.null_server --coalesce)


QUICK = Sizes(
    points_1000=2_000_000,
    points_100=200_000,
    grpc_points=2_000_000,
    cancels=100,
    idle_streams=1000,
    helper_steps=50_000,
    sqlite_4x100=False,
    distinct_timestamps=False,
    coalesced_acks=False,
)
FULL = Sizes(
    points_1000=10_000_000,
    points_100=2_000_000,
    grpc_points=10_000_000,
    cancels=200,
    idle_streams=1000,
    helper_steps=300_000,
    sqlite_4x100=True,
    distinct_timestamps=True,
    coalesced_acks=True,
)


@dataclass
class Servers:
    null: RunningServer
    pg: RunningServer
    pg_control: Control
    sqlite: RunningServer
    sqlite_control: Control


async def _controlled(server: RunningServer) -> Control:
    control = Control(server.address)
    await control.setup()
    return control


async def start_servers(
    postgres: PostgresDatabase, sqlite: SqliteDatabase, logs: Path, started: Started
) -> Servers:
    """Every server the bench needs, started side by side before anything is measured."""

    async def pg() -> tuple[RunningServer, Control]:
        await asyncio.to_thread(postgres.create)
        await postgres.migrate()
        server = await start_simtrack(postgres.server_url, logs / "pg-server.log")
        started.servers.append(server)
        return server, await _controlled(server)

    async def lite() -> tuple[RunningServer, Control]:
        server = await start_simtrack(sqlite.server_url, logs / "sqlite-server.log")
        started.servers.append(server)
        return server, await _controlled(server)

    async def null() -> RunningServer:
        command = [sys.executable, "-m", "bench.null_server"]
        server = await start_process_server(command, logs / "null-server.log")
        started.servers.append(server)
        return server

    null_server, (pg_server, pg_control), (sqlite_server, sqlite_control) = await asyncio.gather(
        null(), pg(), lite()
    )
    return Servers(null_server, pg_server, pg_control, sqlite_server, sqlite_control)


async def grpc_part(
    report: Report,
    pool: WorkerPool,
    server: RunningServer,
    sizes: Sizes,
    logs: Path,
    started: Started,
) -> None:
    """The same workers against bench.null_server: what gRPC alone allows."""
    fake = [str(uuid.uuid4()) for _ in range(5)]
    await ingest_case(
        report, pool, "grpc_stream_limit", server, fake[:1], sizes.grpc_points, 1000, None
    )
    await ingest_case(
        report,
        pool,
        "grpc_stream_limit_4x1000",
        server,
        fake[1:],
        sizes.grpc_points,
        1000,
        None,
    )
    if sizes.coalesced_acks:
        command = [sys.executable, "-m", "bench.null_server", "--coalesce"]
        coalescing = await start_process_server(command, logs / "null-server-coalesce.log")
        started.servers.append(coalescing)
        name = "grpc_stream_limit_coalesced_acks"
        await ingest_case(report, pool, name, coalescing, fake[:1], sizes.grpc_points, 1000, None)
        await coalescing.stop()


async def helper_part(
    report: Report, control: Control, database: SqliteDatabase, steps: int, workdir: Path
) -> None:
    name = "helper_points_per_s"
    run_id = (await control.create_runs(1))[0]
    config = HelperConfig(control.target, run_id, steps, str(workdir / "spool"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.helper_worker",
        json.dumps(asdict(config)),
        cwd=ROOT,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        # normally a second or two; a helper that hangs (e.g. reconnecting forever) must not
        timeout = 20 + steps / 10_000
        record = await asyncio.wait_for(read_json(process, "helper"), timeout=timeout)
    except TimeoutError:
        record = {"error": f"no result within {timeout:.0f} s (killed)"}
    except (BenchError, json.JSONDecodeError) as exc:
        record = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    if "error" in record:
        reason = str(record["error"]).replace("\n", " ")[:300]
        report.add(name, math.nan, "points/s", note=f"helper not available: {reason}")
        return
    points = int(record["points"])
    seconds = float(record["seconds"])
    log_seconds = float(record["log_seconds"])
    report.add(
        name,
        points / seconds,
        "points/s",
        note=(
            f"{points:,} points in {seconds:.2f} s, one thread, 10 metrics per log_metrics,"
            " SQLite server, to the final ack"
        ),
        target=TARGETS[name],
    )
    report.add("helper_log_metrics_us", log_seconds / (points / 10) * 1e6, "us/call")
    chunks, stored = database.stored_points([run_id])
    if stored != points:
        raise BenchError(f"helper: the database holds {stored:,} points, {points:,} were logged")
    report.add("helper_verified", 1, note=f"{stored:,} points in {chunks:,} chunks")


async def idle_and_cancel_part(
    report: Report,
    sizes: Sizes,
    deadline: float,
    postgres: PostgresDatabase,
    logs: Path,
    started: Started,
) -> None:
    """A fresh PostgreSQL server: its RSS with up to 1,000 idle streams, then cancel latency
    on some of those live streams (commands travel by LISTEN/NOTIFY).
    """
    server = await start_simtrack(postgres.server_url, logs / "pg-idle-server.log")
    started.servers.append(server)
    control = await _controlled(server)
    streams = IdleStreams(control)
    try:
        before = server.rss_mb()
        await streams.open_until(sizes.idle_streams, deadline, least=sizes.cancels)
        await asyncio.sleep(1.0)
        after = server.rss_mb()
        count = len(streams)
        target = TARGETS["idle_streams_rss_mb"]
        report.add(
            f"idle_streams_{count}_rss_mb",
            after,
            "MB",
            note=(
                f"a fresh PostgreSQL server, {count} client connections, hello only;"
                f" {before:.0f} MB before creating their runs and opening them"
            ),
            target=target if count >= 1000 else None,
        )
        per_stream_kb = (after - before) * 1024 / count
        report.add("idle_stream_kb_each", per_stream_kb, "kB")
        if count < 1000:
            report.add(
                "idle_streams_1000_rss_mb_extrapolated",
                before + per_stream_kb * 1000 / 1024,
                "MB",
                note=f"from {count} streams (the --quick time budget); the full run opens 1000",
                target=target,
            )
        report.add(
            "create_run_ms",
            streams.create_s / count * 1000,
            "ms",
            note="CreateRun, 32 concurrent: server time per run",
        )
        report.add(
            "stream_hello_ms",
            streams.open_s / count * 1000,
            "ms",
            note="StreamRun hello -> welcome, 64 concurrent: server time per stream",
        )

        with report.phase("cancel latency"):
            cancels = await cancel_latency(control, streams.streams[: sizes.cancels])
        p50, p99, _ = summary(cancels.delivery_ms)
        rpc50, rpc99, _ = summary(cancels.rpc_ms)
        note = (
            f"{len(cancels.delivery_ms)} cancels one after another, each on a live stream"
            f" among {count}; CancelRun called -> command read by the worker; LISTEN/NOTIFY"
        )
        report.add("cancel_p50_ms", p50, "ms", note=note)
        report.add("cancel_p99_ms", p99, "ms", note=note, target=TARGETS["cancel_p99_ms"])
        report.add("cancel_max_ms", max(cancels.delivery_ms), "ms")
        report.add("cancel_rpc_p50_ms", rpc50, "ms", note="CancelRun's own round trip")
        report.add("cancel_rpc_p99_ms", rpc99, "ms")
    finally:
        await streams.close()
        await control.close()
        await server.stop()


async def _main(
    sizes: Sizes, quick: bool, admin_url: str, workdir: Path, profile: Path | None
) -> None:
    report = Report()
    if profile is not None:
        report.profiler = Profiler(profile)
        if not report.profiler.available():
            raise BenchError("--profile needs py-spy: pip install py-spy")
    begun = time.monotonic()
    logs = workdir / "logs"
    logs.mkdir()
    report.add("cpu_cores", os.cpu_count() or 0, "cores", note="client processes share them")
    report.add("mode_quick", int(quick))
    report.add(
        "machine_busy_before_cores",
        await asyncio.to_thread(machine_busy_cores, 1.0),
        "cores",
        note="CPU used by other processes in the second before the bench started",
    )
    postgres = PostgresDatabase(admin_url)
    sqlite = SqliteDatabase(workdir)
    started = Started()
    try:
        with report.phase("setup: servers, database, migration, worker processes"):
            pool, servers = await asyncio.gather(
                WorkerPool.start(4, started), start_servers(postgres, sqlite, logs, started)
            )
        await _measure(
            report, sizes, quick, begun, pool, servers, postgres, sqlite, workdir, started
        )
    finally:
        await started.stop()
        await asyncio.to_thread(postgres.drop)
    errors, first = server_log_errors(logs)
    report.add(
        "server_log_errors",
        errors,
        note=f"tracebacks and ERROR lines in the servers' logs; first: {first}" if errors else "",
    )
    for name, over, under in RATIOS:
        report.add(name, report.get(over) / report.get(under), "x")
    if report.other_load:
        report.add(
            "other_processes_cores_mean",
            sum(report.other_load) / len(report.other_load),
            "cores",
            note="CPU taken by processes not of this bench while its cases ran (lower is cleaner)",
        )
    report.add("bench_wall_s", time.monotonic() - begun, "s")
    report.table(f"simtrack ingest benchmark ({'quick' if quick else 'full'})")


RATIOS = [
    (
        "pg_ingest_4x1000_vs_copy_limit",
        "pg_ingest_4x1000_points_per_s",
        "copy_row_limit_rows_per_s",
    ),
    (
        "pg_ingest_1x1000_vs_grpc_limit",
        "pg_ingest_1x1000_points_per_s",
        "grpc_stream_limit_points_per_s",
    ),
    (
        "pg_ingest_4x1000_vs_grpc_limit_4x1000",
        "pg_ingest_4x1000_points_per_s",
        "grpc_stream_limit_4x1000_points_per_s",
    ),
    (
        "sqlite_ingest_1x1000_vs_grpc_limit",
        "sqlite_ingest_1x1000_points_per_s",
        "grpc_stream_limit_points_per_s",
    ),
]


async def _measure(
    report: Report,
    sizes: Sizes,
    quick: bool,
    begun: float,
    pool: WorkerPool,
    servers: Servers,
    postgres: PostgresDatabase,
    sqlite: SqliteDatabase,
    workdir: Path,
    started: Started,
) -> None:
    """Each part in turn, nothing measured alongside anything else."""
    logs = workdir / "logs"
    await grpc_part(report, pool, servers.null, sizes, logs, started)
    await servers.null.stop()

    pg_cases = [
        (4, 1000, sizes.points_1000),
        (1, 1000, sizes.points_1000),
        (4, 100, sizes.points_100),
        (1, 100, sizes.points_100),
    ]
    await ingest_cases(
        report, pool, "pg_ingest", servers.pg, servers.pg_control, postgres, pg_cases
    )
    if sizes.distinct_timestamps:  # the bench's batches share one timestamp, stored once
        run_ids = await servers.pg_control.create_runs(4)
        await ingest_case(
            report,
            pool,
            "pg_ingest_4x1000_distinct_ts",
            servers.pg,
            run_ids,
            sizes.points_1000,
            1000,
            postgres,
            distinct_timestamps=True,
        )
    pg_peak = servers.pg.peak_rss_mb()
    report.add("pg_server_peak_rss_mb", pg_peak, "MB", note="VmHWM after the pg cases")
    await servers.pg_control.close()
    await servers.pg.stop()

    with report.phase("copy limit"):
        figures = await asyncio.to_thread(copy_limit, postgres.url(), sizes.points_1000)
    report.add(
        "copy_row_limit_rows_per_s",
        figures.rows_per_s,
        "rows/s",
        note=(
            f"{figures.rows:,} rows in {figures.seconds:.2f} s, one connection,"
            " btree (run_id, metric, step), to COMMIT"
        ),
    )

    sqlite_cases = [
        (4, 1000, sizes.points_1000),
        (1, 1000, sizes.points_1000),
        (1, 100, sizes.points_100),
    ]
    if sizes.sqlite_4x100:
        sqlite_cases.append((4, 100, sizes.points_100))
    await ingest_cases(
        report, pool, "sqlite_ingest", servers.sqlite, servers.sqlite_control, sqlite, sqlite_cases
    )
    await pool.stop()
    with report.phase("helper"):
        await helper_part(report, servers.sqlite_control, sqlite, sizes.helper_steps, workdir)
    sqlite_peak = servers.sqlite.peak_rss_mb()
    report.add("sqlite_server_peak_rss_mb", sqlite_peak, "MB", note="VmHWM, sqlite cases")
    await servers.sqlite_control.close()
    await servers.sqlite.stop()
    report.add("server_peak_rss_mb", max(pg_peak, sqlite_peak), "MB", note="both servers")

    with report.phase("idle streams and cancel latency"):
        deadline = begun + QUICK_BUDGET_S - QUICK_RESERVE_S if quick else math.inf
        await idle_and_cancel_part(report, sizes, deadline, postgres, logs, started)


def server_log_errors(logs: Path) -> tuple[int, str]:
    """How many tracebacks/ERROR lines the servers logged, and the first one's gist."""
    count = 0
    first = ""
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback") or " ERROR " in line:
                count += 1
                if not first:
                    gist = line
                    if line.startswith("Traceback"):  # the exception line ends the traceback
                        rest = lines[index + 1 :]
                        gist = next((x for x in rest if x and not x[0].isspace()), line)
                    first = f"{log.name}: {gist.strip()[:200]}"
    return count, first


def run_ingest(
    quick: bool, admin_url: str, keep_logs: bool = False, profile: Path | None = None
) -> int:
    sizes = QUICK if quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="simtrack-bench-"))
    failed = True
    try:
        asyncio.run(_main(sizes, quick, admin_url, workdir, profile))
        failed = False
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
    finally:
        if keep_logs or failed:
            print(f"# server logs kept in {workdir / 'logs'}", file=sys.stderr)
            for path in workdir.iterdir():
                if path.is_dir() and path.name != "logs":
                    shutil.rmtree(path, ignore_errors=True)
                elif path.is_file():
                    path.unlink(missing_ok=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0
