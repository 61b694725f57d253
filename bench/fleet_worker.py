"""One fleet client process: many paced StreamRun streams over a few shared channels.

Run as ``python -m bench.fleet_worker``; it reads one JSON config line on stdin (target, run
ids, channels, seconds), opens one stream per run (hello -> welcome) round-robin over its
channels, prints ``ready``, waits for ``go``, then each stream does what the worker helper does
for a worker logging ``series`` metrics every tick at 10 ticks/s (a lean equivalent: no helper
objects, messages built straight from the protobuf classes; behind schedule it sends each
missed message as the window allows, where the helper would coalesce them into fewer, larger
ones). Such a worker logs 100 points a second, below the helper's ``min_flush_points`` (500) per
``flush_interval`` (0.2 s), so the helper flushes it every ``max_flush_interval`` (1 s): every
``interval`` seconds one message of ``series`` series x ``steps`` points (with timestamps),
never more than ``window`` unacknowledged. It records each message's latency from its due time
(its tick, so waiting for the window counts) to the ack covering it, sends a final status once
``seconds`` have passed, and prints one ``result`` line.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench.control import OWN_CONNECTION
from bench.stream_worker import Streamer
from simtrack.client import WorkerOptions
from simtrack.v1 import telemetry_pb2, telemetry_pb2_grpc


@dataclass(frozen=True)
class FleetConfig:
    target: str
    run_ids: list[str]
    channels: int
    seconds: float
    series: int = 10
    ticks_per_s: int = 10
    interval: float = WorkerOptions.max_flush_interval  # the helper's flush, for so few points
    window: int = 32

    @property
    def steps(self) -> int:
        """Points per series per message: the ticks of one flush."""
        return round(self.ticks_per_s * self.interval)


class PacedStream:
    """One worker's stream: a message every ``interval``, latencies recorded from its tick."""

    def __init__(self, streamer: Streamer, config: FleetConfig) -> None:
        self.streamer = streamer
        self.config = config
        self.names = [f"m{i}" for i in range(config.series)]
        self.due: dict[int, float] = {}
        self.latencies_ms: list[float] = []
        self.messages = 0
        self.first_send = 0.0
        self.last_ack = 0.0

        streamer.on_ack = self._on_ack

    def _on_ack(self, committed: int, now: float) -> None:
        for seq in [s for s in self.due if s <= committed]:  # at most a window's worth
            self.latencies_ms.append((now - self.due.pop(seq)) * 1000)
            self.last_ack = now

    def message(self, seq: int) -> telemetry_pb2.StreamRunRequest:
        steps = self.config.steps
        first = (seq - 1) * steps
        now = time.time()
        series = [
            telemetry_pb2.MetricSeries(
                name=name,
                steps=range(first, first + steps),
                values=[random.random() for _ in range(steps)],
                timestamps=[now] * steps,
            )
            for name in self.names
        ]
        return telemetry_pb2.StreamRunRequest(
            seq=seq, metrics=telemetry_pb2.MetricBatch(series=series)
        )

    async def run(self, start: float) -> None:
        # Workers do not tick in lockstep: each starts at a random point of the first interval.
        tick = start + random.random() * self.config.interval
        end = start + self.config.seconds
        self.first_send = tick
        seq = 0
        while tick < end:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            seq += 1
            self.due[seq] = tick
            await self.streamer.send(self.message(seq))
            tick += self.config.interval
        self.messages = seq
        await self.streamer.wait_acked(seq)
        final = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_COMPLETED)
        await self.streamer.send(telemetry_pb2.StreamRunRequest(seq=seq + 1, status=final))
        await self.streamer.wait_acked(seq + 1)
        await self.streamer.close()


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def fleet(config: FleetConfig) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(config.target, options=OWN_CONNECTION)
        for _ in range(config.channels)
    ]
    stubs = [telemetry_pb2_grpc.TelemetryServiceStub(channel) for channel in channels]
    streams = [
        PacedStream(Streamer(stubs[i % len(stubs)].StreamRun(), config.window), config)
        for i in range(len(config.run_ids))
    ]
    limit = asyncio.Semaphore(32)

    async def hello(stream: PacedStream, run_id: str) -> None:
        async with limit:
            if await stream.streamer.hello(run_id, f"fleet-{run_id[:8]}"):
                raise RuntimeError(f"run {run_id} already has committed messages")

    await asyncio.gather(*(hello(s, r) for s, r in zip(streams, config.run_ids, strict=True)))
    _emit({"ready": True})
    if (await _read_line()).strip() != "go":
        raise RuntimeError("expected go")
    start = time.monotonic()
    await asyncio.gather(*(stream.run(start) for stream in streams))
    for channel in channels:
        await channel.close()
    return {
        "messages": {r: s.messages for r, s in zip(config.run_ids, streams, strict=True)},
        "latencies_ms": [round(v, 2) for s in streams for v in s.latencies_ms],
        "first_send": min(s.first_send for s in streams),
        "last_ack": max(s.last_ack for s in streams),
        "max_in_flight": max(s.streamer.max_in_flight for s in streams),
    }


async def serve() -> None:
    config = FleetConfig(**json.loads(await _read_line()))
    try:
        result = await fleet(config)
    except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, which fails
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        return
    _emit({"result": result})


def main() -> int:
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
