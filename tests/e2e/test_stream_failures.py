"""Telemetry streams through failures: crashed servers, cut connections, killed database
connections, several servers on one database, and dying workers.

Every test ends by reading the database directly and comparing counts and checksums with
what was sent: each point stored exactly once, bit for bit (0 lost, 0 duplicated). The raw
worker (the ``streams`` fixture's Upload) resends after the welcome's watermark, the way the
protocol says a worker must; the last tests use the real worker helper
(``simtrack.client.Worker``) in this process and in worker processes that are ``kill -9``ed.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from psycopg import sql

from simtrack.client import Worker, WorkerOptions, sync_spool
from simtrack.v1 import runs_pb2, runs_pb2_grpc, telemetry_pb2
from tests.support import Checksum, Server, StartServer, StreamKit, wait_status

POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)
SERVING = health_pb2.HealthCheckResponse.SERVING
RUNNING = runs_pb2.RUN_STATUS_RUNNING
COMPLETED = runs_pb2.RUN_STATUS_COMPLETED
STOPPED = runs_pb2.RUN_STATUS_STOPPED
FAILED = runs_pb2.RUN_STATUS_FAILED
Request = telemetry_pb2.StreamRunRequest


def get_run(server: Server, run_id: str) -> runs_pb2.Run:
    return server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_exactly_once(
    streams: StreamKit, database_url: str, run_id: str, expected: dict[str, Checksum]
) -> None:
    """The run's stored points are the expected ones, each once (and the summaries agree)."""
    stored = streams.database(database_url).checksums(run_id)
    for name, want in expected.items():
        got = stored.get(name)
        assert got is not None, f"{name}: nothing stored"
        lost_or_extra = got.count - want.count
        assert got == want, f"{name}: {lost_or_extra:+d} points against what was sent"
    assert set(stored) == set(expected)


# Several servers on one PostgreSQL


@POSTGRES_ONLY
async def test_commands_and_watches_cross_server_processes(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    """A worker streams to B; CancelRun and WatchRun go to A (LISTEN/NOTIFY in between)."""
    a, b = start_server(served_url), start_server(served_url)
    run = streams.new_run(a, total_ticks=100)
    watch = runs_pb2_grpc.RunServiceStub(streams.channel(a.address)).WatchRun(
        runs_pb2.WatchRunRequest(id=run.id)
    )
    worker = await streams.open(b, run.id)

    async def watched_on_a(tick: int) -> float:
        """Seconds until A's watcher reports ``tick`` (written through B)."""
        started = time.monotonic()
        async with asyncio.timeout(10):
            while True:
                update = await watch.read()
                assert isinstance(update, runs_pb2.WatchRunResponse)
                if update.run.current_tick == tick:
                    return time.monotonic() - started

    for seq, tick in enumerate((10, 20, 30), start=1):
        await worker.send(Request(seq=seq, progress=telemetry_pb2.Progress(tick=tick)))
        # Well under WatchRun's 5 s re-read: the notification carried it.
        assert await watched_on_a(tick) < 2.5

    sent = a.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="from A")).command
    received = await worker.wait_command("cancel", timeout=5)
    assert received.id == sent.id
    pause = a.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id)).command
    assert (await worker.wait_command("pause", timeout=5)).id == pause.id

    stopped = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_STOPPED)
    await worker.send(Request(seq=4, status=stopped))
    async with asyncio.timeout(10):
        while True:
            update = await watch.read()
            assert isinstance(update, runs_pb2.WatchRunResponse), "ended before the stop"
            if update.run.status == STOPPED:
                break
        assert await watch.read() is grpc.aio.EOF, "the watch ends with the run"
    assert get_run(a, run.id).status == STOPPED


# A crashed server


async def test_server_killed_mid_stream_loses_and_duplicates_nothing(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    data = streams.dataset(120)  # 240,000 points
    first = start_server(served_url)
    run = streams.new_run(first)
    target = [first.address]
    upload = streams.upload(lambda: target[0], run.id, data.messages)
    uploading = asyncio.create_task(upload.run())
    await upload.wait_acked(40)
    first.kill()  # kill -9: no goodbye, whatever was in flight is gone
    acked_before = upload.acked
    assert acked_before < 120, "the upload finished before the kill"
    second = await asyncio.to_thread(start_server, served_url)
    target[0] = second.address
    await uploading

    assert upload.reconnects >= 1
    assert upload.welcomes[-1] >= acked_before, "an acknowledged batch did not survive"
    assert_exactly_once(streams, database_url, run.id, data.checksums())
    db = streams.database(database_url)
    assert db.committed_seq(run.id) == 120
    assert all(m.seqs == list(range(1, 121)) for m in db.metrics(run.id).values())
    assert get_run(second, run.id).status == RUNNING


# Lost acks


async def test_connections_cut_at_random_moments_lose_and_duplicate_nothing(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    server = start_server(served_url)
    run = streams.new_run(server)
    data = streams.dataset(400, points=500)  # 400,000 points, ~11 kB per message
    proxy = await streams.proxy(server.address, seed=20251123, max_cuts=10)
    upload = streams.upload(lambda: proxy.address, run.id, data.messages)
    await upload.run()

    # Connections get budgets until ten are cut; the last of them may carry the rest of the
    # upload before spending its budget (how much is left then depends on the machine's
    # speed: CI saw 9 cuts).
    report = (proxy.cuts, proxy.armed, proxy.unspent, upload.welcomes, upload.endings)
    assert proxy.cuts >= 9, report
    assert upload.reconnects >= proxy.cuts
    assert proxy.cuts_toward["client"] >= 2, "no acks were cut off"
    assert proxy.cuts_toward["server"] >= 2, "no batches were cut off"
    # Some welcomes were ahead of the last ack the worker got: those acks were lost, the
    # batches stored, and their resends only re-acknowledged.
    assert upload.lost_acks > 0
    assert_exactly_once(streams, database_url, run.id, data.checksums())
    assert streams.database(database_url).committed_seq(run.id) == 400


# Database connections killed under the server


@POSTGRES_ONLY
async def test_terminated_database_connections_lose_nothing_and_the_server_recovers(
    served_url: str,
    start_server: StartServer,
    streams: StreamKit,
    database_url: str,
) -> None:
    server = start_server(served_url)
    run = streams.new_run(server)
    data = streams.dataset(240, points=500)
    database = database_url.rpartition("/")[2]

    def terminate() -> int:
        """pg_terminate_backend on every connection of the server (as the superuser)."""
        with psycopg.connect(database_url, autocommit=True) as admin:
            rows = admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = %s and usename = 'simtrack_app'",
                (database,),
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    # Paced (~5 s in all), so that every round of terminations hits a running stream.
    upload = streams.upload(lambda: server.address, run.id, data.messages, 120, pace=0.02)
    uploading = asyncio.create_task(upload.run())
    terminated = 0
    for progress in (20, 60, 100, 140, 180):  # kill them again and again, mid-stream
        await upload.wait_acked(progress, timeout=60)
        assert not uploading.done(), f"the upload ended before the round at {progress}"
        terminated += await asyncio.to_thread(terminate)
        # Let the server reconnect before the next round (two rounds within its one NOTIFY
        # retry hit the bug of test_a_notify_connection_that_cannot_reconnect_yet_...).
        await asyncio.sleep(0.5)
    await uploading
    assert terminated >= 5

    assert_exactly_once(streams, database_url, run.id, data.checksums())
    assert streams.database(database_url).committed_seq(run.id) == 240
    # The same process serves again: health, a new stream, and commands (LISTEN reconnected).
    deadline = time.monotonic() + 15
    while (
        server.health_status() != SERVING
        or server.health_status("simtrack.v1.RunService") != SERVING
    ):
        assert time.monotonic() < deadline, "health did not come back to SERVING"
        await asyncio.sleep(0.2)
    assert server.process.process.poll() is None
    stream = await streams.open(server, run.id)
    assert stream.welcome is not None and stream.welcome.committed_seq == 240
    deadline = time.monotonic() + 15
    while not stream.commands:  # a command published before LISTEN is back is missed
        assert time.monotonic() < deadline, "commands never reached the stream again"
        server.runs.SendCommand(runs_pb2.SendCommandRequest(id=run.id, name="ping"))
        await asyncio.sleep(0.5)
    assert stream.commands[0].name == "ping"


@POSTGRES_ONLY
@pytest.mark.allow_server_errors  # the test checks the statuses and the log itself
async def test_a_notify_connection_that_cannot_reconnect_yet_fails_no_call(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    """The NOTIFY publisher is lost while new connections are refused for a moment."""
    server = start_server(served_url)
    run = streams.new_run(server)
    worker = await streams.open(server, run.id)
    server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))  # the publisher is connected
    await worker.wait_command("pause")
    database = sql.Identifier(database_url.rpartition("/")[2])
    with psycopg.connect(database_url, autocommit=True) as admin:
        try:
            admin.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database))
            killed = admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s "
                "and usename = 'simtrack_app' and query like '%%pg_notify%%'",
                (database_url.rpartition("/")[2],),
            ).fetchall()
            assert killed == [(True,)], "the publisher connection was not found"
            try:
                server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="now"))
                cancel = grpc.StatusCode.OK
            except grpc.RpcError as error:
                cancel = error.code()
            await worker.send(Request(seq=1, progress=telemetry_pb2.Progress(tick=5)))
            await worker.wait_acked(1)  # stored; its watchers' notification cannot go out
            await asyncio.sleep(0.5)
        finally:
            admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(database))
    server.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=run.id))
    await worker.wait_command("resume")  # commands flow again once connections are allowed
    assert server.stop() == 0
    assert cancel in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), cancel
    assert "Traceback" not in server.stderr, server.stderr


# The worker helper (simtrack.client.Worker)


def point_values(steps: range) -> dict[str, list[float]]:
    """What the worker scripts log: deterministic, and identical in every process."""
    return {
        "a": [math.sin(step * 0.001) * 3.0 + step for step in steps],
        "b": [step * 0.5 - 7.25 for step in steps],
    }


def expected_checksums(streams: StreamKit, steps: range) -> dict[str, Checksum]:
    step_array = np.array(steps, dtype="<i8")
    return {
        name: streams.checksum(step_array, np.array(column, dtype="<f8"))
        for name, column in point_values(steps).items()
    }


WORKER_SCRIPT = textwrap.dedent(
    """
    import math, sys, time
    from simtrack.client import Worker, WorkerOptions

    target, run_id, spool_dir, start, middle, stop = sys.argv[1:7]
    start, middle, stop = int(start), int(middle), int(stop)
    options = WorkerOptions(backoff_base=0.05, backoff_cap=0.5, close_timeout=60)

    def log(worker, steps):
        for step in steps:
            worker.log_metrics(step, {
                "a": math.sin(step * 0.001) * 3.0 + step,
                "b": step * 0.5 - 7.25,
            })

    worker = Worker(target, run_id, spool_dir=spool_dir, options=options)
    with worker:
        log(worker, range(start, middle))
        if middle < stop:
            assert worker.flush(timeout=60), "not acknowledged"
            print("flushed", flush=True)
            sys.stdin.readline()  # the test takes the server away meanwhile
            log(worker, range(middle, stop))
            # flush() spools everything first, then waits for acks that cannot come.
            assert not worker.flush(timeout=3.0), "acknowledged without a server"
            print("spooled", flush=True)
            time.sleep(600)  # until kill -9
    print("done", flush=True)
    """
)


async def read_line(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The worker process's next line of output; the caller kills the process afterwards
    (which also ends a read still waiting).
    """
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout)
    return line.strip()


def start_worker(
    target: str, run_id: str, spool: Path, start: int, middle: int, stop: int
) -> subprocess.Popen[str]:
    """A worker process running WORKER_SCRIPT (PYTHONPATH and all inherited)."""
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, target, run_id, str(spool)]
        + [str(start), str(middle), str(stop)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def spooled(spool: Path, run_id: str, above: int) -> tuple[int, int]:
    """(messages, points) waiting in a run's spool file with a seq above ``above``.

    (Acknowledged messages may linger there too: the helper trims in batches.)
    """
    with sqlite3.connect(spool / f"{run_id}.sqlite") as connection:
        messages, points = connection.execute(
            "select count(*), coalesce(sum(points), 0) from messages where seq > ?", (above,)
        ).fetchone()
    return int(messages), int(points)


async def test_worker_helper_rides_out_a_server_crash_by_itself(
    served_url: str,
    start_server: StartServer,
    streams: StreamKit,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Kill -9 of the server mid-stream, restart on the same port: the helper carries on."""
    listen = f"127.0.0.1:{free_port()}"
    first = start_server(served_url, listen=listen)
    run = streams.new_run(first)
    steps = range(120_000)  # 240,000 points
    values = point_values(steps)
    spool = tmp_path / "spool"
    options = WorkerOptions(backoff_base=0.05, backoff_cap=0.5, close_timeout=60)
    restarted: list[Server] = []

    def simulate() -> None:
        with Worker(listen, run.id, spool_dir=spool, options=options) as worker:
            for step in steps:
                worker.log_metrics(step, {"a": values["a"][step], "b": values["b"][step]})
                if step == 30_000:
                    assert worker.flush(timeout=30), "nothing acknowledged before the crash"
                elif step == 60_000:
                    first.kill()
                    restarted.append(start_server(served_url, listen=listen))

    await asyncio.wait_for(asyncio.to_thread(simulate), 90)

    assert restarted and restarted[0].address == listen
    assert_exactly_once(streams, database_url, run.id, expected_checksums(streams, steps))
    assert get_run(restarted[0], run.id).status == COMPLETED
    assert not (spool / f"{run.id}.sqlite").exists(), "the spool outlived a completed run"


async def test_the_worker_helpers_paused_flag_follows_the_run_across_reconnects(
    served_url: str, start_server: StartServer, streams: StreamKit, tmp_path: Path
) -> None:
    """Paused before the helper connects, resumed while it is away: its flag follows."""
    listen = f"127.0.0.1:{free_port()}"
    first = start_server(served_url, listen=listen)
    run = streams.new_run(first)
    await (await streams.open(first, run.id)).close()  # running, and no worker connected
    first.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    options = WorkerOptions(backoff_base=0.05, backoff_cap=0.5)

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, f"not within 20s: {what}"
            time.sleep(0.02)

    def work() -> None:
        with Worker(listen, run.id, spool_dir=tmp_path, options=options) as worker:
            until(lambda: worker.paused, "paused by the welcome")
            assert not worker.wait_if_paused(timeout=0.1)
            first.kill()  # the helper is away while another server resumes the run
            other = start_server(served_url)
            other.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=run.id))
            other.stop()
            restarted.append(start_server(served_url, listen=listen))
            until(lambda: not worker.paused, "resumed by the welcome after reconnecting")
            worker.log_metrics(1, {"x": 1.0})

    restarted: list[Server] = []
    await asyncio.wait_for(asyncio.to_thread(work), 90)
    assert get_run(restarted[0], run.id).status == COMPLETED


@pytest.mark.parametrize("resume", ["second worker", "sync_spool"])
async def test_a_killed_worker_process_loses_nothing_that_was_spooled(
    resume: str,
    served_url: str,
    start_server: StartServer,
    streams: StreamKit,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Worker process kill -9 with 100,000 points spooled, unsent; then resume: 0 lost."""
    listen = f"127.0.0.1:{free_port()}"
    first = start_server(served_url, listen=listen)
    run = streams.new_run(first)
    spool = tmp_path / "spool"
    worker = start_worker(listen, run.id, spool, 0, 50_000, 100_000)
    try:
        assert await read_line(worker) == "flushed"  # 0..49,999 stored
        first.kill()  # from here the worker can only spool
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert await read_line(worker) == "spooled"
    finally:
        worker.kill()  # kill -9
        worker.wait(10)
    committed = streams.database(database_url).committed_seq(run.id)
    messages, points = spooled(spool, run.id, above=committed)
    assert messages > 0 and points == 100_000, f"{points} points spooled, not 50,000 x 2"
    assert streams.database(database_url).checksums(run.id) == expected_checksums(
        streams, range(50_000)
    )

    second = start_server(served_url, listen=listen)
    if resume == "second worker":
        finisher = start_worker(listen, run.id, spool, 100_000, 110_000, 110_000)
        try:
            assert await read_line(finisher, 90) == "done"
            assert await asyncio.to_thread(finisher.wait, 30) == 0
        finally:
            finisher.kill()
            finisher.wait(10)
        expected = range(110_000)
        assert get_run(second, run.id).status == COMPLETED
    else:
        uploaded = await asyncio.to_thread(sync_spool, listen, spool, timeout=60)
        assert {run_id: report.messages for run_id, report in uploaded.items()} == {
            run.id: messages
        }
        assert (uploaded[run.id].points, uploaded[run.id].left) == (100_000, None)
        expected = range(100_000)
        assert get_run(second, run.id).status == RUNNING, "sync adds no final status"
    assert_exactly_once(streams, database_url, run.id, expected_checksums(streams, expected))


# Outages longer than the heartbeat timeout (late data)

QUICK_LIVENESS = {"SIMTRACK_HEARTBEAT_TIMEOUT": "1.5", "SIMTRACK_HEARTBEAT_INTERVAL": "0.2"}


async def test_a_worker_alive_through_a_server_outage_longer_than_the_timeout_loses_nothing(
    served_url: str,
    start_server: StartServer,
    streams: StreamKit,
    database_url: str,
    tmp_path: Path,
) -> None:
    """The server is gone for twice the heartbeat timeout while the worker goes on logging:
    after the restart the run is not failed, the worker reconnects, every point lands once.
    """
    listen = f"127.0.0.1:{free_port()}"
    # The worker must be back within the timeout after the restart: ~1-2 s (its reconnect
    # backoff is capped), with room to spare on a loaded machine.
    liveness = {"SIMTRACK_HEARTBEAT_TIMEOUT": "3", "SIMTRACK_HEARTBEAT_INTERVAL": "0.2"}
    first = start_server(served_url, listen=listen, **liveness)
    run = streams.new_run(first)
    steps = range(60_000)
    values = point_values(steps)
    spool = tmp_path / "spool"
    options = WorkerOptions(backoff_base=0.05, backoff_cap=0.5, close_timeout=60)
    restarted: list[Server] = []

    def simulate() -> None:
        with Worker(listen, run.id, spool_dir=spool, options=options) as worker:
            for step in steps:
                worker.log_metrics(step, {"a": values["a"][step], "b": values["b"][step]})
                if step == 20_000:
                    assert worker.flush(timeout=30), "nothing acknowledged before the outage"
                    first.kill()
                elif step == 40_000:
                    time.sleep(4.0)  # the worker lives on, nobody hears it
                    restarted.append(start_server(served_url, listen=listen, **liveness))

    await asyncio.wait_for(asyncio.to_thread(simulate), 90)

    assert_exactly_once(streams, database_url, run.id, expected_checksums(streams, steps))
    ended = get_run(restarted[0], run.id)
    assert ended.status == COMPLETED, ended.error_message
    assert not ended.HasField("vanish_time") and not ended.HasField("revive_time")


async def test_a_spool_synced_after_the_run_was_declared_vanished_is_stored_once(
    served_url: str,
    start_server: StartServer,
    streams: StreamKit,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Worker kill -9 with 100,000 points spooled; the sweep fails the run; sync: 0 lost."""
    listen = f"127.0.0.1:{free_port()}"
    first = start_server(served_url, listen=listen, **QUICK_LIVENESS)
    run = streams.new_run(first)
    spool = tmp_path / "spool"
    worker = start_worker(listen, run.id, spool, 0, 50_000, 100_000)
    try:
        assert await read_line(worker) == "flushed"
        first.kill()
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert await read_line(worker) == "spooled"
    finally:
        worker.kill()
        worker.wait(10)
    committed = streams.database(database_url).committed_seq(run.id)
    messages, points = spooled(spool, run.id, above=committed)
    assert points == 100_000

    second = start_server(served_url, listen=listen, **QUICK_LIVENESS)
    failed = await wait_status(second, run.id, FAILED, timeout=10)
    assert failed.HasField("vanish_time")
    uploaded = await asyncio.to_thread(sync_spool, listen, spool, timeout=60)
    report = uploaded[run.id]
    assert (report.messages, report.points, report.left, report.error) == (
        messages,
        100_000,
        None,
        None,
    )
    assert_exactly_once(streams, database_url, run.id, expected_checksums(streams, range(100_000)))
    after = get_run(second, run.id)
    assert after.status == FAILED and after.HasField("vanish_time"), "a spool revives nothing"
    assert not (spool / f"{run.id}.sqlite").exists(), "the spool outlived its upload"
