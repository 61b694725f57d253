"""The worker helper in isolation: its spool, batching and backpressure (against a fake
server: ``tests/support/fake_telemetry.py``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from google.protobuf import json_format

from simtrack.client import Worker, WorkerOptions
from simtrack.client.worker._spool import Spool, SpoolLocked, spooled_runs, wire_bytes
from simtrack.errors import (
    InvalidArgument,
)
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import (
    FAST,
    RUN,
    FakeServer,
    assert_contiguous,
    final_status,
    metric_points,
)

# ----------------------------------------------------------------------------- spool


def test_spool_round_trip_resume_numbering_and_trim(tmp_path: Path) -> None:
    spool = Spool(tmp_path, RUN)
    assert spool.append([("metrics", 3, b"a"), ("events", 1, b"b")]) == [1, 2]
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, RUN)
    spool.close()

    with Spool(tmp_path, RUN) as again:  # a new process: numbering continues
        assert again.next_seq == 3
        assert [(m.seq, m.kind, m.points, m.body) for m in again.messages()] == [
            (1, "metrics", 3, b"a"),
            (2, "events", 1, b"b"),
        ]
        assert again.append([("progress", 0, b"c")]) == [3]
        assert again.trim(2) == 2
        assert again.trim(1) == 0  # acks never go back
        assert [m.seq for m in again.messages()] == [3]
        assert again.get(3) == b"c" and again.get(1) is None
        assert again.stats() == (1, 0, 3)
    with Spool(tmp_path, RUN) as third:
        assert (third.next_seq, third.acked_seq) == (4, 2)
        assert third.trim(3) == 1
        assert third.close(delete_if_empty=True)
    assert spooled_runs(tmp_path) == []


def test_spool_rebases_numbering_onto_the_servers_watermark(tmp_path: Path) -> None:
    with Spool(tmp_path, RUN) as spool:
        spool.append([("metrics", 1, b"a"), ("metrics", 1, b"b"), ("status", 0, b"c")])
        assert spool.rebase(5) == 5
        assert [m.seq for m in spool.messages()] == [6, 7, 8]
        assert spool.next_seq == 9 and spool.based
        assert spool.rebase(100) == 0  # only the first welcome anchors
        assert spool.has_final_status()


def test_wire_bytes_is_the_message_with_its_seq() -> None:
    request = tm.StreamRunRequest(progress=tm.Progress(tick=3, total=10))
    body = request.SerializeToString()
    for seq in (1, 127, 128, 300, 2**40):
        request.seq = seq
        assert wire_bytes(seq, body) == request.SerializeToString()
        assert tm.StreamRunRequest.FromString(wire_bytes(seq, body)).seq == seq


def test_spool_refuses_path_like_run_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path, "../escape")


# ----------------------------------------------------------------------------- batching


def test_batches_are_columnar_and_within_the_limits(fake: FakeServer, tmp_path: Path) -> None:
    options = WorkerOptions(
        flush_interval=0.05, points_per_series=100, max_series_per_batch=3, close_timeout=20
    )
    steps = 2_000
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        run.define_metric("profit", unit="USD", kind="counter")
        for step in range(steps):
            values = {f"m{i}": step + i / 10 for i in range(7)}
            values["profit"] = step * 1.5
            if step % 10 == 0:
                values["sparse"] = -step
            run.log_metrics(step, values, timestamp=1_000.0 + step)
    log = fake.service.run(RUN)
    assert_contiguous(log)
    for request in log.stored.values():
        if request.WhichOneof("kind") != "metrics":
            continue
        names = [series.name for series in request.metrics.series]
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
        for series in request.metrics.series:
            assert len(series.steps) == len(series.values) == len(series.timestamps)
            assert 1 <= len(series.values) <= 100
            assert list(series.timestamps) == [1_000.0 + s for s in series.steps]
            if series.name == "profit":
                assert (series.unit, series.kind) == ("USD", tm.METRIC_KIND_COUNTER)
    points = metric_points(log)
    assert sorted(points) == sorted([f"m{i}" for i in range(7)] + ["profit", "sparse"])
    for i in range(7):
        assert points[f"m{i}"] == [(s, s + i / 10) for s in range(steps)]
    assert points["sparse"] == [(s, float(-s)) for s in range(0, steps, 10)]
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not run.spool_path.exists()


def test_events_progress_and_results_are_sent(fake: FakeServer, tmp_path: Path) -> None:
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        for tick in range(50):
            run.log_event(tick, "agent_action", {"price": 9.99, "tick": tick}, agent_id="a-1")
            run.progress(tick + 1, 50)
        run.set_results({"profit": 12.5})
    log = fake.service.run(RUN)
    events = [
        event
        for request in log.stored.values()
        if request.WhichOneof("kind") == "events"
        for event in request.events.events
    ]
    assert [e.step for e in events] == list(range(50))
    assert events[7].type == "agent_action" and events[7].agent_id == "a-1"
    assert json_format.MessageToDict(events[7].payload) == {"price": 9.99, "tick": 7.0}
    assert events[7].time.seconds > 0
    progress = [r.progress for r in log.stored.values() if r.WhichOneof("kind") == "progress"]
    assert progress[-1].tick == 50 and progress[-1].total == 50
    status = final_status(log)
    assert json_format.MessageToDict(status.results) == {"profit": 12.5}


def test_bad_values_are_reported_on_the_next_call(fake: FakeServer, tmp_path: Path) -> None:
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(0, {"x": 1.0, "y": 2.0})
        run.log_metrics(1, {"x": "oops", "y": 3.0})  # type: ignore[dict-item]
        run.log_metrics(2, {"x": 4.0, "y": 5.0})
        assert run.flush(timeout=10)
        with pytest.raises(InvalidArgument, match="'oops'"):
            run.log_metrics(3, {"x": 6.0})
        run.log_metrics(3, {"x": 6.0})  # reported once
        with pytest.raises(InvalidArgument):
            run.log_metrics(4, {"": 1.0})
    points = metric_points(fake.service.run(RUN))
    assert points == {"x": [(0, 1.0), (2, 4.0), (3, 6.0)], "y": [(0, 2.0), (1, 3.0), (2, 5.0)]}


# ----------------------------------------------------------------------------- backpressure


def test_backpressure_blocks_until_the_spool_catches_up(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = WorkerOptions(flush_interval=60.0, max_buffered_points=100, close_timeout=20)
    run = Worker(fake.target, RUN, spool_dir=tmp_path, options=options)
    gate = threading.Event()
    spool = run._engine.spool
    original = spool.append

    def slow_append(messages: list[tuple[str, int, bytes]]) -> list[int]:
        gate.wait(10)
        return original(messages)

    monkeypatch.setattr(spool, "append", slow_append)
    with run:
        for step in range(10):  # 100 points: the buffer is full, the flusher is stuck
            run.log_metrics(step, {f"m{i}": float(step) for i in range(10)})
        blocked = threading.Thread(
            target=run.log_metrics, args=(10, {f"m{i}": 10.0 for i in range(10)})
        )
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "log_metrics must block while the buffer is full"
        gate.set()
        blocked.join(5)
        assert not blocked.is_alive(), "log_metrics must return once the flusher catches up"
        run.log_metrics(11, {f"m{i}": 11.0 for i in range(10)})
    points = metric_points(fake.service.run(RUN))
    assert all(points[f"m{i}"] == [(s, float(s)) for s in range(12)] for i in range(10))
