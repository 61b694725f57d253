"""Helpers of the compaction tests: a writer on the test's database, fleet-shaped series, and
checksums of a metric's points in history order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.server.api.telemetry import decode
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.db.chunks import StoredChunk
from simtrack.server.db.compaction_store import SqlCompactionStore
from simtrack.server.db.engine import sqlite_file
from simtrack.server.db.sqlite_reads import SqliteReadConnections
from simtrack.server.domain.compaction import CompactionService
from simtrack.server.domain.series import merge
from simtrack.server.ingest.writer import GroupCommitWriter, metric_id
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support import Services, server_url

# Values whose bits a lossy or sloppy path would change: NaN payloads, -0.0, infinities, a
# subnormal, and the extremes of float64.
ODD_VALUES = np.array(
    [0x7FF8_DEAD_BEEF_0001, 0x8000_0000_0000_0000, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000,
     0x0000_0000_0000_0001, 0x7FEF_FFFF_FFFF_FFFF, 0xFFEF_FFFF_FFFF_FFFF],
    dtype="<u8",
).view("<f8")  # fmt: skip


def fleet_batch(seq: int, names: Sequence[str] = ("loss",)) -> tpb.StreamRunRequest:
    """Stream message ``seq``: two or three points per metric, steps that repeat across
    batches (ties whose order is history order) and sometimes go back, odd values now and then.
    """
    rng = np.random.default_rng(seq)
    series = []
    for k, name in enumerate(names):
        n = 2 + (seq + k) % 2
        steps = (seq // 3 + np.array([0, 1, 0])[:n] - (seq % 7 == 0)).tolist()
        values = np.round(rng.standard_normal(n) * 100, 3)
        if seq % 11 == 0:
            values[0] = ODD_VALUES[seq % len(ODD_VALUES)]
        stamps = (1.7e9 + seq * 0.2 + np.arange(n) * 1e-3).tolist()
        series.append(
            tpb.MetricSeries(name=name, steps=steps, values=values.tolist(), timestamps=stamps)
        )
    return tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=series))


async def send(
    writer: GroupCommitWriter, run_id: str, seqs: Iterable[int], names: Sequence[str] = ("loss",)
) -> list[int]:
    """Stream messages ``seqs`` (fleet_batch), submitted at once (the writer groups them); the
    committed seq each was acked with.
    """
    futures = [
        writer.submit(LOCAL_PRINCIPAL, run_id, decode(fleet_batch(seq, names))) for seq in seqs
    ]
    return list(await asyncio.gather(*futures))


async def stored_points(services: Services, run_id: str, name: str) -> tuple[bytes, bytes, bytes]:
    """Every stored point of the metric in history order: steps, values, timestamps bytes."""
    async with services.uow() as uow:
        chunks = await uow.chunks.overlapping(
            metric_id(run_id, name), INT64_MIN, INT64_MAX, None, None
        )
    points = merge(chunks, INT64_MIN, INT64_MAX).points
    return points.steps.tobytes(), points.decoded().tobytes(), points.times().tobytes()


def checksum(points: tuple[bytes, bytes, bytes]) -> str:
    digest = hashlib.sha256()
    for column in points:
        digest.update(column)
    return digest.hexdigest()


async def chunk_rows(services: Services, run_id: str) -> list[tuple[str, int, int]]:
    """(metric_id, seq, n) of the run's chunks."""
    rows = await services.fetch(
        "SELECT metric_id, seq, n FROM metric_chunks WHERE run_id = :run ORDER BY metric_id, seq",
        run=run_id,
    )
    return [(str(r[0]), int(r[1]), int(r[2])) for r in map(tuple, rows)]


def compactor(
    engine: AsyncEngine,
    target: int = 16_384,
    settle: float = 0.0,
    reads: SqliteReadConnections | None = None,
) -> CompactionService:
    store = SqlCompactionStore(engine, reads)
    return CompactionService(store, timedelta(seconds=settle), target)


@contextlib.asynccontextmanager
async def compaction_reads(engine: AsyncEngine) -> AsyncIterator[SqliteReadConnections | None]:
    """On a SQLite file, the read connection a server gives compaction (None elsewhere)."""
    path = sqlite_file(engine.url)
    if path is None:
        yield None
        return
    reads = SqliteReadConnections(path, 1)
    try:
        yield reads
    finally:
        await reads.close()


def expected_points(seqs: Iterable[int], name: str = "loss") -> tuple[bytes, bytes, bytes]:
    """What a reader must see of metric ``name`` once batches ``seqs`` are stored: their
    points in history order, computed here from the messages, not read back.
    """
    return expected_series(seqs, (name,))[name]


def expected_series(
    seqs: Iterable[int], names: Sequence[str]
) -> dict[str, tuple[bytes, bytes, bytes]]:
    """`expected_points` of each of ``names``, the batches made with these names."""
    chunks: dict[str, list[StoredChunk]] = {name: [] for name in names}
    for seq in seqs:
        for c in decode(fleet_batch(seq, names)).metrics:
            chunks[c.name].append(
                StoredChunk(seq, c.first_step, c.last_step, c.n, c.steps, c.vals, c.ts)
            )
    expected = {}
    for name, mine in chunks.items():
        points = merge(mine, INT64_MIN, INT64_MAX).points
        expected[name] = (
            points.steps.tobytes(),
            points.decoded().tobytes(),
            points.times().tobytes(),
        )
    return expected


async def kill_compacting_server_when(
    services: Services, cwd: Path, midway: Callable[[], Awaitable[bool]], **settings: str
) -> None:
    """Start ``simtrack serve`` on the test's database compacting every 20 ms with no settle
    time (and ``settings``, as ``SIMTRACK_`` variables), and SIGKILL it once ``midway()``
    (polled every 2 ms, for a minute at most).
    """
    simtrack = Path(sys.executable).with_name("simtrack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMTRACK_")}
    env |= {"SIMTRACK_COMPACTION_INTERVAL": "0.02", "SIMTRACK_COMPACTION_SETTLE": "0"}
    env |= {"SIMTRACK_HTTP_LISTEN": ""} | {f"SIMTRACK_{k.upper()}": v for k, v in settings.items()}
    server = subprocess.Popen(
        [str(simtrack), "serve", "--listen", "127.0.0.1:0", "--database-url", server_url(services)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not await midway():
            await asyncio.sleep(0.002)
    finally:
        server.kill()  # SIGKILL
        server.wait()
