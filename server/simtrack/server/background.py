"""The server's background loops: the database health monitor, the sweeps and compaction.

Both run until their ``stopping`` event is set and check it between rounds, never by being
cancelled half-way through a database call (that can leave aiosqlite's connection unclosable
and hang the shutdown); :class:`BackgroundLoops` cancels only what overstays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from grpc_health.v1 import health, health_pb2
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from simtrack.server.config import Settings
from simtrack.server.db.repositories import ping
from simtrack.server.domain.artifacts import ArtifactService
from simtrack.server.domain.compaction import CompactionService
from simtrack.server.domain.live_runs import LiveRuns
from simtrack.server.domain.validations import ValidationService
from simtrack.server.observability import ServerMetrics

log = logging.getLogger(__name__)

# A database that takes longer than this to answer "select 1" counts as unreachable.
PROBE_TIMEOUT = 2.0


def probe_timeout(interval: float) -> float:
    return max(interval, PROBE_TIMEOUT)


async def monitor_database(
    engine: AsyncEngine,
    servicer: health.aio.HealthServicer,
    service_names: Sequence[str],
    interval: float,
    stopping: asyncio.Event,
) -> None:
    """Report NOT_SERVING while the database does not answer, SERVING once it does again.

    The status is set for the server as a whole ("") and for each of ``service_names``.
    """
    sessions = async_sessionmaker(engine)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    last = serving
    while not stopping.is_set():
        try:
            async with asyncio.timeout(probe_timeout(interval)), sessions() as session:
                await ping(session)
            status = serving
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            status = not_serving
            if last == serving:
                log.warning("database unreachable, reporting NOT_SERVING: %s", exc)
        if status != last and status == serving:
            log.info("database reachable again, reporting SERVING")
        for name in ("", *service_names):
            await servicer.set(name, status)
        last = status
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()


async def sweep_runs(
    live_runs: LiveRuns,
    validations: ValidationService,
    artifacts: ArtifactService,
    settings: Settings,
    stopping: asyncio.Event,
) -> None:
    """Fail runs whose worker vanished; stop cancelled runs whose worker never confirmed;
    check the success criteria of completed runs a crash left unchecked; remove the files of
    deleted runs.
    """
    interval = min(settings.heartbeat_timeout, settings.cancel_grace) / 4
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()
        try:
            changed = await live_runs.sweep(settings.heartbeat_timeout, settings.cancel_grace)
            if changed:
                log.info("liveness: %d run(s) ended by the sweeper", len(changed))
            if checked := await validations.sweep():
                log.info("success criteria of %d run(s) checked by the sweeper", checked)
            if removed := await artifacts.sweep():
                log.info("artifact files of %d deleted run(s) removed", removed)
        except Exception:  # noqa: BLE001 - the next sweep tries again
            log.warning("liveness sweep failed", exc_info=True)


async def compact_chunks(
    compaction: CompactionService,
    interval: float,
    metrics: ServerMetrics | None,
    stopping: asyncio.Event,
) -> None:
    """Compact the metrics due every ``interval`` seconds, at once again after a round that
    had more due than it took (a backlog). Safe beside other servers on the database: each
    metric is compacted under a lock (``domain/compaction.py``).
    """
    while not stopping.is_set():
        full = False
        try:
            report = await compaction.run_round(stopping.is_set)
            full = report.full
            if metrics is not None:
                for done in report.compacted:
                    lag = None if done.lag is None else done.lag.total_seconds()
                    metrics.metric_compacted(done.chunks_in, done.points, lag)
                if report.staged_messages:
                    metrics.staged_messages_moved(report.staged_messages)
                if report.failed:
                    metrics.compaction_failed(report.failed)
            if report.compacted:
                log.debug(
                    "compaction: %d metric(s), %d chunks into %d",
                    len(report.compacted),
                    sum(c.chunks_in for c in report.compacted),
                    sum(c.chunks_out for c in report.compacted),
                )
        except Exception:  # noqa: BLE001 - the next round tries again
            log.warning("compaction round failed", exc_info=True)
        if full:
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()


class BackgroundLoops:
    """The loops above as tasks that share one ``stopping`` event."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, loop: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(loop))

    async def stop(self) -> None:
        """Tell the loops to end, give them a probe's time to do so, cancel what is left."""
        self.stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=PROBE_TIMEOUT + 1)
        for task in pending:
            task.cancel()
