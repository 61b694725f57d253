"""Databases and server processes for the benchmarks.

Servers are launched by the e2e tests' launcher (tests/support/processes.py); what is the
bench's own is the environment they get and what is measured of them. Every process started
here inherits this process's environment, so ``PYTHONPATH`` (which picks the worktree's code
over the installed one) reaches servers and workers alike.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.support.databases import APP_ROLE
from tests.support.processes import ServerFailed, ServerProcess, serve_command, simtrack_command


def run_bench(name: str, main: Callable[[Path], Coroutine[Any, Any, None]]) -> int:
    """Run ``main`` in a fresh temporary folder (removed after); 1 if it fails (RuntimeError,
    said on stderr), else 0: a bench command's exit code.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"simtrack-bench-{name}-"))
    try:
        asyncio.run(main(workdir))
    except RuntimeError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. VmRSS or VmHWM (peak resident set)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


class PostgresDatabase:
    """A fresh database on the benchmark's PostgreSQL, migrated, served by the app role."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"simtrack_bench_{uuid.uuid4().hex[:12]}"
        base = psycopg.conninfo.conninfo_to_dict(admin_url)
        self.host = str(base.get("host", "127.0.0.1"))
        self.port = int(str(base.get("port", 5432)))
        self.superuser = str(base.get("user", "postgres"))
        self.created = False

    def url(self, user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{self.name}"

    @property
    def server_url(self) -> str:
        return self.url(APP_ROLE)

    @property
    def pg_database(self) -> str | None:
        """The PostgreSQL database whose backends count as this bench's CPU."""
        return self.name

    def create(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.created = True

    async def migrate(self) -> None:
        command = simtrack_command(
            "--log-level",
            "warning",
            "migrate",
            "--database-url",
            self.url(),
            "--app-role",
            APP_ROLE,
        )
        process = await asyncio.create_subprocess_exec(
            *command,
            env=child_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"simtrack migrate failed:\n{output.decode(errors='replace')}")

    def vacuum(self) -> None:
        """What autovacuum does once a load's inserts and updates settle: this machine's
        PostgreSQL runs with autovacuum off (a CI setting), so its tables are never vacuumed or
        analysed; a default one would have done both within its naptime (a minute). The runs'
        and metrics' tables are vacuumed (their updates leave dead row versions), the chunks'
        only analysed (inserted once, rewritten by compaction only).
        """
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE runs, metrics, experiments")
            connection.execute("ANALYZE metric_chunks")

    def drop(self) -> None:
        if not self.created:
            return
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )
        self.created = False

    def stored_points(self, run_ids: Sequence[str]) -> tuple[int, int]:
        """(chunks, points) stored for ``run_ids``, read as the superuser (past row security)."""
        chunks, points, _ = self.stored_chunks(run_ids)
        return chunks, points

    def stored_chunks(self, run_ids: Sequence[str]) -> tuple[int, int, int]:
        """(rows, points, transactions that wrote them) of the runs' chunks and staged
        messages, in one statement (a move between two reads would count its points twice or
        not at all): xmin tells the group commits apart.
        """
        with psycopg.connect(self.url()) as connection:
            row = connection.execute(
                "SELECT count(*), coalesce(sum(n), 0), count(DISTINCT x) FROM ("
                " SELECT xmin::text::bigint AS x, n FROM metric_chunks WHERE metric_id IN"
                " (SELECT id FROM metrics WHERE run_id = ANY(%s))"
                " UNION ALL SELECT xmin::text::bigint, points FROM staged_messages"
                " WHERE run_id = ANY(%s)) AS stored",
                (list(run_ids), list(run_ids)),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])


class SqliteDatabase:
    """A temporary SQLite file (the server migrates it on start-up)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"bench-{uuid.uuid4().hex[:8]}.db"

    @property
    def server_url(self) -> str:
        return f"sqlite:///{self.path}"

    @property
    def pg_database(self) -> str | None:
        return None

    def stored_points(self, run_ids: Sequence[str]) -> tuple[int, int]:
        marks = ",".join("?" * len(run_ids))
        query = (
            "SELECT count(*), coalesce(sum(n), 0) FROM (SELECT n FROM metric_chunks"
            f" WHERE metric_id IN (SELECT id FROM metrics WHERE run_id IN ({marks}))"
            f" UNION ALL SELECT points FROM staged_messages WHERE run_id IN ({marks}))"
        )
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            row = connection.execute(query, [*run_ids, *run_ids]).fetchone()
        finally:
            connection.close()
        return int(row[0]), int(row[1])


class RunningServer:
    """A server the bench measures: tests/support's launcher (the one the e2e tests use) and
    readings of its process.
    """

    def __init__(self, process: ServerProcess, address: str) -> None:
        self.process = process
        self.address = address

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, SIGKILL after ``timeout`` (a bench only notes it: the numbers are taken)."""
        await asyncio.to_thread(self.process.stop, timeout)
        if self.process.ignored_sigterm:
            print(f"bench: {self.process.name} ignored SIGTERM, killed", file=sys.stderr)


async def start_process_server(
    command: Sequence[str], log_path: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> RunningServer:
    """Start a server that logs ``simtrack serving on HOST:PORT`` and wait for that line.

    It runs in this process's working directory (``python -m bench.null_server`` needs it);
    its output goes to ``log_path``.
    """
    name = " ".join(command[-4:])  # e.g. serve --listen ... or -m bench.null_server
    process = ServerProcess(
        command, Path.cwd(), env or child_env(), log_path=log_path, name=name, merge_stdout=True
    )
    process.start()
    try:
        address = await asyncio.to_thread(process.wait_serving, timeout)
    except ServerFailed as exc:
        await asyncio.to_thread(process.kill)
        raise RuntimeError(str(exc)[-3000:]) from None
    return RunningServer(process, address)


async def start_simtrack(database_url: str, log_path: Path, **settings: Any) -> RunningServer:
    """``simtrack serve`` (this interpreter's, so it sees PYTHONPATH) with SIMTRACK_* settings."""
    extra = {f"SIMTRACK_{key.upper()}": str(value) for key, value in settings.items()}
    extra.setdefault("SIMTRACK_SHUTDOWN_GRACE", "3")
    extra.setdefault("SIMTRACK_HTTP_LISTEN", "")  # gRPC only, unless a bench asks for HTTP
    command = serve_command(database_url, simtrack=simtrack_command())
    return await start_process_server(command, log_path, child_env(**extra))


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def postgres_pids(database: str | None = None) -> list[int]:
    """PostgreSQL's processes: its own (WAL writer, checkpointer, ...) and the backends of
    ``database`` (all backends when None), not other databases' (other users of the machine).
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() != "postgres":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                title = cmdline.read().decode(errors="replace")
        except OSError:
            continue
        backend = "(" in title or "[local]" in title
        if database is None or not backend or f" {database} " in title:
            pids.append(int(entry))
    return pids


def machine_idle_s() -> float:
    """Idle + iowait CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return (int(fields[4]) + int(fields[5])) / _TICK


def machine_busy_cores(seconds: float) -> float:
    """Cores in use over the next ``seconds`` (blocking), by whatever runs on the machine."""
    idle = machine_idle_s()
    time.sleep(seconds)
    return max(0.0, (os.cpu_count() or 1) - (machine_idle_s() - idle) / seconds)


@dataclass
class CpuUse:
    """Where the machine's cores went during a measurement, in cores (CPU s per wall s)."""

    server: float
    postgres: float
    workers: float
    idle: float
    other: float  # everything else on the machine

    def describe(self) -> str:
        return (
            f"cores: server {self.server:.2f}, postgres {self.postgres:.2f},"
            f" workers {self.workers:.2f}, other processes {self.other:.2f},"
            f" idle {self.idle:.2f}"
        )


class CpuMeter:
    """CPU seconds of the server, the workers, PostgreSQL and idleness, between two points.

    PostgreSQL processes born meanwhile count from zero; ones that ended meanwhile are lost.
    """

    def __init__(
        self, server_pid: int, worker_pids: Sequence[int], database: str | None = None
    ) -> None:
        self.server_pid = server_pid
        self.worker_pids = list(worker_pids)
        self.database = database
        self.started = time.monotonic()
        self.server = process_cpu_s(server_pid)
        self.workers = sum(process_cpu_s(pid) for pid in self.worker_pids)
        self.postgres = {pid: process_cpu_s(pid) for pid in self._postgres_pids()}
        self.idle = machine_idle_s()

    def _postgres_pids(self) -> list[int]:
        # no database: nothing of PostgreSQL belongs to this measurement
        return postgres_pids(self.database) if self.database else []

    def stop(self) -> CpuUse:
        wall = max(time.monotonic() - self.started, 1e-9)
        postgres = sum(
            process_cpu_s(pid) - self.postgres.get(pid, 0.0) for pid in self._postgres_pids()
        )
        use = CpuUse(
            server=(process_cpu_s(self.server_pid) - self.server) / wall,
            postgres=postgres / wall,
            workers=(sum(process_cpu_s(pid) for pid in self.worker_pids) - self.workers) / wall,
            idle=(machine_idle_s() - self.idle) / wall,
            other=0.0,
        )
        use.other = max(
            0.0, (os.cpu_count() or 1) - use.idle - use.server - use.postgres - use.workers
        )
        return use
