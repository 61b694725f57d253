"""``python -m bench query [--quick]``: finding runs and reading their results, with 10⁸ points
stored.

On each database (PostgreSQL served as the application role, then SQLite; figures prefixed
``pg_`` and ``sqlite_``) a server is loaded through the raw ingest path (worker processes, each
one StreamRun stream of 1,000-point batches at a time, ``bench/stream_worker.py``):

* ``series_runs`` runs of ``metrics`` series of ``steps`` points, and one run with one series of
  ``long_points`` (full: 99 x 10 x 100,000 + 1,000,000 = 10⁸ points; quick: 10⁷);
* ``listed_runs`` runs with parameters (lr, batch_size, optimizer) in a few experiments, most of
  them finished (completed, failed, stopped) with a few points of three metrics
  (total_profit, loss, sharpe), each sent by a short stream of its own.

Then, from this process as the client:

* ``history_downsample_p50_ms`` / ``_p99_ms``: GetMetricHistory max_points = 1,000 over the
  long series;
* ``history_page_p50_ms``: a page of 10,000 points from a random place in it;
* ``history_read_vs_raw``: every point of it in one ReadMetricHistory call of pages of
  100,000, the columns as stored, decoded by the client (``Client.metric_history``'s way),
  against the same chunks read by one client straight from the database on a kept connection
  (bench/history.py's limit); ``history_read_little_endian_vs_raw`` and
  ``history_read_repeated_vs_raw`` the same in the other column encodings;
* ``compare_5runs_p50_ms``: CompareRuns of one metric of five series runs (100,000 points
  each), at most 1,000 points a series on one step grid;
* ``listruns_filtered_p50_ms``: one page of 50 of the listed runs, filtered and ordered by a
  metric (``LIST_FILTER``, ``LIST_ORDER``);
* ``getrun_first_calls_per_s``: GetRun of each listed run once, ``CALLERS`` concurrent
  callers each on its own connection, calling back to back: each call reads its run whole
  and renders it (the server keeps the answer; ``db/run_answers.py``);
* ``getrun_calls_per_s`` / ``getrun_p99_ms``: GetRun of random listed runs, as a server that
  has served each run before answers them (each call asks its run's version), the same callers;
  ``unary_limit_calls_per_s``: the same callers calling ``grpc.health.v1.Health/Check`` of the
  same server (served in-process, touching no database: gRPC's and Python's cost of a unary
  call); ``getrun_vs_unary_limit``: the ratio. The two alternate over ``unary_rounds`` windows
  (other work on the machine hits both alike); each rate is the median window's.

Compaction is off on the bench's servers: the 1,000-point batches need none, and the listed
runs' few points (compacted 30 s after their run ends) are not read here. On PostgreSQL the
figures are taken after ``VACUUM ANALYZE`` (``PostgresDatabase.vacuum``: autovacuum is off on
this machine), ListRuns also before it (``listruns_before_vacuum_p50_ms``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.control import OWN_CONNECTION, Control, bounded_gather, percentile
from bench.history import METRIC as LONG_METRIC  # the metric its raw read reads
from bench.history import ChunkReader, postgres_fetch, read_figures, sqlite_fetch
from bench.infra import PostgresDatabase, RunningServer, SqliteDatabase, run_bench, start_simtrack
from bench.ingest_cases import WINDOW, BenchError, Started, StoredPoints, WorkerPool
from bench.report import Report, Target
from bench.stream_worker import Streamer, WorkerConfig
from simtrack.v1 import experiments_pb2, runs_pb2, runs_pb2_grpc, telemetry_pb2

SERIES_METRIC = "m"  # series runs' metrics: m_0 .. m_9
BATCH = 1000
CALLERS = 8
WORKERS = 4  # stream worker processes loading the series
LIST_FILTER = 'status = "completed" AND params.lr > 0.01'
LIST_ORDER = "metrics.total_profit desc"
LIST_PAGE = 50
LISTED_METRICS = ("total_profit", "loss", "sharpe")
LISTED_STEPS = 10  # points of each listed metric
OUTCOMES = (  # of the listed runs, in turn: 6 of 10 completed, 1 left pending
    (telemetry_pb2.RUN_OUTCOME_COMPLETED,) * 6
    + (telemetry_pb2.RUN_OUTCOME_FAILED,) * 2
    + (telemetry_pb2.RUN_OUTCOME_STOPPED, None)
)
# Issue 12's goals (items 4 and 5), for PostgreSQL.
TARGETS = {
    "pg_history_downsample_p50_ms": Target(10, at_least=False),
    "pg_history_page_p50_ms": Target(10, at_least=False),
    "pg_history_read_vs_raw": Target(0.5),
    "pg_listruns_filtered_p50_ms": Target(20, at_least=False),
    "pg_getrun_p99_ms": Target(10, at_least=False),
    "pg_getrun_vs_unary_limit": Target(0.6),
}


@dataclass(frozen=True)
class Sizes:
    series_runs: int
    metrics: int  # per series run
    steps: int  # per series
    long_points: int  # the one long series (the downsampled view's)
    listed_runs: int
    experiments: int  # the listed runs are spread over these
    latency_calls: int  # calls per latency figure
    read_repeats: int  # reads of the whole long series (and raw reads)
    unary_seconds: float  # each window of the closed-loop unary measurement
    unary_rounds: int

    @property
    def points(self) -> int:
        return self.series_runs * self.metrics * self.steps + self.long_points


FULL = Sizes(
    series_runs=99,
    metrics=10,
    steps=100_000,
    long_points=1_000_000,
    listed_runs=10_000,
    experiments=10,
    latency_calls=200,
    read_repeats=12,
    unary_seconds=4.0,
    unary_rounds=3,
)
QUICK = Sizes(
    series_runs=9,
    metrics=10,
    steps=100_000,
    long_points=1_000_000,
    listed_runs=1_000,
    experiments=10,
    latency_calls=50,
    read_repeats=4,
    unary_seconds=1.5,
    unary_rounds=3,
)


async def latencies_ms(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """The wall times of ``count`` calls one after another, after one unmeasured call."""
    await call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


# Loading


async def load_series(
    report: Report,
    name: str,
    pool: WorkerPool,
    server: RunningServer,
    control: Control,
    database: StoredPoints,
    sizes: Sizes,
) -> tuple[str, list[str]]:
    """Stream the series runs and the long run, ``WORKERS`` streams at a time; the long run's
    id and the series runs'.
    """
    long_run = await control.create_run()
    run_ids = await control.create_runs(sizes.series_runs)
    configs = [
        WorkerConfig(
            server.address,
            long_run,
            sizes.long_points,
            BATCH,
            WINDOW,
            metric=LONG_METRIC,
            distinct_timestamps=True,
        )
    ]
    configs += [
        WorkerConfig(
            server.address,
            run_id,
            sizes.steps,
            BATCH,
            WINDOW,
            metric=SERIES_METRIC,
            metrics=sizes.metrics,
            distinct_timestamps=True,
        )
        for run_id in run_ids
    ]
    started = time.monotonic()
    sent = 0
    for start in range(0, len(configs), WORKERS):
        batch = configs[start : start + WORKERS]
        await pool.prepare(batch)
        sent += sum(result.points for result in await pool.go(len(batch)))
    elapsed = time.monotonic() - started
    _, stored = database.stored_points([long_run, *run_ids])
    if stored != sent or sent != sizes.points:
        raise BenchError(f"{name}: {stored:,} points stored, {sent:,} sent, {sizes.points:,} meant")
    report.add(
        f"{name}_load_points_per_s",
        sent / elapsed,
        "points/s",
        note=(
            f"{sent:,} points in {elapsed:.1f} s, {len(configs)} runs, {WORKERS} streams at a"
            " time, 1,000-point batches, stored exactly once"
        ),
    )
    return long_run, run_ids


def listed_params(index: int, rng: random.Random) -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    params.update(
        {
            "lr": 10 ** rng.uniform(-4, -1),
            "batch_size": rng.choice([32, 64, 128, 256]),
            "optimizer": rng.choice(["adam", "sgd"]),
            "seed": index,
        }
    )
    return params


async def finish_listed(control: Control, run_id: str, index: int, rng: random.Random) -> None:
    """A short stream: a few points of each listed metric, then the run's outcome."""
    outcome = OUTCOMES[index % len(OUTCOMES)]
    if outcome is None:
        return  # stays pending
    steps = list(range(LISTED_STEPS))
    profit = rng.gauss(1000, 500)
    series = [
        telemetry_pb2.MetricSeries(
            name=metric, steps=steps, values=[rng.gauss(profit, 100) for _ in steps]
        )
        for metric in LISTED_METRICS
    ]
    streamer = Streamer(control.telemetry.StreamRun(), window=2)
    await streamer.hello(run_id, "bench-query")
    batch = telemetry_pb2.MetricBatch(series=series)
    await streamer.send(telemetry_pb2.StreamRunRequest(seq=1, metrics=batch))
    await streamer.send(
        telemetry_pb2.StreamRunRequest(seq=2, status=telemetry_pb2.FinalStatus(outcome=outcome))
    )
    await streamer.wait_acked(2)
    await streamer.close()


async def load_listed(report: Report, name: str, control: Control, sizes: Sizes) -> list[str]:
    """The listed runs, created and finished; their ids."""
    rng = random.Random(12)
    started = time.monotonic()
    experiments = [
        (
            await control.experiments.CreateExperiment(
                experiments_pb2.CreateExperimentRequest(
                    experiment=experiments_pb2.Experiment(
                        name=f"query bench {index}",
                        agent_id=control.agent_id,
                        scenario_id=control.scenario_id,
                    )
                )
            )
        ).experiment.id
        for index in range(sizes.experiments)
    ]

    def create(index: int) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            run = runs_pb2.Run(
                experiment_id=experiments[index % len(experiments)],
                params=listed_params(index, rng),
            )
            response = await control.runs.CreateRun(runs_pb2.CreateRunRequest(run=run))
            return response.run.id

        return call

    run_ids = await bounded_gather([create(i) for i in range(sizes.listed_runs)], 16)
    created = time.monotonic()
    await bounded_gather(
        [functools.partial(finish_listed, control, r, i, rng) for i, r in enumerate(run_ids)], 32
    )
    finished = time.monotonic()
    report.info(
        f"{name}: {len(run_ids):,} listed runs created in {created - started:.1f} s,"
        f" streamed and finished in {finished - created:.1f} s"
    )
    return run_ids


# Reading


async def history_figures(
    report: Report, name: str, control: Control, run_id: str, sizes: Sizes, fetch: ChunkReader
) -> None:
    telemetry = control.telemetry
    points = sizes.long_points

    async def view() -> telemetry_pb2.GetMetricHistoryResponse:
        return await telemetry.GetMetricHistory(
            telemetry_pb2.GetMetricHistoryRequest(
                run_id=run_id, metric=LONG_METRIC, max_points=1000
            )
        )

    shown = await view()
    if not shown.downsampled or shown.range_count != points or len(shown.steps) > 1000:
        raise BenchError(f"{name}: unexpected downsampled view of {shown.range_count:,} points")
    times = await latencies_ms(view, sizes.latency_calls)
    note = f"{points:,} points to at most 1,000, {len(times)} calls one after another"
    add = _adder(report, name)
    add("history_downsample_p50_ms", percentile(times, 0.5), "ms", note)
    add("history_downsample_p99_ms", percentile(times, 0.99), "ms")

    rng = random.Random(6)

    async def page() -> None:
        start = rng.randrange(0, points - 10_000)
        response = await telemetry.GetMetricHistory(
            telemetry_pb2.GetMetricHistoryRequest(
                run_id=run_id, metric=LONG_METRIC, start_step=start, page_size=10_000
            )
        )
        if len(response.steps) != 10_000:
            raise BenchError(f"{name}: a page of {len(response.steps):,} points, not 10,000")

    times = await latencies_ms(page, sizes.latency_calls)
    add("history_page_p50_ms", percentile(times, 0.5), "ms", "10,000 points from a random step")

    rates = await read_figures(
        control.target, telemetry, run_id, LONG_METRIC, points, sizes.read_repeats, fetch
    )
    add(
        "history_read_points_per_s",
        rates.stored,
        "points/s",
        "in one ReadMetricHistory call of pages of 100,000, the columns as stored, decoded by"
        " the client (its way)",
    )
    add(
        "history_read_little_endian_points_per_s",
        rates.columns,
        "points/s",
        "the same, little-endian columns",
    )
    add(
        "history_read_repeated_points_per_s",
        rates.repeated,
        "points/s",
        "the same, the columns in the repeated fields",
    )
    add("history_raw_read_points_per_s", rates.raw, "points/s", "the same chunks, straight")
    add("history_read_vs_raw", rates.stored / rates.raw, "x")
    add("history_read_little_endian_vs_raw", rates.columns / rates.raw, "x")
    add("history_read_repeated_vs_raw", rates.repeated / rates.raw, "x")


async def compare_figures(
    report: Report, name: str, control: Control, run_ids: Sequence[str], sizes: Sizes
) -> None:
    metric = f"{SERIES_METRIC}_0"
    request = telemetry_pb2.CompareRunsRequest(
        run_ids=run_ids[:5], metrics=[metric], max_points=1000
    )
    compared = await control.telemetry.CompareRuns(request)
    shown = [len(series.steps) for series in compared.series]
    if len(shown) != 5 or not all(0 < n <= 1000 for n in shown):
        raise BenchError(f"{name}: CompareRuns gave series of {shown} points")
    times = await latencies_ms(lambda: control.telemetry.CompareRuns(request), sizes.latency_calls)
    _adder(report, name)(
        "compare_5runs_p50_ms",
        percentile(times, 0.5),
        "ms",
        f"{metric} of 5 runs ({sizes.steps:,} points each) to at most 1,000 points on one grid;"
        f" p99 {percentile(times, 0.99):.1f} ms",
    )


async def list_figures(
    report: Report, name: str, control: Control, sizes: Sizes, figure: str = "listruns_filtered"
) -> None:
    request = runs_pb2.ListRunsRequest(page_size=LIST_PAGE, filter=LIST_FILTER, order_by=LIST_ORDER)
    first = await control.runs.ListRuns(request)
    if len(first.runs) != LIST_PAGE or not first.next_page_token:
        raise BenchError(f"{name}: ListRuns gave {len(first.runs)} runs, not a full page")
    if any(r.status != runs_pb2.RUN_STATUS_COMPLETED for r in first.runs):
        raise BenchError(f"{name}: ListRuns ignored its filter")
    times = await latencies_ms(lambda: control.runs.ListRuns(request), sizes.latency_calls)
    _adder(report, name)(
        f"{figure}_p50_ms",
        percentile(times, 0.5),
        "ms",
        f"a page of {LIST_PAGE} of {sizes.listed_runs:,} runs: filter '{LIST_FILTER}',"
        f" order_by '{LIST_ORDER}'; p99 {percentile(times, 0.99):.1f} ms",
    )


@dataclass
class Window:
    calls: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


async def closed_loop(
    calls: Sequence[Callable[[int], Awaitable[object]]], seconds: float
) -> Window:
    """Each of ``calls`` (a caller) calls back to back for ``seconds``; every call timed."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller(call: Callable[[int], Awaitable[object]]) -> None:
        index = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await call(index)
            latencies.append((time.perf_counter() - started) * 1000)
            index += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(call) for call in calls))
    return Window(len(latencies), time.monotonic() - started, latencies)


async def each_once(calls: Sequence[Callable[[int], Awaitable[object]]], count: int) -> Window:
    """Each of ``calls`` (a caller) makes ``count`` calls back to back."""
    started = time.monotonic()

    async def caller(call: Callable[[int], Awaitable[object]]) -> None:
        for index in range(count):
            await call(index)

    await asyncio.gather(*(caller(call) for call in calls))
    return Window(count * len(calls), time.monotonic() - started, [])


async def unary_figures(
    report: Report, name: str, target: str, run_ids: Sequence[str], sizes: Sizes
) -> None:
    channels = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(CALLERS)]
    try:
        ids = list(run_ids)
        random.Random(5).shuffle(ids)

        def get_run(channel: grpc.aio.Channel, offset: int) -> Callable[[int], Awaitable[object]]:
            stub = runs_pb2_grpc.RunServiceStub(channel)
            return lambda i: stub.GetRun(runs_pb2.GetRunRequest(id=ids[(offset + i) % len(ids)]))

        def check(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
            stub = health_pb2_grpc.HealthStub(channel)
            return lambda _: stub.Check(health_pb2.HealthCheckRequest())

        gets = [get_run(c, n * len(ids) // CALLERS) for n, c in enumerate(channels)]
        checks = [check(c) for c in channels]
        await closed_loop(checks, 0.5)  # connections up, both paths warm
        first = await each_once(gets, len(ids) // CALLERS)
        limits: list[Window] = []
        reads: list[Window] = []
        for _ in range(sizes.unary_rounds):
            limits.append(await closed_loop(checks, sizes.unary_seconds))
            reads.append(await closed_loop(gets, sizes.unary_seconds))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    limit = statistics.median(w.rate for w in limits)
    rate = statistics.median(w.rate for w in reads)
    latencies = [ms for window in reads for ms in window.latencies_ms]
    windows = f"median of {sizes.unary_rounds} windows of {sizes.unary_seconds:.1f} s"
    add = _adder(report, name)
    add(
        "unary_limit_calls_per_s",
        limit,
        "calls/s",
        f"grpc.health.v1.Health/Check, {CALLERS} callers; {windows}",
    )
    add(
        "getrun_first_calls_per_s",
        first.rate,
        "calls/s",
        f"{CALLERS} callers, each of {first.calls:,} runs once (read whole, rendered)",
    )
    add(
        "getrun_calls_per_s",
        rate,
        "calls/s",
        f"{CALLERS} callers, random runs of {len(ids):,}, each served before; {windows}",
    )
    add(
        "getrun_p50_ms",
        percentile(latencies, 0.5),
        "ms",
    )
    add("getrun_p99_ms", percentile(latencies, 0.99), "ms", f"{len(latencies):,} calls")
    add("getrun_vs_unary_limit", rate / limit, "x")


def _adder(report: Report, prefix: str) -> Callable[..., None]:
    """``add(name, value, unit, note="")``: a figure named ``<prefix>_<name>``, with its target."""

    def add(name: str, value: float, unit: str, note: str = "") -> None:
        full = f"{prefix}_{name}"
        report.add(full, value, unit, note=note, target=TARGETS.get(full))

    return add


# The run


@dataclass(frozen=True)
class Case:
    name: str  # the figures' prefix
    url: str  # the server's database
    database: StoredPoints
    fetch_for: Callable[[str], ChunkReader]
    vacuum: Callable[[], None] | None = None  # what autovacuum would do after the load


async def measure(
    report: Report, case: Case, pool: WorkerPool, sizes: Sizes, workdir: Path
) -> None:
    name = case.name
    server = await start_simtrack(case.url, workdir / f"{name}-server.log", compaction_interval=0)
    control = Control(server.address)
    await control.setup()
    try:
        with report.phase(f"{name}: load {sizes.points:,} points"):
            long_run, series_runs = await load_series(
                report, name, pool, server, control, case.database, sizes
            )
        with report.phase(f"{name}: load {sizes.listed_runs:,} listed runs"):
            listed = await load_listed(report, name, control, sizes)
        if case.vacuum is not None:
            await list_figures(report, name, control, sizes, "listruns_before_vacuum")
            with report.phase(f"{name}: VACUUM ANALYZE (autovacuum is off here)"):
                await asyncio.to_thread(case.vacuum)
        with report.phase(f"{name}: history"):
            await history_figures(report, name, control, long_run, sizes, case.fetch_for(long_run))
        await compare_figures(report, name, control, series_runs, sizes)
        with report.phase(f"{name}: list and get"):
            await list_figures(report, name, control, sizes)
            await unary_figures(report, name, server.address, listed, sizes)
    finally:
        await control.close()
        await server.stop()


async def _main(sizes: Sizes, admin_url: str, workdir: Path) -> None:
    report = Report()
    postgres = PostgresDatabase(admin_url)
    sqlite = SqliteDatabase(workdir)
    cases = [
        Case(
            "pg",
            postgres.server_url,
            postgres,
            lambda r: postgres_fetch(postgres.url(), r),
            postgres.vacuum,
        ),
        Case("sqlite", sqlite.server_url, sqlite, lambda r: sqlite_fetch(sqlite.path, r)),
    ]
    started = Started()
    began = time.monotonic()
    try:
        await asyncio.to_thread(postgres.create)
        await postgres.migrate()
        pool = await WorkerPool.start(WORKERS, started)
        for case in cases:
            await measure(report, case, pool, sizes, workdir)
    finally:
        await started.stop()
        await asyncio.to_thread(postgres.drop)
    report.info(f"the whole bench: {time.monotonic() - began:.1f} s")
    report.table("simtrack query benchmark")


def run_query(quick: bool, admin_url: str) -> int:
    sizes = QUICK if quick else FULL
    return run_bench("query", lambda workdir: _main(sizes, admin_url, workdir))
