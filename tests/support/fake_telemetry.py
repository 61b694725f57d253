"""A fake TelemetryService (StreamRun only) for the worker helper's unit tests.

It stores each sequenced message once by seq, acks after each commit, and can drop the
connection after a commit (a lost ack), hold acks, refuse streams, push commands and announce
that it is going away. The real server is exercised by the end-to-end tests.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from simtrack.client import WorkerOptions
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
        self.reject_when: threading.Event | None = None  # set: the rejection waits for it
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
            if self.reject_when is not None:
                self.reject_when.wait(timeout=10)
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
