"""Measurements made from the orchestrating process: setup, idle streams, cancel latency.

The orchestrator is a client process of its own, separate from the server; each stream opened
here says hello on its own run over its own connection, as a worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from bench.stream_worker import CHANNEL_OPTIONS, Streamer
from simtrack.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

T = TypeVar("T")
SCENARIO = "tier0-tutorial"
# A separate TCP connection per channel (channels to one target share one by default).
OWN_CONNECTION: list[tuple[str, Any]] = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


async def bounded_gather(
    factories: Sequence[Callable[[], Awaitable[T]]], concurrency: int
) -> list[T]:
    """Await each factory's coroutine with at most ``concurrency`` running at once, in order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await factory()

    return list(await asyncio.gather(*(one(f) for f in factories)))


class Control:
    """Unary calls to a simtrack server: an agent, an experiment, and runs of it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.experiment_id = ""
        self.agent_id = ""
        self.scenario_id = SCENARIO

    async def setup(self) -> None:
        agent = (
            await self.agents.CreateAgent(
                agents_pb2.CreateAgentRequest(
                    agent=agents_pb2.Agent(
                        name=f"bench-{uuid.uuid4().hex[:8]}",
                        framework=agents_pb2.FRAMEWORK_BASELINE,
                    )
                )
            )
        ).agent
        self.agent_id = agent.id
        experiment = (
            await self.experiments.CreateExperiment(
                experiments_pb2.CreateExperimentRequest(
                    experiment=experiments_pb2.Experiment(
                        name="ingest benchmark", agent_id=agent.id, scenario_id=self.scenario_id
                    )
                )
            )
        ).experiment
        self.experiment_id = experiment.id

    async def create_run(self) -> str:
        request = runs_pb2.CreateRunRequest(run=runs_pb2.Run(experiment_id=self.experiment_id))
        return (await self.runs.CreateRun(request)).run.id

    async def create_runs(self, count: int, concurrency: int = 16) -> list[str]:
        return await bounded_gather([self.create_run] * count, concurrency)

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class CancelFigures:
    delivery_ms: list[float]  # just before CancelRun is called -> the command read on the stream
    rpc_ms: list[float]  # CancelRun's own round trip
    confirmed: int  # runs whose worker then confirmed with a final "stopped" status


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    return percentile(values, 0.5), percentile(values, 0.99), statistics.fmean(values)


@dataclass
class IdleStream:
    run_id: str
    channel: grpc.aio.Channel
    streamer: Streamer


class IdleStreams:
    """Hello-only StreamRun streams, each on its own run and its own connection, as idle
    workers hold them (a worker sends heartbeats every few seconds; these are too short-lived
    to need any).
    """

    def __init__(self, control: Control) -> None:
        self.control = control
        self.streams: list[IdleStream] = []
        self.create_s = 0.0  # spent creating their runs
        self.open_s = 0.0  # spent opening the streams (hello -> welcome)

    def __len__(self) -> int:
        return len(self.streams)

    async def grow(self, count: int) -> None:
        started = time.monotonic()
        run_ids = await self.control.create_runs(count, concurrency=32)
        created = time.monotonic()
        new = []
        for run_id in run_ids:
            channel = grpc.aio.insecure_channel(self.control.target, options=OWN_CONNECTION)
            streamer = Streamer(telemetry_pb2_grpc.TelemetryServiceStub(channel).StreamRun(), 32)
            new.append(IdleStream(run_id, channel, streamer))
        self.streams.extend(new)
        await bounded_gather([_hello(s.streamer, s.run_id) for s in new], 64)
        self.create_s += created - started
        self.open_s += time.monotonic() - created

    async def open_until(self, most: int, deadline: float, least: int, chunk: int = 100) -> None:
        """Open streams a chunk at a time: ``most``, or fewer if the next chunk would end after
        ``deadline`` (but never fewer than ``least``).
        """
        while len(self) < most:
            if len(self) >= least:
                per_stream = (self.create_s + self.open_s) / len(self)
                if time.monotonic() + per_stream * chunk > deadline:
                    return
            await self.grow(min(chunk, most - len(self)))

    async def close(self) -> None:
        await asyncio.gather(*(s.streamer.abort() for s in self.streams))
        with contextlib.suppress(Exception):
            await asyncio.gather(*(s.channel.close() for s in self.streams))


async def cancel_latency(control: Control, streams: Sequence[IdleStream]) -> CancelFigures:
    """Cancel the runs of live streams one after another; time each command's delivery."""
    delivery: list[float] = []
    rpc: list[float] = []
    confirmations: list[asyncio.Task[None]] = []
    for stream in streams:
        before = time.monotonic()
        await control.runs.CancelRun(runs_pb2.CancelRunRequest(id=stream.run_id, reason="bench"))
        returned = time.monotonic()
        received, command = await asyncio.wait_for(stream.streamer.wait_command(), 10)
        if command.name != "cancel":
            raise RuntimeError(f"expected a cancel command, got {command.name!r}")
        delivery.append((received - before) * 1000)
        rpc.append((returned - before) * 1000)
        confirmations.append(asyncio.create_task(_confirm_stopped(stream.streamer)))
    await asyncio.gather(*confirmations)
    return CancelFigures(delivery, rpc, len(confirmations))


def _hello(streamer: Streamer, run_id: str) -> Callable[[], Awaitable[int]]:
    return lambda: streamer.hello(run_id, f"bench-{run_id[:8]}")


async def _confirm_stopped(streamer: Streamer) -> None:
    """What a worker does on cancel: report the run stopped, then end the stream."""
    await streamer.send(
        telemetry_pb2.StreamRunRequest(
            seq=1, status=telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_STOPPED)
        )
    )
    await streamer.wait_acked(1)
    await streamer.close()
