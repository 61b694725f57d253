"""What stream tests share (``StreamKit``: streams, uploads, data, database readers, proxies,
runs to stream into) and a worker's whole upload through reconnects (``Upload``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from simtrack.v1 import (
    agents_pb2,
    experiments_pb2,
    runs_pb2,
    telemetry_pb2,
)
from tests.support.clients import Client
from tests.support.data import Checksum, Dataset
from tests.support.proxy import TcpProxy
from tests.support.servers import Server
from tests.support.stored import TelemetryDatabase
from tests.support.streams import (
    AIO_CHANNEL_OPTIONS,
    RECONNECTABLE,
    STREAM_WINDOW,
    RawStream,
    StreamEnded,
)


class Upload:
    """A worker's whole upload of ``messages`` (seq 1..n), through reconnects.

    Each attempt opens a stream to ``target()`` (read afresh: a restarted server may live
    elsewhere), takes the welcome's watermark and resends everything after it, with the
    window; on a broken stream it reconnects. It records every welcome's watermark and how
    every attempt ended, and checks the watermark never goes back below an ack it received.
    """

    def __init__(
        self,
        kit: StreamKit,
        target: Callable[[], str],
        run_id: str,
        messages: Sequence[telemetry_pb2.StreamRunRequest],
        worker_id: str = "e2e-uploader",
        deadline: float = 90.0,
        pace: float = 0.0,
    ) -> None:
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        self.kit = kit
        self.target = target
        self.run_id = run_id
        self.messages = messages
        self.worker_id = worker_id
        self.deadline = deadline
        self.pace = pace  # seconds between messages (0: as fast as the window allows)
        self.acked = 0
        self.welcomes: list[int] = []
        self.lost_acks = 0  # seqs a welcome reported committed that were never acked to us
        self.endings: list[str] = []  # per attempt: how it ended
        self.stream: RawStream | None = None
        self._progress = asyncio.Event()

    @property
    def reconnects(self) -> int:
        return max(0, len(self.endings) - 1)

    async def run(self) -> Upload:
        total = len(self.messages)
        async with asyncio.timeout(self.deadline):
            while True:
                stream = self.stream = self.kit.stream(self.target(), self.run_id, self.worker_id)
                watch = asyncio.create_task(self._follow(stream))
                try:
                    welcome = await stream.open(last_acked=self.acked, timeout=5)
                    self.welcomes.append(welcome.committed_seq)
                    self.lost_acks += max(0, welcome.committed_seq - self.acked)
                    assert welcome.committed_seq >= self.acked, (
                        f"acknowledged data lost: the welcome says {welcome.committed_seq}, "
                        f"seq {self.acked} was acknowledged before"
                    )
                    for message in self.messages[welcome.committed_seq :]:
                        await stream.send(message, timeout=20)
                        if self.pace:
                            await asyncio.sleep(self.pace)
                    await stream.wait_acked(total, timeout=20)
                    self.endings.append((await stream.finish()).name)
                    return self
                except (StreamEnded, TimeoutError) as exc:
                    ended = stream.code
                    self.endings.append(f"{ended.name if ended else 'TIMEOUT'}: {exc}")
                    retry = ended is None or ended in RECONNECTABLE or ended == grpc.StatusCode.OK
                    if not (retry or stream.write_race or stream.going_away is not None):
                        raise
                    await stream.close()
                    await asyncio.sleep(0.05)
                finally:
                    watch.cancel()
                    self._take(stream)

    async def wait_acked(self, seq: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while self.acked < seq:
                self._progress.clear()
                await self._progress.wait()

    def _take(self, stream: RawStream) -> None:
        """Note the stream's acks (only acks: a welcome's watermark is checked against them)."""
        if stream.acks and stream.acks[-1] > self.acked:
            self.acked = stream.acks[-1]
            self._progress.set()

    async def _follow(self, stream: RawStream) -> None:
        while True:
            await stream._next_change()
            self._take(stream)


class StreamKit:
    """What stream tests share: raw streams and uploads (channels cached, closed after the
    test), test data, database readers, proxies, and runs to stream into.
    """

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.streams: list[RawStream] = []
        self.databases: dict[str, TelemetryDatabase] = {}
        self.proxies: list[TcpProxy] = []
        self.stream_codes: list[grpc.StatusCode] = []
        self.violations: list[str] = []

    def channel(self, target: str) -> grpc.aio.Channel:
        if target not in self.channels:
            self.channels[target] = grpc.aio.insecure_channel(target, options=AIO_CHANNEL_OPTIONS)
        return self.channels[target]

    def stream(
        self,
        target: str,
        run_id: str,
        worker_id: str = "e2e-worker",
        window: int = STREAM_WINDOW,
        authorization: str | None = None,
    ) -> RawStream:
        """A stream for ``run_id`` on the server at ``target`` (not opened yet), sending
        ``authorization`` metadata if given.
        """
        stream = RawStream(self.channel(target), run_id, worker_id, window, authorization)
        self.streams.append(stream)
        return stream

    async def open(
        self, server: Server, run_id: str, worker_id: str = "e2e-worker", replay: bool = False
    ) -> RawStream:
        """A stream for ``run_id`` on ``server``, past its welcome."""
        stream = self.stream(server.address, run_id, worker_id)
        await stream.open(replay=replay)
        return stream

    async def deliver(
        self, server: Server, run_id: str, messages: Sequence[telemetry_pb2.StreamRunRequest]
    ) -> None:
        """Stream ``messages`` (seq 1..n) for ``run_id`` on ``server``, see them all
        acknowledged, and end the stream.
        """
        stream = await self.open(server, run_id)
        await stream.send_all(messages)
        await stream.wait_acked(messages[-1].seq)
        await stream.finish()

    def upload(
        self,
        target: Callable[[], str],
        run_id: str,
        messages: Sequence[telemetry_pb2.StreamRunRequest],
        deadline: float = 90.0,
        pace: float = 0.0,
    ) -> Upload:
        return Upload(self, target, run_id, messages, deadline=deadline, pace=pace)

    @staticmethod
    def checksum(steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> Checksum:
        return Checksum.of(steps, values)

    def dataset(self, batches: int, points: int = 1000, seed: int = 0) -> Dataset:
        return Dataset(batches, points, seed=seed)

    def database(self, url: str) -> TelemetryDatabase:
        if url not in self.databases:
            self.databases[url] = TelemetryDatabase(url)
        return self.databases[url]

    async def proxy(self, upstream: str, seed: int = 0, max_cuts: int = 0) -> TcpProxy:
        proxy = TcpProxy(upstream, seed, max_cuts)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    def new_run(self, server: Server | Client, total_ticks: int = 0) -> runs_pb2.Run:
        """A pending run of a new experiment (with its agent) on ``server`` (or through a
        client of it, e.g. one sending a tenant's key).
        """
        agent = server.agents.CreateAgent(
            agents_pb2.CreateAgentRequest(
                agent=agents_pb2.Agent(
                    name=f"agent-{uuid.uuid4().hex[:8]}", framework=agents_pb2.FRAMEWORK_CUSTOM
                )
            )
        ).agent
        experiment = server.experiments.CreateExperiment(
            experiments_pb2.CreateExperimentRequest(
                experiment=experiments_pb2.Experiment(
                    name="streams", agent_id=agent.id, scenario_id="tier0-tutorial"
                )
            )
        ).experiment
        run = runs_pb2.Run(experiment_id=experiment.id, total_ticks=total_ticks)
        return server.runs.CreateRun(runs_pb2.CreateRunRequest(run=run)).run

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.close()
            if stream.code is not None and not stream.write_race:
                self.stream_codes.append(stream.code)
            self.violations += stream.violations
        for proxy in self.proxies:
            await proxy.close()
        for channel in self.channels.values():
            await channel.close()
        for database in self.databases.values():
            database.dispose()
