"""``python -m bench history``: reading a long metric back, paged and downsampled.

On each database (PostgreSQL served as the application role, and SQLite) one run gets one
metric of ``points`` points (1,000-point batches over StreamRun, a timestamp per point, as the
worker helper sends them). Then, from this process as the client:

* ``history_<db>_downsample_ms``: GetMetricHistory with max_points = 1,000 over the whole series;
* ``history_<db>_page_ms``: one page of 10,000 points from the middle of the series;
* ``history_<db>_read_points_per_s``: every point, in one ReadMetricHistory call of pages of
  100,000, the columns as stored (decoded by the client; ``..._little_endian_...`` and
  ``..._repeated_...``: the others);

each the median of several calls, beside the limit measured in the same run: the same chunks
read straight from the database by one client (psycopg binary / sqlite3, on a connection kept
open, as the server's are) and unpacked with numpy, with no gRPC and no server
(``history_<db>_raw_read_points_per_s``), and the ratio.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg

from bench.control import Control
from bench.infra import PostgresDatabase, SqliteDatabase, run_bench, start_simtrack
from bench.report import Report
from bench.stream_worker import CHANNEL_OPTIONS, Streamer, WorkerConfig, build_messages
from simtrack.client import Client, MetricHistory
from simtrack.server.db.chunks import unpack
from simtrack.v1 import telemetry_pb2, telemetry_pb2_grpc

METRIC = "loss"
Rows = list[tuple[int, int, bytes, bytes, bytes]]  # a metric's chunk rows (n, first_step, columns)
CHUNKS_SQL = (
    "SELECT c.n, c.first_step, c.steps, c.vals, c.ts FROM metric_chunks c"
    " JOIN metrics m ON m.id = c.metric_id WHERE m.run_id = {mark} AND m.name = {mark}"
    " ORDER BY c.first_step, c.seq"
)


@dataclass(frozen=True)
class Sizes:
    points: int
    repeats: int


FULL = Sizes(points=1_000_000, repeats=8)
QUICK = Sizes(points=200_000, repeats=4)


async def median_s(call: Callable[[], Awaitable[object]], repeats: int) -> float:
    """The median wall time of ``repeats`` calls, after one unmeasured warm-up call."""
    await call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def fill(target: str, run_id: str, points: int) -> None:
    """Stream ``points`` points of METRIC into the run and wait for the last ack."""
    config = WorkerConfig(target, run_id, points, batch=1000, distinct_timestamps=True)
    messages = build_messages(config)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        streamer = Streamer(telemetry_pb2_grpc.TelemetryServiceStub(channel).StreamRun(), window=32)
        await streamer.hello(run_id, "bench-history")
        for message in messages:
            await streamer.send(message)
        await streamer.wait_acked(len(messages))
        await streamer.close()


def raw_read(fetch: ChunkReader) -> int:
    """Read the metric's chunks with ``fetch`` and unpack them: the points read."""
    columns = [unpack(n, first, steps, vals, ts) for n, first, steps, vals, ts in fetch()]
    return len(np.concatenate([c[1] for c in columns]))


class ChunkReader:
    """A metric's chunk rows read straight from the database (the raw read's), on
    one connection opened at the first read and kept, as the server keeps its own: the limit
    is the read, not a connection's start (a new PostgreSQL connection's first statement
    took 5-8 ms more than the read of a fleet's compacted 1M series, 12-17 ms).
    """

    def __init__(self, connect: Callable[[], Any], mark: str, run_id: str, metric: str) -> None:
        self._connect = connect
        self._sql = CHUNKS_SQL.format(mark=mark)
        self._params = (run_id, metric)
        self._connection: Any = None

    def __call__(self) -> Rows:
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        if isinstance(connection, sqlite3.Connection):
            rows: Rows = connection.execute(self._sql, self._params).fetchall()
        else:
            rows = connection.cursor(binary=True).execute(self._sql, self._params).fetchall()
        return rows

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def postgres_fetch(url: str, run_id: str, metric: str = METRIC) -> ChunkReader:
    return ChunkReader(lambda: psycopg.connect(url, autocommit=True), "%s", run_id, metric)


def sqlite_fetch(path: Path, run_id: str, metric: str = METRIC) -> ChunkReader:
    # Used from asyncio.to_thread's threads, one read at a time.
    return ChunkReader(lambda: sqlite3.connect(path, check_same_thread=False), "?", run_id, metric)


async def measure(
    report: Report,
    name: str,
    target: str,
    points: int,
    repeats: int,
    fetch_for: Callable[[str], ChunkReader],
) -> None:
    control = Control(target)
    await control.setup()
    try:
        run_id = await control.create_run()
        with report.phase(f"{name}: stream {points:,} points"):
            await fill(target, run_id, points)
        telemetry = control.telemetry

        async def history(
            max_points: int = 0, start_step: int | None = None, page_size: int = 0
        ) -> telemetry_pb2.GetMetricHistoryResponse:
            request = telemetry_pb2.GetMetricHistoryRequest(
                run_id=run_id,
                metric=METRIC,
                max_points=max_points,
                start_step=start_step,
                page_size=page_size,
            )
            return await telemetry.GetMetricHistory(request)

        view = await history(max_points=1000)
        if not view.downsampled or view.range_count != points or len(view.steps) > 1000:
            raise RuntimeError(f"{name}: unexpected downsampled view: {view.range_count}")
        seconds = await median_s(lambda: history(max_points=1000), repeats)
        report.add(
            f"history_{name}_downsample_ms",
            seconds * 1000,
            "ms",
            note=f"{points:,} points to at most 1,000 (min/max per interval), median of {repeats}",
        )
        middle = points // 2
        seconds = await median_s(lambda: history(start_step=middle, page_size=10_000), repeats)
        report.add(
            f"history_{name}_page_ms", seconds * 1000, "ms", note="10,000 points from the middle"
        )

        fetch = fetch_for(run_id)
        rates = await read_figures(target, telemetry, run_id, METRIC, points, repeats, fetch)
        report.add(
            f"history_{name}_read_points_per_s",
            rates.stored,
            "points/s",
            note=f"{points:,} points, one ReadMetricHistory call of pages of 100,000, the"
            " columns as stored, decoded by the client (its way)",
        )
        report.add(
            f"history_{name}_read_little_endian_points_per_s",
            rates.columns,
            "points/s",
            note="the same, little-endian columns",
        )
        report.add(
            f"history_{name}_read_repeated_points_per_s",
            rates.repeated,
            "points/s",
            note="the same, the columns in the repeated fields",
        )
        report.add(
            f"history_{name}_raw_read_points_per_s",
            rates.raw,
            "points/s",
            note="the limit: the same chunks read by one client straight from the database"
            " on a kept connection",
        )
        report.add(f"history_{name}_read_vs_raw", rates.stored / rates.raw, "x")
        report.add(f"history_{name}_read_little_endian_vs_raw", rates.columns / rates.raw, "x")
        report.add(f"history_{name}_read_repeated_vs_raw", rates.repeated / rates.raw, "x")
    finally:
        await control.close()


@dataclass(frozen=True)
class ReadRates:
    """Points/s reading every point of a series, three ways (see ``read_figures``)."""

    stored: float  # Client.metric_history: the columns as stored, decoded by the client
    columns: float  # through the server, the columns as little-endian bytes
    repeated: float  # through the server, the columns in the repeated fields
    raw: float  # the same chunks straight from the database, decoded: the limit


async def read_figures(
    target: str,
    telemetry: telemetry_pb2_grpc.TelemetryServiceAsyncStub,
    run_id: str,
    metric: str,
    points: int,
    repeats: int,
    fetch: ChunkReader,
) -> ReadRates:
    """Points/s reading every point of the series (``points``) through the server at
    ``target``: as the client reads it (``Client.metric_history``, in a thread: one
    ReadMetricHistory call of pages of 100,000, the columns as stored, decoded into the
    columns it returns), and the same call in the other column encodings (each page's
    little-endian columns made numpy arrays, as `MetricHistory.of_page` does, or its repeated
    fields parsed only); and points/s of
    ``fetch`` (its chunks read straight from the database and unpacked): medians of
    ``repeats`` reads of each, the four taken in turn, in an order that rotates (``repeats``
    a multiple of four places each read as often in each place).
    """
    client = Client(target)

    async def read_all(encoding: telemetry_pb2.ColumnEncoding.ValueType) -> int:
        request = telemetry_pb2.ReadMetricHistoryRequest(
            run_id=run_id, metric=metric, page_size=100_000, column_encoding=encoding
        )
        read = 0
        async for message in telemetry.ReadMetricHistory(request):
            if encoding == telemetry_pb2.COLUMN_ENCODING_LITTLE_ENDIAN:
                read += len(MetricHistory.of_page(message.page).values)  # arrays, every column
            else:
                read += len(message.page.values)
        return read

    def client_read() -> int:
        return len(client.metric_history(run_id, metric).values)

    reads: dict[str, Callable[[], Awaitable[int]]] = {
        "stored": lambda: asyncio.to_thread(client_read),
        "columns": functools.partial(read_all, telemetry_pb2.COLUMN_ENCODING_LITTLE_ENDIAN),
        "repeated": functools.partial(read_all, telemetry_pb2.COLUMN_ENCODING_UNSPECIFIED),
        "raw": lambda: asyncio.to_thread(raw_read, fetch),
    }
    try:
        for name, read in reads.items():  # each once unmeasured, and holding every point
            if await read() != points:
                raise RuntimeError(f"{metric}: the {name} read did not hold every point")
        times: dict[str, list[float]] = {name: [] for name in reads}
        names = list(reads)
        for repeat in range(repeats):  # in turn: the machine's speed drifts, and slows all alike
            # Each in every place of the round by turns: a read just after the raw one took 5
            # ms more (the server's CPU, idle meanwhile, did 6 ms more), and in a fixed order
            # that was always the stored read.
            turn = repeat % len(names)
            for name in names[turn:] + names[:turn]:
                started = time.perf_counter()
                await reads[name]()
                times[name].append(time.perf_counter() - started)
    finally:
        fetch.close()
        client.close()
    rates = {name: points / statistics.median(taken) for name, taken in times.items()}
    return ReadRates(**rates)


async def _main(sizes: Sizes, admin_url: str, workdir: Path) -> None:
    report = Report()
    postgres = PostgresDatabase(admin_url)
    sqlite = SqliteDatabase(workdir)
    cases: list[tuple[str, str, Callable[[str], ChunkReader]]] = [
        ("pg", postgres.server_url, lambda run_id: postgres_fetch(postgres.url(), run_id)),
        ("sqlite", sqlite.server_url, lambda run_id: sqlite_fetch(sqlite.path, run_id)),
    ]
    try:
        await asyncio.to_thread(postgres.create)
        await postgres.migrate()
        for name, url, fetch_for in cases:
            server = await start_simtrack(url, workdir / f"{name}-server.log")
            try:
                await measure(report, name, server.address, sizes.points, sizes.repeats, fetch_for)
            finally:
                await server.stop()
    finally:
        await asyncio.to_thread(postgres.drop)
    report.table("simtrack history benchmark")


def run_history(quick: bool, admin_url: str) -> int:
    sizes = QUICK if quick else FULL
    return run_bench("history", lambda workdir: _main(sizes, admin_url, workdir))
