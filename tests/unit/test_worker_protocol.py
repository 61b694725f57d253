"""The worker helper against a fake server: the StreamRun protocol (acks, resends, lost acks,
refusals, going away) and a worker that dies with its spool.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simtrack.client import Worker, WorkerOptions, sync_spool
from simtrack.client.worker._spool import Spool, spooled_runs
from simtrack.errors import (
    FailedPrecondition,
)
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import (
    ALONE,
    FAST,
    RUN,
    FakeServer,
    assert_contiguous,
    eventually,
    final_status,
    metric_points,
)

# ----------------------------------------------------------------------------- protocol


def test_every_point_exactly_once_across_dropped_connections(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.service.drop_every = 7  # every 7th commit loses its ack and the connection
    options = WorkerOptions(
        flush_interval=0.01,
        points_per_series=50,
        max_series_per_batch=2,
        backoff_base=0.005,
        backoff_cap=0.05,
        close_timeout=30,
    )
    steps = 20_000
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        for step in range(steps):
            run.log_metrics(step, {"a": step * 0.5, "b": -step, "c": 1.0, "d": 2.0, "e": 3.0})
            if step % 1000 == 0:
                run.log_event(step, "checkpoint", {"step": step})
    log = fake.service.run(RUN)
    assert fake.service.streams > 10  # it really reconnected, many times
    assert log.lost_acks > 10  # committed messages whose ack was lost: skipped, not resent
    assert log.resent == 0
    assert_contiguous(log)
    points = metric_points(log)
    assert points["a"] == [(s, s * 0.5) for s in range(steps)]
    for name in "bcde":
        assert [s for s, _ in points[name]] == list(range(steps))
    events = [e.step for r in log.stored.values() if r.HasField("events") for e in r.events.events]
    assert events == list(range(0, steps, 1000))
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not run.spool_path.exists()


def test_at_most_32_messages_in_flight(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.holding.set()
    options = WorkerOptions(
        flush_interval=0.01, points_per_series=10, max_series_per_batch=1, close_timeout=20
    )
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        for step in range(100):
            run.log_metrics(step, {f"m{i}": float(step) for i in range(10)})
        assert not run.flush(timeout=0.5)  # spooled, but nothing is acknowledged
        eventually(lambda: fake.service.max_unacked >= 32, what="32 messages in flight")
        time.sleep(0.2)
        assert fake.service.max_unacked == 32
        assert run.pending()[0] == 100
        fake.service.holding.clear()
        assert run.flush(timeout=10)
    log = fake.service.run(RUN)
    assert_contiguous(log)
    assert len(log.stored) == 101


def test_heartbeats_while_idle_and_the_api_key_on_the_stream(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.service.heartbeat_interval = 0.05
    with Worker(
        fake.target, RUN, api_key="k-123", worker_id="w-1", spool_dir=tmp_path, options=FAST
    ):
        # Idle: nothing but heartbeats keeps the stream alive (every 0.05 s here).
        eventually(lambda: fake.service.run(RUN).heartbeats >= 3, what="3 heartbeats")
    log = fake.service.run(RUN)
    assert fake.service.metadata[0]["authorization"] == "Bearer k-123"
    assert log.hellos[0].run_id == RUN and log.hellos[0].worker_id == "w-1"


def test_a_stalled_stream_is_reconnected(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.holding.set()  # receives, never answers
    options = WorkerOptions(
        flush_interval=0.02, stall_timeout=0.3, backoff_base=0.01, backoff_cap=0.05
    )
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        for step in range(100):
            run.log_metrics(step, {"x": float(step)})
        eventually(lambda: fake.service.streams >= 3, what="reconnects after stalls")
        fake.service.holding.clear()
        assert run.flush(timeout=10)
    log = fake.service.run(RUN)
    assert_contiguous(log)
    assert metric_points(log) == {"x": [(s, float(s)) for s in range(100)]}


def test_going_away_makes_the_worker_reconnect(fake: FakeServer, tmp_path: Path) -> None:
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(0, {"x": 0.0})
        assert run.flush(timeout=10)
        fake.service.push(RUN, "going_away")
        eventually(lambda: fake.service.streams >= 2, what="a second stream")
        run.log_metrics(1, {"x": 1.0})
    log = fake.service.run(RUN)
    assert metric_points(log) == {"x": [(0, 0.0), (1, 1.0)]}
    assert_contiguous(log)


def test_reconnects_after_the_server_restarts(fake: FakeServer, tmp_path: Path) -> None:
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(0, {"x": 0.0})
        assert run.flush(timeout=10)
        fake.stop()
        for step in range(1, 1000):  # spooled while the server is down
            run.log_metrics(step, {"x": float(step)})
        assert not run.flush(timeout=0.3)
        fake.start()  # same port
        assert run.flush(timeout=10)
    assert metric_points(fake.service.run(RUN)) == {"x": [(s, float(s)) for s in range(1000)]}


# ----------------------------------------------------------------------------- worker death


def test_a_new_worker_resends_what_a_dead_one_left_unacknowledged(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.service.ack_limit = 5  # the server commits 5 messages, then stops answering
    options = WorkerOptions(
        flush_interval=0.01, points_per_series=100, max_series_per_batch=1, close_timeout=20
    )
    first = Worker(fake.target, RUN, spool_dir=tmp_path, options=options).start()
    for step in range(3_000):
        first.log_metrics(step, {"a": float(step), "b": float(-step)})
    assert not first.flush(timeout=0.5)  # everything is spooled; 5 acknowledged
    eventually(lambda: fake.service.run(RUN).committed == 5)
    spool = first._engine.spool
    eventually(lambda: spool.stats()[0] == spool.stats()[2] - 5, what="5 acks trimmed")
    messages, points, highest = spool.stats()
    assert messages == highest - 5 and highest >= 60  # all spooled, the first 5 trimmed
    assert 0 < points < 6_000
    first._simulate_crash()  # no final flush, no final status: like kill -9
    assert first.spool_path.exists()

    fake.service.ack_limit = None
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as second:
        for step in range(3_000, 3_500):
            second.log_metrics(step, {"a": float(step), "b": float(-step)})
    log = fake.service.run(RUN)
    assert_contiguous(log)
    assert log.resent == 0  # the welcome's watermark told the new worker what to skip
    assert log.hellos[-1].last_acked_seq == 5
    stored = metric_points(log)
    assert stored["a"] == [(s, float(s)) for s in range(3_500)]
    assert stored["b"] == [(s, float(-s)) for s in range(3_500)]
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not second.spool_path.exists()


def test_points_survive_kill_9_of_the_worker_process(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.ack_limit = 3
    child = textwrap.dedent(
        f"""
        import sys, time
        from simtrack.client import Worker, WorkerOptions
        options = WorkerOptions(flush_interval=0.01, points_per_series=100)
        run = Worker({fake.target!r}, {RUN!r}, spool_dir={str(tmp_path)!r}, options=options)
        run.start()
        for step in range(2_000):
            run.log_metrics(step, {{"a": float(step), "b": step * 2.0}})
        run.flush(timeout=0.5)  # spooled; only 3 messages acknowledged
        print("spooled", flush=True)
        time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "spooled"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    assert fake.service.run(RUN).committed == 3

    fake.service.ack_limit = None
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:  # lock released
        run.log_metrics(2_000, {"a": 2_000.0, "b": 4_000.0})
    log = fake.service.run(RUN)
    assert_contiguous(log)
    points = metric_points(log)
    assert points["a"] == [(s, float(s)) for s in range(2_001)]
    assert points["b"] == [(s, s * 2.0) for s in range(2_001)]


def test_a_spool_written_offline_continues_after_the_runs_watermark(
    fake: FakeServer, tmp_path: Path, dead_target: str
) -> None:
    earlier = fake.service.run(RUN)  # another worker already streamed 3 messages to this run
    for seq in (1, 2, 3):
        earlier.stored[seq] = tm.StreamRunRequest(seq=seq, progress=tm.Progress(tick=seq))
    earlier.committed = 3
    offline = Worker(dead_target, RUN, spool_dir=tmp_path, options=FAST).start()
    for step in range(500):
        offline.log_metrics(step, {"x": float(step)})
    assert not offline.flush(timeout=0.3)
    offline._simulate_crash()

    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(500, {"x": 500.0})
    assert_contiguous(earlier)
    assert earlier.stored[1].progress.tick == 1  # untouched
    assert metric_points(earlier) == {"x": [(s, float(s)) for s in range(501)]}


def test_sync_spool_uploads_what_dead_workers_left(
    fake: FakeServer, tmp_path: Path, dead_target: str
) -> None:
    for run_id, steps in (("run-a", 300), ("run-b", 10)):
        dead = Worker(dead_target, run_id, spool_dir=tmp_path, options=ALONE).start()
        for step in range(steps):
            dead.log_metrics(step, {"x": float(step)})
        assert not dead.flush(timeout=0.2)
        dead._simulate_crash()
    spooled = {run_id: Spool(tmp_path, run_id).stats()[0] for run_id in ("run-a", "run-b")}
    # (the Spool objects above are garbage; their locks went with them)
    live = Worker(fake.target, "run-live", spool_dir=tmp_path, options=FAST)  # holds its spool
    try:
        result = sync_spool(fake.target, tmp_path, options=FAST, timeout=20)
    finally:
        live.close(timeout=0)
    assert {run_id: report.messages for run_id, report in result.items()} == {
        **spooled,
        "run-live": 0,
    }
    assert result["run-live"].in_use and result["run-a"].left is None
    assert spooled_runs(tmp_path) == []
    for run_id, steps in (("run-a", 300), ("run-b", 10)):
        log = fake.service.run(run_id)
        assert_contiguous(log)
        assert metric_points(log) == {"x": [(s, float(s)) for s in range(steps)]}
        assert all(r.WhichOneof("kind") != "status" for r in log.stored.values())


def test_exit_while_the_server_is_down_keeps_the_final_status_for_sync(
    fake: FakeServer, tmp_path: Path, dead_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = WorkerOptions(flush_interval=0.02, close_timeout=0.5, backoff_cap=0.1)
    with (
        caplog.at_level(logging.WARNING),
        Worker(dead_target, RUN, spool_dir=tmp_path, options=options) as run,
    ):
        run.log_metrics(0, {"x": 1.0})
    assert "simtrack sync" in caplog.text
    assert run.spool_path.exists()
    with pytest.raises(FailedPrecondition, match="already ended"):
        Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST)
    report = sync_spool(fake.target, tmp_path, options=FAST)[RUN]
    assert (report.messages, report.points, report.final_status) == (2, 1, True)
    log = fake.service.run(RUN)
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not run.spool_path.exists()


def test_one_worker_per_run_and_spool(fake: FakeServer, tmp_path: Path) -> None:
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST):
        with pytest.raises(FailedPrecondition, match="another worker"):
            Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST)
