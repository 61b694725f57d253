"""The ingest bench's worker processes and cases: a pool of stream workers
(``bench/stream_worker.py`` run as child processes), and one measured case of them against a
server, checked against what the database stored.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.control import Control
from bench.infra import (
    CpuMeter,
    PostgresDatabase,
    RunningServer,
    child_env,
)
from bench.report import Report, Target
from bench.stream_worker import WorkerConfig, WorkerResult

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 32

TARGETS = {
    "pg_ingest_4x1000_points_per_s": Target(3_000_000),
    "pg_ingest_1x1000_points_per_s": Target(2_000_000),
    "sqlite_ingest_1x1000_points_per_s": Target(1_500_000),
    "sqlite_ingest_4x1000_points_per_s": Target(1_500_000),
    "helper_points_per_s": Target(500_000),
    "cancel_p99_ms": Target(100, at_least=False),
    "idle_streams_rss_mb": Target(300, at_least=False),
}


class StoredPoints(Protocol):
    @property
    def pg_database(self) -> str | None: ...

    def stored_points(self, run_ids: Sequence[str]) -> tuple[int, int]: ...


class BenchError(RuntimeError):
    """A measurement could not be made or its result is wrong: the bench fails loudly."""


async def read_json(process: asyncio.subprocess.Process, what: str) -> dict[str, Any]:
    assert process.stdout is not None
    line = await process.stdout.readline()
    if not line:
        await process.wait()
        raise BenchError(f"{what}: the process exited ({process.returncode}) early")
    record: dict[str, Any] = json.loads(line)
    if "error" in record and what != "helper":
        raise BenchError(f"{what}: {record['error']}")
    return record


class WorkerPool:
    """Worker processes started once, each serving one stream per case (bench.stream_worker)."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    @classmethod
    async def start(cls, count: int, started: Started) -> WorkerPool:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.stream_worker",
                cwd=ROOT,
                env=child_env(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(count)
        ]
        pool = cls(processes)
        started.pools.append(pool)
        return pool

    async def _send(self, process: asyncio.subprocess.Process, line: str) -> None:
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        await process.stdin.drain()

    async def prepare(self, configs: Sequence[WorkerConfig]) -> list[float]:
        """Each worker builds its messages (once per shape), connects and says hello."""
        if len(configs) > len(self.processes):
            raise BenchError(f"{len(configs)} workers wanted, the pool has {len(self.processes)}")
        workers = self.processes[: len(configs)]
        for process, config in zip(workers, configs, strict=True):
            await self._send(process, json.dumps(asdict(config)))
        ready = await asyncio.gather(*(read_json(p, "ready") for p in workers))
        return [float(r["build_s"]) for r in ready]

    async def go(self, count: int) -> list[WorkerResult]:
        """Start the prepared workers together; collect their results."""
        workers = self.processes[:count]
        for process in workers:
            await self._send(process, "go")
        records = await asyncio.gather(*(read_json(p, "result") for p in workers))
        return [WorkerResult(**record["result"]) for record in records]

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                try:
                    await self._send(process, "exit")
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def ingest_case(
    report: Report,
    pool: WorkerPool,
    name: str,
    server: RunningServer,
    run_ids: Sequence[str],
    points: int,
    batch: int,
    database: StoredPoints | None,
    distinct_timestamps: bool = False,
) -> float:
    """One case: len(run_ids) workers, ``points`` in all; prints its rate and verification."""
    per_worker = points // len(run_ids)
    configs = [
        WorkerConfig(
            server.address,
            run_id,
            per_worker,
            batch,
            WINDOW,
            distinct_timestamps=distinct_timestamps,
        )
        for run_id in run_ids
    ]
    with report.phase(f"{name} (build, connect)"):
        await pool.prepare(configs)
    pg_database = database.pg_database if database is not None else None
    profiler = report.profiler
    spy = await profiler.start(server.pid, name) if profiler is not None else None
    meter = CpuMeter(server.pid, pool.pids[: len(configs)], pg_database)
    with report.phase(f"{name} (stream)"):
        results = await pool.go(len(configs))
    cpu = meter.stop()
    if profiler is not None and spy is not None:
        report.info(f"server profile: {await profiler.stop(spy, name)}")
    sent = sum(r.points for r in results)
    messages = sum(r.messages for r in results)
    elapsed = max(r.last_ack for r in results) - min(r.first_send for r in results)
    rate = sent / elapsed
    in_flight = max(r.max_in_flight for r in results)
    report.add(
        f"{name}_points_per_s",
        rate,
        "points/s",
        note=(
            f"{sent:,} points, {messages:,} messages, {elapsed:.2f} s,"
            f" max in flight {in_flight}; {cpu.describe()}"
        ),
        target=TARGETS.get(f"{name}_points_per_s"),
    )
    report.add(
        f"{name}_server_cpu_us_per_message",
        cpu.server * elapsed / messages * 1e6,
        "us",
        note="server process CPU time per message",
    )
    if pg_database is not None:
        report.add(
            f"{name}_postgres_cpu_us_per_message",
            cpu.postgres * elapsed / messages * 1e6,
            "us",
            note="PostgreSQL CPU time (this database's backends, WAL writer, ...) per message",
        )
    report.other_load.append(cpu.other)
    if isinstance(database, PostgresDatabase):
        chunks, _, commits = database.stored_chunks(list(run_ids))
        report.add(
            f"{name}_messages_per_commit",
            chunks / max(commits, 1),
            "",
            note=f"{commits:,} group commits (distinct xmin of the chunks and staged messages),"
            " all streams together",
        )
    if database is not None:
        # Rows: a chunk (or, staged, a row) per message as written; fewer once compaction
        # moved staged messages into chunks, so the points are what is checked.
        rows, stored = database.stored_points(list(run_ids))
        if stored != sent or rows > messages:
            raise BenchError(
                f"{name}: the database holds {stored:,} points in {rows:,} rows,"
                f" {sent:,} points in {messages:,} messages were sent"
            )
        report.add(f"{name}_verified", 1, note=f"{stored:,} points stored exactly once")
    return rate


async def ingest_cases(
    report: Report,
    pool: WorkerPool,
    prefix: str,
    server: RunningServer,
    control: Control,
    database: StoredPoints,
    cases: Sequence[tuple[int, int, int]],
) -> None:
    for workers, batch, points in cases:
        run_ids = await control.create_runs(workers)
        await ingest_case(
            report,
            pool,
            f"{prefix}_{workers}x{batch}",
            server,
            run_ids,
            points,
            batch,
            database,
        )


@dataclass
class Started:
    """What has been started, to be stopped whatever happens."""

    pools: list[WorkerPool] = field(default_factory=list)
    servers: list[RunningServer] = field(default_factory=list)

    async def stop(self) -> None:
        for pool in self.pools:
            await pool.stop()
        for server in self.servers:
            await server.stop()
