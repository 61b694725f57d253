"""The worker helper's own ceiling: ``Worker.log_metrics`` against a fake StreamRun server.

``python bench/helper_micro.py [--steps N] [--metrics M] [--in-process]``

One Python thread calls ``run.log_metrics(step, {M names: values})`` once per step inside
``with Worker(...) as run`` (each step's dict is built from a precomputed row, as a simulation
would). The fake server (a child process by default, like a real server; ``--in-process``
shares this process's GIL) parses every message, counts the points and acks each one at once,
so the figures are the client's ceiling: batching, the spool (a real SQLite file) and gRPC, with
no database behind the server. Prints ``name = value unit`` lines:

* ``helper_log_metrics_points_per_s``: points / time from the first ``log_metrics`` call to the
  return of the last (the buffer is bounded, so this is the sustained rate, not a burst);
* ``helper_acked_points_per_s``: points / time until ``with`` exits (everything acknowledged);
* ``helper_log_metrics_us_per_call``: the mean cost of one call with M metrics.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from simtrack.client import Worker
from simtrack.v1 import telemetry_pb2 as tm
from simtrack.v1 import telemetry_pb2_grpc


class CountingTelemetryService(telemetry_pb2_grpc.TelemetryServiceServicer):
    """StreamRun that acks every message at once and counts the metric points it got."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.points: dict[str, int] = {}

    def StreamRun(
        self, request_iterator: Iterator[tm.StreamRunRequest], context: Any
    ) -> Iterator[tm.StreamRunResponse]:
        hello = next(request_iterator).hello
        yield tm.StreamRunResponse(welcome=tm.Welcome(heartbeat_interval_seconds=10))
        committed = 0
        points = 0
        for request in request_iterator:
            if request.seq == 0:
                continue
            if request.seq == committed + 1:
                committed = request.seq
                points += sum(len(series.values) for series in request.metrics.series)
            yield tm.StreamRunResponse(ack=tm.Ack(committed_seq=committed))
        with self.lock:
            self.points[hello.run_id] = self.points.get(hello.run_id, 0) + points


def start_fake(port: int = 0) -> tuple[grpc.Server, CountingTelemetryService, int]:
    service = CountingTelemetryService()  # type: ignore[abstract]  # StreamRun only
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, service, bound


def _serve_child(ready: Any, stop: Any, counts: Any) -> None:
    server, service, port = start_fake()
    ready.put(port)
    stop.wait()
    server.stop(grace=1).wait()
    counts.put(dict(service.points))


def measure(steps: int, metrics: int, target: str, spool_dir: str) -> dict[str, float]:
    names = [f"metric_{i}" for i in range(metrics)]
    rng = random.Random(7)
    rows = [[rng.random() for _ in range(metrics)] for _ in range(min(steps, 10_000))]
    run_id = str(uuid.uuid4())
    started = time.perf_counter()
    with Worker(target, run_id, spool_dir=spool_dir) as run:
        for step in range(steps):
            run.log_metrics(step, dict(zip(names, rows[step % len(rows)], strict=True)))
        logged = time.perf_counter()
    acked = time.perf_counter()
    points = steps * metrics
    return {
        "points": points,
        "log_seconds": logged - started,
        "acked_seconds": acked - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=300_000, help="log_metrics calls")
    parser.add_argument("--metrics", type=int, default=10, help="metrics per call")
    parser.add_argument("--in-process", action="store_true", help="fake server in this process")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="simtrack-helper-") as spool_dir:
        if args.in_process:
            server, service, port = start_fake()
            try:
                figures = measure(args.steps, args.metrics, f"127.0.0.1:{port}", spool_dir)
            finally:
                server.stop(grace=1).wait()
            received = sum(service.points.values())
        else:
            context = multiprocessing.get_context("spawn")
            ready, counts = context.Queue(), context.Queue()
            stop = context.Event()
            child = context.Process(target=_serve_child, args=(ready, stop, counts), daemon=True)
            child.start()
            try:
                port = ready.get(timeout=30)
                figures = measure(args.steps, args.metrics, f"127.0.0.1:{port}", spool_dir)
            finally:
                stop.set()
            received = sum(counts.get(timeout=30).values())
            child.join(10)
        leftover = list(Path(spool_dir).glob("*.sqlite"))

    points = figures["points"]
    if received != points or leftover:
        print(f"error: the fake server got {received:,} of {points:,} points", file=sys.stderr)
        return 1
    calls = args.steps
    print(f"helper_log_metrics_points_per_s = {points / figures['log_seconds']:.0f} points/s")
    print(f"helper_acked_points_per_s = {points / figures['acked_seconds']:.0f} points/s")
    print(f"helper_log_metrics_us_per_call = {figures['log_seconds'] / calls * 1e6:.2f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
