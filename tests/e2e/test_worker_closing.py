"""The worker helper against a real server when things go slowly: a restarted server, closings
that give up, spools left behind and ``simtrack sync``.

Helper behaviour does not depend on the database, so these run on SQLite only (they count what
the server stored from its database, as the other stream tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from simtrack.client import Worker, WorkerOptions
from simtrack.client.worker._spool import Spool, spooled_runs
from simtrack.v1 import runs_pb2, telemetry_pb2
from tests.support import Checksum, Server, SimtrackCli, StartServer, StreamKit

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])
COMPLETED = runs_pb2.RUN_STATUS_COMPLETED
# Closing gives up after this long without an ack; nothing else in these tests is that slow.
STALL = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_run(server: Server, run_id: str) -> runs_pb2.Run:
    return server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run


def in_spool(spool: Path, run_id: str) -> tuple[int, int]:
    """(messages, points) the run's spool file really holds."""
    with sqlite3.connect(spool / f"{run_id}.sqlite") as connection:
        messages, points = connection.execute(
            "select count(*), coalesce(sum(points), 0) from messages"
        ).fetchone()
    return int(messages), int(points)


def checksums(streams: StreamKit, steps: range, scale: float) -> dict[str, Checksum]:
    return {"x": streams.checksum(np.array(steps, dtype="<i8"), np.array(steps) * scale)}


@SQLITE_ONLY
async def test_the_worker_is_back_within_seconds_of_a_restarted_server(
    database_url: str, start_server: StartServer, streams: StreamKit, tmp_path: Path
) -> None:
    """Kill -9 of the server, back on the same port 5 s later: the first ack within ~2 s."""
    listen = f"127.0.0.1:{free_port()}"
    first = start_server(database_url, listen=listen)
    run = streams.new_run(first)

    def simulate() -> float:
        with Worker(listen, run.id, spool_dir=tmp_path / "spool") as worker:  # the defaults
            worker.log_metrics(0, {"x": 0.0})
            assert worker.flush(timeout=10)
            first.kill()
            worker.log_metrics(1, {"x": 1.0})
            assert not worker.flush(timeout=5.0)  # the worker keeps trying meanwhile
            start_server(database_url, listen=listen)
            serving = time.monotonic()
            assert worker.flush(timeout=30)
            return time.monotonic() - serving

    latency = await asyncio.wait_for(asyncio.to_thread(simulate), 60)
    assert latency < 2.5, f"first ack {latency:.2f} s after the server was serving again"
    assert streams.database(database_url).checksums(run.id) == checksums(streams, range(2), 1.0)


@SQLITE_ONLY
async def test_closings_that_give_up_say_what_they_left_and_a_new_worker_uploads_it(
    database_url: str,
    start_server: StartServer,
    streams: StreamKit,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Eight workers close at once while the server is frozen (SIGSTOP): each gives up after
    STALL seconds without an ack and names what its spool really holds; once the server is
    back, the next worker started with that spool directory uploads all of it by itself.
    """
    server = start_server(database_url)
    spool = tmp_path / "spool"
    options = WorkerOptions(close_timeout=STALL, points_per_series=100, upload_leftovers=False)
    runs = [streams.new_run(server).id for _ in range(8)]
    steps = range(2_000)
    ready = threading.Barrier(len(runs) + 1)
    closing = threading.Barrier(len(runs) + 1)

    failures: list[BaseException] = []

    def simulate(index: int, run_id: str) -> None:
        try:
            with Worker(server.address, run_id, spool_dir=spool, options=options) as worker:
                for step in steps[:1_000]:
                    worker.log_metrics(step, {"x": step * (index + 1.0)})
                assert worker.flush(timeout=30)
                ready.wait(30)
                closing.wait(30)  # the server is frozen now
                for step in steps[1_000:]:
                    worker.log_metrics(step, {"x": step * (index + 1.0)})
        except BaseException as exc:
            failures.append(exc)
            raise

    pid = server.process.process.pid
    workers = [
        threading.Thread(target=simulate, args=(i, run_id), daemon=True)
        for i, run_id in enumerate(runs)
    ]
    with caplog.at_level(logging.WARNING, logger="simtrack.client.worker"):
        for thread in workers:
            thread.start()
        ready.wait(30)
        os.kill(pid, signal.SIGSTOP)
        try:
            closing.wait(30)
            started = time.monotonic()
            for thread in workers:
                thread.join(30)
            assert time.monotonic() - started < STALL + 5
        finally:
            os.kill(pid, signal.SIGCONT)
    assert not failures

    said = {
        match["run"]: (int(match["messages"]), int(match["points"]))
        for match in re.finditer(
            r"run (?P<run>\S+): no acknowledgement for 1 s while closing: (?P<messages>\d+) "
            r"message\(s\) \((?P<points>\d+) points and the final status\)",
            caplog.text,
        )
    }
    assert sorted(said) == sorted(runs), caplog.text
    for run_id in runs:
        assert said[run_id] == in_spool(spool, run_id)
        assert said[run_id][1] >= 1_000  # at least the points logged while frozen

    with Worker(server.address, streams.new_run(server).id, spool_dir=spool):
        deadline = time.monotonic() + 30
        while len(spooled_runs(spool)) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert spooled_runs(spool) == []
    for index, run_id in enumerate(runs):
        assert get_run(server, run_id).status == COMPLETED
        stored = streams.database(database_url).checksums(run_id)
        assert stored == checksums(streams, steps, index + 1.0)


@SQLITE_ONLY
async def test_sync_reports_each_run_and_keeps_what_was_not_acknowledged(
    database_url: str,
    start_server: StartServer,
    streams: StreamKit,
    tmp_path: Path,
    simtrack_cli: SimtrackCli,
) -> None:
    """Three spools: one uploads whole, one is refused half-way (a bad batch), one names a run
    the server does not know. ``simtrack sync`` says per run what it uploaded and why it
    stopped, removes only the spool that was acknowledged to the end, and exits with 1.
    """
    server = start_server(database_url)
    spool = tmp_path / "spool"
    dead = f"127.0.0.1:{free_port()}"
    options = WorkerOptions(close_timeout=0.2, upload_leftovers=False)
    whole, partial = streams.new_run(server).id, streams.new_run(server).id
    unknown = str(uuid.uuid4())
    with Worker(dead, whole, spool_dir=spool, options=options) as worker:
        for step in range(300):
            worker.log_metrics(step, {"x": float(step)})
        worker.log_event(1, "trade", {"price": 1.5})
        worker.log_event(2, "trade", {"price": 1.6})
    with Worker(dead, unknown, spool_dir=spool, options=options) as worker:
        worker.log_metrics(0, {"x": 0.0})

    def batch(first: int, count: int, values: int) -> bytes:
        series = telemetry_pb2.MetricSeries(
            name="x", steps=range(first, first + count), values=[1.0] * values
        )
        batch = telemetry_pb2.MetricBatch(series=[series])
        return telemetry_pb2.StreamRunRequest(metrics=batch).SerializeToString()

    with Spool(spool, partial) as written:  # as some worker left it: the 2nd batch is bad
        written.append(
            [
                ("metrics", 100, batch(0, 100, 100)),
                ("metrics", 100, batch(100, 100, 99)),
                ("metrics", 100, batch(200, 100, 100)),
            ]
        )

    result = simtrack_cli(
        "sync", "--spool-dir", str(spool), check=False, SIMTRACK_TARGET=server.address
    )
    assert result.returncode == 1, result
    assert f"{whole}: 3 message(s) uploaded: 1 metric batch(es) (300 points), 1 event " in (
        result.stdout
    )
    assert "(2 events), the final status; spool removed" in result.stdout
    errors = result.stderr
    # The first batch is committed; its ack may or may not beat the refusal of the second.
    said = re.search(
        rf"simtrack: {partial}: (?P<sent>\d) message\(s\) uploaded: .*; INVALID_ARGUMENT: "
        r"metrics.series\[0\].steps: [^;]*; (?P<left>\d) message\(s\) \((?P<points>\d+) points\) "
        rf"not acknowledged, kept in {re.escape(str(spool / partial))}.sqlite",
        errors,
    )
    assert said is not None, errors
    assert int(said["sent"]) + int(said["left"]) == 3 and int(said["left"]) >= 2
    assert in_spool(spool, partial) == (int(said["left"]), int(said["points"]))
    assert f"simtrack: {unknown}: 0 message(s) uploaded" in errors
    assert f"NOT_FOUND: hello.run_id: run {unknown!r} not found" in errors
    assert sorted(spooled_runs(spool)) == sorted([partial, unknown])
    assert get_run(server, whole).status == COMPLETED
    database = streams.database(database_url)
    assert database.checksums(whole) == checksums(streams, range(300), 1.0)
    assert len(database.events(whole)) == 2
    assert database.checksums(partial)["x"].count == 100
