"""One benchmark worker process: a single grpc.aio StreamRun stream pushing metric batches.

Run as ``python -m bench.stream_worker``; it serves one case after another, each given as a
JSON config line on stdin. For a case the worker builds its messages (numpy arrays assigned to
the repeated fields; kept for later cases of the same shape, as messages do not name the run),
connects and says hello, prints a ``ready`` line, waits for ``go`` on stdin (so that every
worker of a case starts together), then streams:
one metric per message, ``batch`` contiguous steps per message, at most ``window`` messages
unacknowledged. It prints one ``result`` line: the monotonic times (system-wide on Linux, so
comparable across processes) of its first send and of the ack covering its last metric batch.
A final ``status`` message (completed) then ends the run, and the stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np

from simtrack.v1 import runs_pb2, telemetry_pb2, telemetry_pb2_grpc

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True)
class WorkerConfig:
    target: str
    run_id: str
    points: int
    batch: int
    window: int = 32
    metric: str = "loss"
    metrics: int = 1  # series of the run: ``metric``, or ``metric_0`` .. ``metric_{N-1}``
    timestamps: bool = True
    distinct_timestamps: bool = False  # a timestamp per point (1 ms apart), not one per batch
    # Each point its own value (a random walk) and time (a clock of 10 ticks/s, stamped to the
    # microsecond), as a simulation logging through the worker helper makes them; not one
    # batch's values and times sent again and again.
    clocked: bool = False
    finish: bool = True  # send the final status after the metric batches


@dataclass
class WorkerResult:
    run_id: str
    points: int
    messages: int
    build_s: float
    first_send: float
    last_ack: float
    final_acked: bool
    max_in_flight: int


def metric_names(config: WorkerConfig) -> list[str]:
    if config.metrics == 1:
        return [config.metric]
    return [f"{config.metric}_{index}" for index in range(config.metrics)]


def build_messages(config: WorkerConfig) -> list[telemetry_pb2.StreamRunRequest]:
    """Every metric message of the run, seq 1..N, steps 0..points-1 in order; with several
    metrics, ``points`` each, their batches take turns (as a simulation logs them, step by step).
    """
    rng = np.random.default_rng(abs(hash(config.run_id)) % (2**32))
    stamps: np.ndarray[Any, Any] | None
    if config.clocked:  # the whole series', each batch its part
        values = np.cumsum(rng.standard_normal(config.points)) * 0.01
        ticks = time.time() + np.arange(config.points) * 0.1
        stamps = np.round(ticks + rng.random(config.points) * 1e-3, 6)
    else:  # one batch's, sent again and again
        values = rng.standard_normal(config.batch)
        stamps = np.full(config.batch, time.time()) if config.timestamps else None
        if stamps is not None and config.distinct_timestamps:
            stamps += np.arange(config.batch) * 1e-3
    messages: list[telemetry_pb2.StreamRunRequest] = []
    count = -(-config.points // config.batch)
    for index in range(count):
        start = index * config.batch
        n = min(config.batch, config.points - start)
        steps = np.arange(start, start + n, dtype=np.int64)
        offset = start if config.clocked else 0  # where its values and times start in them
        for name in metric_names(config):
            series = telemetry_pb2.MetricSeries(
                name=name, steps=steps, values=values[offset : offset + n]
            )
            if stamps is not None:
                series.timestamps.extend(stamps[offset : offset + n])
            messages.append(
                telemetry_pb2.StreamRunRequest(
                    seq=len(messages) + 1, metrics=telemetry_pb2.MetricBatch(series=[series])
                )
            )
    return messages


class Streamer:
    """Sends sequenced messages on an open StreamRun call, never more than ``window`` unacked."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[
            telemetry_pb2.StreamRunRequest, telemetry_pb2.StreamRunResponse
        ],
        window: int,
    ) -> None:
        self.call = call
        self.window = window
        self.acked = 0
        self.max_in_flight = 0
        self.commands: list[tuple[float, runs_pb2.Command]] = []
        self._moved = asyncio.Event()
        self._ack_times: dict[int, float] = {}
        self._watch: int | None = None
        self._reader: asyncio.Task[None] | None = None
        # Called with (committed seq, monotonic time) whenever an ack moves the watermark.
        self.on_ack: Callable[[int, float], None] | None = None

    async def hello(self, run_id: str, worker_id: str) -> int:
        await self.call.write(
            telemetry_pb2.StreamRunRequest(
                hello=telemetry_pb2.Hello(run_id=run_id, worker_id=worker_id)
            )
        )
        welcome = await self.call.read()
        if not isinstance(welcome, telemetry_pb2.StreamRunResponse) or not welcome.HasField(
            "welcome"
        ):
            raise RuntimeError(f"expected welcome, got {welcome!r}")
        self.acked = welcome.welcome.committed_seq
        self._reader = asyncio.create_task(self._read())
        return self.acked

    async def _read(self) -> None:
        while True:
            response = await self.call.read()
            if not isinstance(response, telemetry_pb2.StreamRunResponse):
                break  # EOF
            kind = response.WhichOneof("kind")
            if kind == "ack":
                committed = response.ack.committed_seq
                if committed > self.acked:
                    self.acked = committed
                    if self._watch is not None and committed >= self._watch:
                        self._ack_times.setdefault(self._watch, time.monotonic())
                    if self.on_ack is not None:
                        self.on_ack(committed, time.monotonic())
                    self._moved.set()
            elif kind == "command":
                self.commands.append((time.monotonic(), response.command))
                self._moved.set()
        self._moved.set()

    def watch(self, seq: int) -> None:
        """Record the time at which ``seq`` is first covered by an ack."""
        self._watch = seq

    def ack_time(self, seq: int) -> float:
        return self._ack_times[seq]

    async def send(self, message: telemetry_pb2.StreamRunRequest) -> None:
        while message.seq - self.acked > self.window:
            self._check_reader()
            self._moved.clear()
            await self._moved.wait()
        await self.call.write(message)
        in_flight = message.seq - self.acked
        if in_flight > self.max_in_flight:
            self.max_in_flight = in_flight

    async def wait_acked(self, seq: int) -> None:
        while self.acked < seq:
            self._check_reader()
            self._moved.clear()
            await self._moved.wait()

    async def wait_command(self) -> tuple[float, runs_pb2.Command]:
        while not self.commands:
            self._check_reader()
            self._moved.clear()
            await self._moved.wait()
        return self.commands[0]

    def _check_reader(self) -> None:
        if self._reader is not None and self._reader.done():
            self._reader.result()  # raises the stream's error, if it ended with one
            raise RuntimeError("the stream ended early")

    async def abort(self) -> None:
        """Cancel the call (the worker vanishes) and reap the reader."""
        self.call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._reader

    async def close(self) -> None:
        await self.call.done_writing()
        if self._reader is not None:
            await self._reader


async def stream(
    config: WorkerConfig, messages: Sequence[telemetry_pb2.StreamRunRequest], build_s: float
) -> WorkerResult:
    """Connect and say hello, print ``ready``, wait for ``go``, stream, print the result."""
    async with grpc.aio.insecure_channel(config.target, options=CHANNEL_OPTIONS) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        streamer = Streamer(stub.StreamRun(), config.window)
        committed = await streamer.hello(config.run_id, f"bench-{config.run_id[:8]}")
        if committed:
            raise RuntimeError(f"run {config.run_id} already has committed seq {committed}")
        _emit({"ready": True, "build_s": build_s})
        if (await _read_line()).strip() != "go":
            raise RuntimeError("expected go")
        last = len(messages)
        streamer.watch(last)
        first_send = time.monotonic()
        for message in messages:
            await streamer.send(message)
        await streamer.wait_acked(last)
        last_ack = streamer.ack_time(last)
        final_acked = False
        if config.finish:
            await streamer.send(
                telemetry_pb2.StreamRunRequest(
                    seq=last + 1,
                    status=telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_COMPLETED),
                )
            )
            await streamer.wait_acked(last + 1)
            final_acked = True
        await streamer.close()
    return WorkerResult(
        run_id=config.run_id,
        points=config.points * config.metrics,
        messages=last,
        build_s=build_s,
        first_send=first_send,
        last_ack=last_ack,
        final_acked=final_acked,
        max_in_flight=streamer.max_in_flight,
    )


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def serve_cases() -> None:
    """Run cases as the orchestrator sends them; messages are built once per shape."""
    built: dict[tuple[int, int, bool, bool, str, int], list[telemetry_pb2.StreamRunRequest]] = {}
    while line := (await _read_line()).strip():
        if line == "exit":
            return
        config = WorkerConfig(**json.loads(line))
        key = (
            config.points,
            config.batch,
            config.timestamps,
            config.distinct_timestamps,
            config.metric,
            config.metrics,
        )
        started = time.monotonic()
        if key not in built:
            built[key] = build_messages(config)
        build_s = time.monotonic() - started
        try:
            result = await stream(config, built[key], build_s)
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, which fails
            _emit({"error": f"{type(exc).__name__}: {exc}"})
            continue
        _emit({"result": asdict(result)})


def main() -> int:
    asyncio.run(serve_cases())
    return 0


if __name__ == "__main__":
    sys.exit(main())
