"""The service's own Prometheus metrics: one registry per server, its metrics, ``/metrics``.

Only this module imports prometheus_client. The interceptor and the group-commit writer report
through two methods (``rpc_done``, ``group_committed``), once per call and once per commit
(compaction through ``metric_compacted``, ``staged_messages_moved`` and
``compaction_failed``);
gauges of state the server already keeps (open streams, watchers, the database pool) are read
when Prometheus scrapes, so keeping them costs nothing in between. Scrapes run on the
endpoint's own thread: the callbacks only read plain ints, never iterate the loop's dicts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

# A group commit takes about a millisecond on SQLite and a few on PostgreSQL; the default
# buckets (from 5 ms) would put nearly all of them in the first one.
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
COMMIT_BATCHES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # the writer's MAX_GROUP
# Compaction lag: the settle time (5 s by default) plus up to one interval and the round.
LAG_SECONDS_BUCKETS = (1, 2, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)


class ServerMetrics:
    """Every metric of one server, in a registry of its own (servers in one process, tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.rpc_requests = Counter(
            "simtrack_rpc_requests",
            "Unary simtrack RPCs handled, by method and the status code answered.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "simtrack_rpc_duration_seconds",
            "Time to handle a unary simtrack RPC, by method.",
            ["method"],
            registry=registry,
        )
        self._rpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self.points_ingested = Counter(
            "simtrack_points_ingested",
            "Metric points committed from worker streams (a resend of stored data is not counted).",
            registry=registry,
        )
        self.events_ingested = Counter(
            "simtrack_events_ingested",
            "Events committed from worker streams (a resend of stored data is not counted).",
            registry=registry,
        )
        self.group_commits = Counter(
            "simtrack_group_commits", "Group-commit transactions that landed.", registry=registry
        )
        self.group_commit_duration = Histogram(
            "simtrack_group_commit_seconds",
            "Time of a group commit, its transaction included (retries of a failed one are not).",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.group_commit_batches = Histogram(
            "simtrack_group_commit_batches",
            "Stream batches per group commit (resends included, heartbeats not).",
            buckets=COMMIT_BATCHES_BUCKETS,
            registry=registry,
        )

        self.chunks_compacted = Counter(
            "simtrack_chunks_compacted",
            "Metric chunks rewritten by compaction (its inputs).",
            registry=registry,
        )
        self.points_compacted = Counter(
            "simtrack_points_compacted", "Points rewritten by compaction.", registry=registry
        )
        self.staged_moved = Counter(
            "simtrack_staged_messages_moved",
            "Staged messages (a fleet's small messages, a row each) moved into chunks.",
            registry=registry,
        )
        self.compaction_failures = Counter(
            "simtrack_compaction_failures",
            "Metric compactions that failed and were rolled back (tried again next round).",
            registry=registry,
        )
        self.compaction_lag = Histogram(
            "simtrack_compaction_lag_seconds",
            "From the arrival of a compaction's oldest small chunk to its commit.",
            buckets=LAG_SECONDS_BUCKETS,
            registry=registry,
        )

    def metric_compacted(self, chunks: int, points: int, lag_seconds: float | None) -> None:
        self.chunks_compacted.inc(chunks)
        self.points_compacted.inc(points)
        if lag_seconds is not None:
            self.compaction_lag.observe(lag_seconds)

    def staged_messages_moved(self, messages: int) -> None:
        self.staged_moved.inc(messages)

    def compaction_failed(self, metrics: int) -> None:
        self.compaction_failures.inc(metrics)

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        # The labelled children, kept: ``labels()`` validates and locks at each call.
        key = (method, code)
        if (children := self._rpc_children.get(key)) is None:
            children = (self.rpc_requests.labels(method, code), self.rpc_duration.labels(method))
            self._rpc_children[key] = children
        requests, duration = children
        requests.inc()
        duration.observe(seconds)

    def group_committed(self, batches: int, points: int, events: int, seconds: float) -> None:
        self.group_commits.inc()
        self.group_commit_duration.observe(seconds)
        self.group_commit_batches.observe(batches)
        if points:
            self.points_ingested.inc(points)
        if events:
            self.events_ingested.inc(events)

    def watch(
        self, streams: Callable[[], int], watchers: Callable[[], int], engine: AsyncEngine
    ) -> None:
        """Read these at scrape time: open worker streams, WatchRun calls, the engine's pool."""
        Gauge(
            "simtrack_streams_open", "Worker streams (StreamRun) open.", registry=self.registry
        ).set_function(streams)
        Gauge(
            "simtrack_watchers_open", "WatchRun calls open.", registry=self.registry
        ).set_function(watchers)
        self.registry.register(_PoolCollector(engine))


class _PoolCollector(Collector):
    """The SQLAlchemy pool's connections, read when scraped.

    The engine, not its pool, is kept: ``dispose()`` replaces the pool. PostgreSQL ingest
    holds one more connection of its own, outside the pool.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        pool = self.engine.sync_engine.pool
        if not isinstance(pool, QueuePool):  # the server's engines always pool; others: nothing
            return
        yield GaugeMetricFamily(
            "simtrack_db_pool_size", "Connections the database pool keeps.", value=pool.size()
        )
        yield GaugeMetricFamily(
            "simtrack_db_pool_checked_out",
            "Pooled database connections in use.",
            value=pool.checkedout(),
        )
        yield GaugeMetricFamily(
            "simtrack_db_pool_overflow",
            "Connections open beyond the pool's size (negative: the pool is not full yet).",
            value=pool.overflow(),
        )


@dataclass
class MetricsEndpoint:
    """``/metrics`` over HTTP on a thread of its own (prometheus_client's WSGI server)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @classmethod
    def start(cls, listen: str, registry: CollectorRegistry) -> MetricsEndpoint:
        """Serve ``registry`` on ``listen`` (host:port, port 0 for a free one); OSError if not."""
        host, _, port = listen.rpartition(":")
        server, thread = start_http_server(int(port), host.strip("[]"), registry)
        return cls(host, server.server_port, server, thread)

    async def stop(self) -> None:
        # shutdown() waits for serve_forever's next poll (up to half a second): off the loop.
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
        self._thread.join()


class _PeerGoneFilter(logging.Filter):
    """Drops gRPC's report that a call's final status could not be sent.

    When a client goes away as its stream ends (a worker killed, a connection cut), grpc's
    asyncio server logs the failed send of the status as an error with a traceback. The call
    is over either way and nothing was lost (acks are what count), so it is not an error of
    the server; anything else gRPC reports passes through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            type(error).__name__ == "ExecuteBatchError" and "SendStatusFromServer" in str(error)
        )


_PEER_GONE = _PeerGoneFilter()


def quiet_peer_gone_reports() -> None:
    """Install ``_PeerGoneFilter`` on gRPC's logger (once, however often called)."""
    logger = logging.getLogger("grpc._cython.cygrpc")
    if _PEER_GONE not in logger.filters:
        logger.addFilter(_PEER_GONE)
