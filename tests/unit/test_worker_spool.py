"""The worker helper in isolation: spool, batching, backpressure and the StreamRun protocol.

The protocol tests run the helper against a fake TelemetryService (StreamRun only) in this
process: it stores each sequenced message once by seq, acks after each commit, and can drop the
connection after a commit (a lost ack), hold acks, refuse streams, push commands and announce
that it is going away. The real server is exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from simtrack.client import AsyncWorker, Command, Worker, WorkerOptions, sync_spool
from simtrack.client.rpc_errors import from_rpc_error
from simtrack.client.worker._spool import Spool, SpoolLocked, spooled_runs, wire_bytes
from simtrack.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SimtrackError,
    Unauthenticated,
    Unavailable,
)
from simtrack.v1 import runs_pb2, telemetry_pb2_grpc
from simtrack.v1 import telemetry_pb2 as tm

RUN = "11111111-2222-3333-4444-555555555555"
FAST = WorkerOptions(
    flush_interval=0.02,
    backoff_base=0.01,
    backoff_cap=0.1,
    close_timeout=20.0,
    stall_timeout=5.0,
)
ALONE = replace(FAST, upload_leftovers=False)  # leaves other runs' spools alone


# ----------------------------------------------------------------------------- the fake server


@dataclass
class RunLog:
    """What the fake server holds for one run."""

    committed: int = 0
    stored: dict[int, tm.StreamRunRequest] = field(default_factory=dict)
    heartbeats: int = 0
    hellos: list[tm.Hello] = field(default_factory=list)
    resent: int = 0  # sequenced messages received at or below the watermark
    lost_acks: int = 0  # hellos whose last acked seq was below the watermark


class FakeTelemetryService(telemetry_pb2_grpc.TelemetryServiceServicer):
    """StreamRun with exactly-once storage by seq, and ways to misbehave."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, RunLog] = {}
        self.heartbeat_interval = 10.0
        self.drop_every = 0  # end the stream with UNAVAILABLE after every n-th commit, unacked
        self.ack_limit: int | None = None  # receive but never commit seqs above this
        self.ack_delay = 0.0  # seconds each commit takes (a loaded server)
        self.ended: set[str] = set()  # runs whose new messages are refused (they ended)
        self.holding = threading.Event()  # while set: receive, count, commit nothing
        self.max_unacked = 0
        self.reject: status_pb2.Status | None = None
        self.pending_commands: list[runs_pb2.Command] = []
        self.inboxes: dict[str, queue.Queue[tuple[str, Any]]] = {}
        self.metadata: list[dict[str, str]] = []
        self.streams = 0
        self.commits = 0

    def run(self, run_id: str) -> RunLog:
        with self.lock:
            return self.runs.setdefault(run_id, RunLog())

    def push(self, run_id: str, kind: str, item: Any = None) -> None:
        """Send a command / going_away / close on the run's current stream."""
        self.inboxes[run_id].put((kind, item))

    def command(
        self, run_id: str, name: str, args: dict[str, Any] | None = None, id: str = ""
    ) -> None:
        message = runs_pb2.Command(id=id or f"cmd-{time.monotonic_ns()}", name=name)
        message.args.update(args or {})
        self.push(run_id, "command", message)

    def StreamRun(
        self, request_iterator: Iterator[tm.StreamRunRequest], context: Any
    ) -> Iterator[tm.StreamRunResponse]:
        first = next(request_iterator)
        with self.lock:
            self.streams += 1
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message must be hello")
        if self.reject is not None:
            context.abort_with_status(rpc_status.to_status(self.reject))
        run_id = first.hello.run_id
        log = self.run(run_id)
        log.hellos.append(first.hello)
        if first.hello.last_acked_seq < log.committed:
            log.lost_acks += 1
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.inboxes[run_id] = inbox

        def pump() -> None:
            try:
                for request in request_iterator:
                    inbox.put(("request", request))
            except Exception:  # the call ended
                pass
            inbox.put(("end", None))

        threading.Thread(target=pump, daemon=True).start()
        welcome = tm.Welcome(
            committed_seq=log.committed,
            heartbeat_interval_seconds=self.heartbeat_interval,
            pending_commands=self.pending_commands,
        )
        yield tm.StreamRunResponse(welcome=welcome)
        held: list[tm.StreamRunRequest] = []
        while context.is_active():
            try:
                kind, item = inbox.get(timeout=0.02)
            except queue.Empty:
                kind, item = "tick", None
            if kind in ("end", "close"):
                return
            if kind == "command":
                yield tm.StreamRunResponse(command=item)
                continue
            if kind == "going_away":
                yield tm.StreamRunResponse(going_away=tm.GoingAway(reason="test"))
                continue
            if kind == "request":
                if item.seq == 0:
                    log.heartbeats += 1
                    continue
                held.append(item)
            if self.holding.is_set():
                self.max_unacked = max(self.max_unacked, len(held))
                continue
            while held:
                request = held.pop(0)
                time.sleep(self.ack_delay)
                drop = False
                with self.lock:
                    if request.seq <= log.committed:
                        log.resent += 1
                    elif self.ack_limit is not None and request.seq > self.ack_limit:
                        continue
                    elif request.seq != log.committed + 1:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"seq {request.seq}: expected {log.committed + 1}",
                        )
                    elif run_id in self.ended:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION, "the run already ended (completed)"
                        )
                    else:
                        log.stored[request.seq] = request
                        log.committed = request.seq
                        self.commits += 1
                        drop = bool(self.drop_every) and self.commits % self.drop_every == 0
                    committed = log.committed
                if drop:  # committed, but the ack never reaches the worker
                    context.abort(grpc.StatusCode.UNAVAILABLE, "fake connection drop")
                yield tm.StreamRunResponse(ack=tm.Ack(committed_seq=committed))


class FakeServer:
    def __init__(self) -> None:
        self.service = FakeTelemetryService()  # type: ignore[abstract]  # StreamRun is enough here
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(self.service, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dead_target() -> str:
    """An address nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def metric_points(log: RunLog) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {}
    for seq in sorted(log.stored):
        request = log.stored[seq]
        if request.WhichOneof("kind") == "metrics":
            for series in request.metrics.series:
                points.setdefault(series.name, []).extend(
                    zip(series.steps, series.values, strict=True)
                )
    return points


def assert_contiguous(log: RunLog) -> None:
    assert sorted(log.stored) == list(range(1, len(log.stored) + 1))
    assert all(request.seq == seq for seq, request in log.stored.items())


def final_status(log: RunLog) -> tm.FinalStatus:
    last = log.stored[max(log.stored)]
    assert last.WhichOneof("kind") == "status"
    return last.status


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


# ----------------------------------------------------------------------------- commands


def test_commands_reach_the_worker(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[tuple[Command, str]] = []
    with (
        caplog.at_level(logging.INFO),
        Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run,
    ):
        run.on_command("set_price", lambda c: received.append((c, threading.current_thread().name)))
        run.log_metrics(0, {"x": 0.0})
        assert run.flush(timeout=10)
        fake.service.command(RUN, "set_price", {"price": 9.5}, id="c1")
        fake.service.command(RUN, "set_price", {"price": 9.5}, id="c1")  # delivered twice
        fake.service.command(RUN, "frobnicate", {"x": 1})
        eventually(lambda: len(received) == 1)
        fake.service.command(RUN, "pause")
        eventually(lambda: run.paused)
        assert not run.wait_if_paused(timeout=0.05)
        fake.service.command(RUN, "resume")
        eventually(lambda: not run.paused)
        assert not run.cancel_requested
        fake.service.command(RUN, "cancel", {"reason": "enough"})
        eventually(lambda: run.cancel_requested)
    command, thread = received[0]
    assert command == Command("c1", "set_price", {"price": 9.5})
    assert thread.startswith("simtrack-stream")
    assert "unknown command 'frobnicate'" in caplog.text
    assert final_status(fake.service.run(RUN)).outcome == tm.RUN_OUTCOME_STOPPED


def test_pending_commands_in_the_welcome(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.pending_commands = [runs_pb2.Command(id="c9", name="cancel")]
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        eventually(lambda: run.cancel_requested)
    assert final_status(fake.service.run(RUN)).outcome == tm.RUN_OUTCOME_STOPPED


def test_the_paused_flag_follows_each_welcome(fake: FakeServer, tmp_path: Path) -> None:
    """A welcome tells the run's state: a pause in it pauses; none means running (a resume
    the worker missed while it was away).
    """
    fake.service.pending_commands = [runs_pb2.Command(id="p1", name="pause")]
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        eventually(lambda: run.paused)
        fake.service.push(RUN, "close")  # reconnect: the same pause, already seen
        eventually(lambda: fake.service.streams == 2)
        time.sleep(0.2)
        assert run.paused
        fake.service.pending_commands = []
        fake.service.push(RUN, "close")
        eventually(lambda: not run.paused)
        assert fake.service.streams == 3


def test_an_escaping_exception_fails_the_run_and_is_reraised(
    fake: FakeServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="boom"):
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.log_metrics(0, {"x": 1.0})
            raise ValueError("boom")
    status = final_status(fake.service.run(RUN))
    assert status.outcome == tm.RUN_OUTCOME_FAILED
    assert status.error_message == "ValueError: boom"
    details = json_format.MessageToDict(status.error_details)
    assert details["type"] == "builtins.ValueError" and "boom" in details["traceback"]
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


# ----------------------------------------------------------------------------- final errors


def _status(code: int, message: str, detail: Any = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_status(code_pb2.PERMISSION_DENIED, "reader keys may not stream"), PermissionDenied),
        (_status(code_pb2.UNAUTHENTICATED, "missing API key"), Unauthenticated),
        (_status(code_pb2.FAILED_PRECONDITION, "run is completed"), FailedPrecondition),
        (_status(code_pb2.ABORTED, "a newer stream for this run took over"), Conflict),
        (
            _status(
                code_pb2.NOT_FOUND,
                f"hello.run_id: run {RUN!r} not found",
                error_details_pb2.ResourceInfo(
                    resource_type="run", resource_name=RUN, description="field hello.run_id"
                ),
            ),
            NotFound,
        ),
        (
            _status(
                code_pb2.INVALID_ARGUMENT,
                "metrics.series.name: too long",
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="metrics.series.name", description="too long"
                        )
                    ]
                ),
            ),
            InvalidArgument,
        ),
    ],
)
def test_final_errors_stop_the_helper_and_surface(
    fake: FakeServer, tmp_path: Path, status: status_pb2.Status, expected: type[SimtrackError]
) -> None:
    fake.service.reject = status
    with pytest.raises(expected) as raised:
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                run.log_metrics(0, {"x": 1.0})
                time.sleep(0.01)
    error = raised.value
    assert error.message == status.message
    assert fake.service.streams == 1  # not retried
    if isinstance(error, InvalidArgument):
        assert [(v.field, v.description) for v in error.violations] == [
            ("metrics.series.name", "too long")
        ]
    if isinstance(error, NotFound):
        assert (error.resource_type, error.resource_id, error.field) == ("run", RUN, "hello.run_id")
    assert run.spool_path.exists()  # the points wait for `simtrack sync`


def test_a_final_error_is_raised_on_exit_too(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.reject = _status(code_pb2.PERMISSION_DENIED, "no")
    with pytest.raises(PermissionDenied):
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            eventually(lambda: run.error is not None)


# ----------------------------------------------------------------------------- asyncio


def test_async_worker(fake: FakeServer, tmp_path: Path) -> None:
    async def main() -> tuple[list[str], bool]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()

        async def on_price(command: Command) -> None:
            assert asyncio.get_running_loop() is loop
            seen.append(command.args["price"])

        async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.on_command("set_price", on_price)
            for step in range(1_000):
                run.log_metrics(step, {"x": float(step)})
                run.progress(step + 1, 1_000)
            flushed = await run.flush(timeout=10)
            fake.service.command(RUN, "set_price", {"price": "low"})
            for _ in range(500):
                if seen:
                    break
                await asyncio.sleep(0.01)
        return seen, flushed

    seen, flushed = asyncio.run(main())
    assert flushed and seen == ["low"]
    log = fake.service.run(RUN)
    assert metric_points(log) == {"x": [(s, float(s)) for s in range(1_000)]}
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED


def test_simtrack_sync_command(
    fake: FakeServer, tmp_path: Path, dead_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtrack.client import cli

    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    dead = Worker(dead_target, RUN, spool_dir=tmp_path, options=FAST).start()
    dead.log_metrics(0, {"x": 1.0})
    assert not dead.flush(timeout=0.2)
    dead._simulate_crash()
    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 0
    assert f"{RUN}: 1 message(s) uploaded" in capsys.readouterr().out
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


class _FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.ABORTED, Conflict),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INTERNAL, SimtrackError),
    ],
)
def test_from_rpc_error_without_details(
    code: grpc.StatusCode, expected: type[SimtrackError]
) -> None:
    error = from_rpc_error(_FailedCall(code, "what happened"))
    assert type(error) is expected
    assert error.message == "what happened" and error.code_name == code.name


# ----------------------------------------------------------------------------- closing


def one_message_per_point(**overrides: Any) -> WorkerOptions:
    return replace(ALONE, points_per_series=1, max_series_per_batch=1, **overrides)


def test_closing_waits_as_long_as_acks_keep_coming(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.ack_delay = 0.04  # a loaded server: 30 messages take 1.2 s, an ack each 0.04 s
    options = one_message_per_point(close_timeout=0.5)
    started = time.monotonic()
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        for step in range(30):
            run.log_metrics(step, {"x": float(step)})
    assert time.monotonic() - started > 1.0  # longer than close_timeout: it was not a deadline
    log = fake.service.run(RUN)
    assert metric_points(log) == {"x": [(s, float(s)) for s in range(30)]}
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not run.spool_path.exists()


def test_closing_gives_up_after_a_stall_and_says_what_it_left(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.service.ack_limit = 15  # commits 15 messages, then stops answering
    options = one_message_per_point(close_timeout=0.5)
    with (
        caplog.at_level(logging.WARNING),
        Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run,
    ):
        for step in range(40):
            run.log_metrics(step, {"x": float(step)})
        run.flush(timeout=0.5)
        closing = time.monotonic()
    assert 0.4 < time.monotonic() - closing < 5  # gave up about close_timeout after the last ack
    assert fake.service.run(RUN).committed == 15
    with Spool(tmp_path, RUN) as left:  # what is really there, beyond the last ack
        messages, points, _ = left.stats()
        assert [m.seq for m in left.messages()] == list(range(16, 42))
    assert (messages, points) == (26, 25)  # 25 points and the final status
    assert (
        f"26 message(s) (25 points and the final status) not acknowledged, kept in "
        f"{run.spool_path}" in caplog.text
    )
    assert run.pending() == (26, 25)


def leave_spool(target: str, run_id: str, tmp_path: Path, points: int) -> Path:
    """A spool as a closing that gave up leaves it: points and the final status."""
    run = Worker(target, run_id, spool_dir=tmp_path, options=replace(ALONE, close_timeout=0.1))
    with run:
        for step in range(points):
            run.log_metrics(step, {"x": float(step)})
    assert run.spool_path.exists()
    return run.spool_path


def test_a_starting_worker_uploads_the_spools_other_runs_left_once(
    fake: FakeServer, tmp_path: Path, dead_target: str
) -> None:
    left_a = leave_spool(dead_target, "run-a", tmp_path, 50)
    left_b = leave_spool(dead_target, "run-b", tmp_path, 10)
    uploading_b = Spool(tmp_path, "run-b", holder="upload")  # another process uploads run-b
    fake.service.holding.set()  # run-a's upload is under way while more workers start
    started = time.monotonic()
    first = Worker(fake.target, "run-c", spool_dir=tmp_path, options=FAST).start()
    assert time.monotonic() - started < 0.5  # the upload does not delay the new run
    eventually(lambda: len(fake.service.run("run-a").hellos) == 1, what="run-a's upload")
    second = Worker(fake.target, "run-d", spool_dir=tmp_path, options=FAST).start()
    fake.service.holding.clear()
    eventually(lambda: not left_a.exists(), what="run-a's spool removed")
    first.close()
    second.close()
    uploaded = fake.service.run("run-a")
    assert metric_points(uploaded) == {"x": [(s, float(s)) for s in range(50)]}
    assert final_status(uploaded).outcome == tm.RUN_OUTCOME_COMPLETED
    assert len(uploaded.hellos) == 1 and uploaded.hellos[0].worker_id.startswith("sync:")
    assert left_b.exists() and fake.service.run("run-b").hellos == []  # locked: not touched

    uploading_b.close()  # that process let go without finishing: the next worker uploads it
    with Worker(fake.target, "run-e", spool_dir=tmp_path, options=FAST):
        eventually(lambda: not left_b.exists(), what="run-b's spool removed")
    assert metric_points(fake.service.run("run-b")) == {"x": [(s, float(s)) for s in range(10)]}
    assert len(fake.service.run("run-a").hellos) == 1  # exactly once
    assert len(fake.service.run("run-b").hellos) == 1
    assert spooled_runs(tmp_path) == []


def test_a_leftover_the_server_refuses_is_kept_and_not_retried(
    fake: FakeServer, tmp_path: Path, dead_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    left = leave_spool(dead_target, "run-x", tmp_path, 20)
    fake.service.ended.add("run-x")  # its data cannot be stored any more
    with caplog.at_level(logging.WARNING):
        with Worker(fake.target, "run-c", spool_dir=tmp_path, options=FAST):
            eventually(lambda: "the run already ended" in caplog.text, what="the refusal")
        with Worker(fake.target, "run-d", spool_dir=tmp_path, options=FAST):
            time.sleep(0.3)
    assert len(fake.service.run("run-x").hellos) == 1  # tried once, not in a loop
    assert "run-x: 0 message(s) uploaded" in caplog.text
    assert (
        "FAILED_PRECONDITION: the run already ended (completed); 2 message(s) (20 points "
        f"and the final status) not acknowledged, kept in {left}" in caplog.text
    )
    assert "`simtrack sync` tries again" in caplog.text
    with Spool(tmp_path, "run-x") as kept:
        assert kept.stats()[:2] == (2, 20)


def test_a_worker_waits_for_the_upload_of_its_own_spool(fake: FakeServer, tmp_path: Path) -> None:
    uploading = Spool(tmp_path, RUN, holder="upload")
    threading.Timer(0.3, uploading.close).start()
    started = time.monotonic()
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(0, {"x": 1.0})
    assert time.monotonic() - started >= 0.3
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


def test_sync_reports_what_it_uploaded_and_keeps_what_was_refused(
    fake: FakeServer, tmp_path: Path, dead_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtrack.client import SyncError, cli

    with Worker(
        dead_target, "run-a", spool_dir=tmp_path, options=replace(ALONE, close_timeout=0.1)
    ) as a:
        for step in range(30):
            a.log_metrics(step, {"x": float(step), "y": 1.0})
        a.log_event(3, "trade", {"price": 1.5})
        a.log_event(4, "trade", {"price": 1.6})
    leave_spool(dead_target, "run-x", tmp_path, 5)
    fake.service.ended.add("run-x")
    with pytest.raises(SyncError) as raised:
        sync_spool(fake.target, tmp_path, options=FAST, timeout=5)
    reports = raised.value.reports
    a_report = reports["run-a"]
    assert (a_report.metric_batches, a_report.points) == (1, 60)
    assert (a_report.event_batches, a_report.events, a_report.final_status) == (1, 2, True)
    assert a_report.left is None and a_report.error is None and not a.spool_path.exists()
    x_report = reports["run-x"]
    assert x_report.messages == 0 and isinstance(x_report.error, FailedPrecondition)
    assert x_report.left is not None and (x_report.left.messages, x_report.left.points) == (2, 5)
    assert list(raised.value.errors) == ["run-x"]

    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        "simtrack: run-x: 0 message(s) uploaded: 0 metric batch(es) (0 points), 0 event "
        "batch(es) (0 events); FAILED_PRECONDITION: the run already ended (completed); 2 "
        "message(s) (5 points and the final status) not acknowledged, kept in "
        f"{tmp_path / 'run-x.sqlite'}" in err
    )


# ----------------------------------------------------------------------------- asyncio: like Worker


def test_a_cancelled_async_worker_ends_the_run_stopped(fake: FakeServer, tmp_path: Path) -> None:
    async def main() -> None:
        running = asyncio.Event()

        async def simulation() -> None:
            async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
                run.log_metrics(0, {"x": 1.0})
                running.set()
                await asyncio.sleep(60)  # a long simulation step, cancelled

        task = asyncio.create_task(simulation())
        await asyncio.wait_for(running.wait(), 10)  # cancelled inside the worker's block
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    log = fake.service.run(RUN)
    status = final_status(log)
    assert status.outcome == tm.RUN_OUTCOME_STOPPED
    assert status.error_message == "CancelledError"
    assert metric_points(log) == {"x": [(0, 1.0)]}


CTRL_C_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from simtrack.client import AsyncWorker, Worker, WorkerOptions
    helper, target, run_id, spool_dir = sys.argv[1:5]
    options = WorkerOptions(flush_interval=0.01, upload_leftovers=False)

    def simulation() -> None:
        with Worker(target, run_id, spool_dir=spool_dir, options=options) as run:
            run.log_metrics(0, {"x": 1.0})
            print("ready", flush=True)
            # Short steps, as a simulation loop runs: the kernel may hand SIGINT to one of
            # gRPC's threads, and Python's main thread acts on it only when it next wakes.
            for _ in range(600):
                time.sleep(0.1)

    async def async_simulation() -> None:
        async with AsyncWorker(target, run_id, spool_dir=spool_dir, options=options) as run:
            run.log_metrics(0, {"x": 1.0})
            print("ready", flush=True)
            await asyncio.sleep(60)

    if helper == "Worker":
        simulation()
    else:
        asyncio.run(async_simulation())
    """
)


@pytest.mark.parametrize("helper", ["Worker", "AsyncWorker"])
def test_ctrl_c_ends_the_run_stopped_with_either_helper(
    helper: str, fake: FakeServer, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, helper, fake.target, RUN, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in stderr  # the interrupt still ends the program
    status = final_status(fake.service.run(RUN))
    assert status.outcome == tm.RUN_OUTCOME_STOPPED, status.error_message


def test_command_callback_errors_are_logged_sync_or_async(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []

    async def main() -> None:
        async def bad_async(command: Command) -> None:
            await asyncio.sleep(0)
            raise ValueError(f"async callback refused {command.args['price']}")

        def bad_plain(command: Command) -> None:
            raise ValueError("plain callback refused")

        async def good_async(command: Command) -> None:
            done.append(command.name)

        async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.on_command("set_price", bad_async)
            run.on_command("set_price", bad_plain)
            run.on_command("set_price", lambda command: good_async(command))  # an awaitable
            run.log_metrics(0, {"x": 1.0})
            assert await run.flush(timeout=10)
            fake.service.command(RUN, "set_price", {"price": 7})
            for _ in range(500):
                if done and caplog.text.count("callback for command 'set_price' failed") == 2:
                    break
                await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert done == ["set_price"]
    failures = [r for r in caplog.records if "callback for command 'set_price' failed" in r.message]
    assert len(failures) == 2
    errors = sorted(str(r.exc_info[1]) for r in failures if r.exc_info)
    assert errors == ["async callback refused 7.0", "plain callback refused"]
