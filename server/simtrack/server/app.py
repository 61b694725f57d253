"""Wiring: build the services, the gRPC server, health and reflection; serve until a signal.

Start-up pushes the release of everything it starts (engine, /metrics, bus, writer, gRPC server,
background loops) on an ``AsyncExitStack``: a start-up that fails half-way releases what it had
started, in reverse order, and a graceful stop ends by closing the same stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.server.api.agents import AgentServicer
from simtrack.server.api.artifacts import ArtifactServicer
from simtrack.server.api.auth import CallAuthorizer
from simtrack.server.api.calls import Calls
from simtrack.server.api.experiments import ExperimentServicer
from simtrack.server.api.http import HttpApp, HttpListener
from simtrack.server.api.interceptor import CallInterceptor
from simtrack.server.api.runs import RunServicer
from simtrack.server.api.scenarios import ScenarioServicer
from simtrack.server.api.services import SERVICES
from simtrack.server.api.telemetry import TelemetryServicer
from simtrack.server.api.validations import ValidationServicer
from simtrack.server.artifact_store import ArtifactStore
from simtrack.server.background import (
    BackgroundLoops,
    compact_chunks,
    monitor_database,
    sweep_runs,
)
from simtrack.server.config import Settings
from simtrack.server.db import migrate
from simtrack.server.db.compaction_store import SqlCompactionStore
from simtrack.server.db.engine import create_engine, is_sqlite, sqlite_file
from simtrack.server.db.ingest_store import IngestStore
from simtrack.server.db.reads import SqlReads
from simtrack.server.db.sqlite_checkpoints import WalCheckpoints
from simtrack.server.db.sqlite_reads import SqliteReadConnections
from simtrack.server.db.unit_of_work import SqlUnitOfWorkFactory, tenant_aware_sessions
from simtrack.server.domain.access import Authenticator
from simtrack.server.domain.agents import AgentService
from simtrack.server.domain.artifacts import ArtifactService
from simtrack.server.domain.compaction import CompactionService
from simtrack.server.domain.compare import CompareService
from simtrack.server.domain.experiments import ExperimentService, TemplateService
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.live_runs import LiveRuns
from simtrack.server.domain.pending_chunks import PendingChunks
from simtrack.server.domain.rankings import Rankings
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.domain.scenarios import ScenarioQueries
from simtrack.server.domain.simulations import SimulationService
from simtrack.server.domain.validations import ValidationService
from simtrack.server.ingest.bus import InProcessBus, PostgresBus
from simtrack.server.ingest.streams import StreamRegistry
from simtrack.server.ingest.writer import GroupCommitWriter
from simtrack.server.observability import MetricsEndpoint, ServerMetrics, quiet_peer_gone_reports
from simtrack.server.runtime import keep_freed_memory, settle_garbage_collector
from simtrack.server.scenario_catalogue import default_scenarios_dir, load_catalogue

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024 + 64 * 1024

SERVICE_NAMES = tuple(service.full_name for service in SERVICES)


class StartupError(Exception):
    """The server cannot start; the message says what to do."""


@dataclass(kw_only=True)
class Running:
    """A started server and what it owns; ``resources`` releases it in reverse order of start."""

    server: grpc.aio.Server
    port: int
    http: HttpListener | None  # None: SIMTRACK_HTTP_LISTEN empty
    engine: AsyncEngine
    health: health.aio.HealthServicer
    writer: GroupCommitWriter
    registry: StreamRegistry
    bus: InProcessBus
    background: BackgroundLoops
    metrics_endpoint: MetricsEndpoint | None  # None: SIMTRACK_METRICS_LISTEN unset
    resources: contextlib.AsyncExitStack

    async def stop(self, grace: float) -> None:
        """Stop accepting, tell workers to go away, commit and ack what came in, exit."""
        self.background.stopping.set()
        await self.health.enter_graceful_shutdown()
        stopped = asyncio.create_task(self.server.stop(grace))  # no new calls from here on
        http_stopped = asyncio.create_task(self.http.stop()) if self.http else None
        try:
            async with asyncio.timeout(grace):
                await self.registry.going_away("server shutting down")
        except TimeoutError:
            log.warning("streams did not finish within %.1fs", grace)
        await self.writer.stop()
        await stopped
        if http_stopped is not None:
            await http_stopped
        # Then what start-up pushed, in reverse: the background loops, the server and the
        # writer (both stopped already: no-ops), the bus, /metrics, the engine.
        await self.resources.aclose()


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_exposure(settings: Settings) -> None:
    """Refuse to serve everyone's data to a network without keys, unless told to."""
    if settings.auth_enabled or settings.allow_unauthenticated_remote:
        return
    exposed = [
        listen
        for listen in (settings.listen, settings.http_listen)
        if listen and listen.rsplit(":", 1)[0] not in LOOPBACK_HOSTS
    ]
    if not exposed:
        return
    raise StartupError(
        f"refusing to listen on {exposed[0]} with auth disabled: anyone who can reach it "
        "could read and change every record. Set SIMTRACK_AUTH_ENABLED=true (and create keys "
        "with `simtrack keys create`), listen on 127.0.0.1, or set "
        "SIMTRACK_ALLOW_UNAUTHENTICATED_REMOTE=true if a trusted network guards this port."
    )


async def check_row_level_security(engine: AsyncEngine) -> None:
    """With tenants, PostgreSQL's row-level security must apply to the server's own role."""
    async with engine.connect() as connection:
        bypasses = (
            await connection.exec_driver_sql(
                "select rolsuper or rolbypassrls from pg_roles where rolname = current_user"
            )
        ).scalar()
    if bypasses:
        raise StartupError(
            "auth is enabled but the server's database role bypasses row-level security "
            "(a superuser or BYPASSRLS role): connect as the application role instead, e.g. "
            "create it with `simtrack migrate --app-role simtrack_app` and serve with "
            "SIMTRACK_DATABASE_URL=postgresql://simtrack_app@host/db"
        )


async def prepare_database(settings: Settings, engine: AsyncEngine) -> None:
    """SQLite files are migrated on start-up; PostgreSQL must already be at head.

    On PostgreSQL migrations are an operator's step (they may need a more privileged role
    and should not race between replicas), so the server refuses to start and names it.
    """
    if is_sqlite(settings.database_url):
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
        return
    try:
        current = await migrate.current_revision(engine)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the message is the point
        raise StartupError(f"cannot reach the database: {exc}") from exc
    head = migrate.head_revision()
    if current != head:
        raise StartupError(
            f"the database schema is at {current or 'nothing (empty database)'}, this server "
            f"needs {head}: run `simtrack migrate` (with the same SIMTRACK_DATABASE_URL) first"
        )


async def start(settings: Settings) -> Running:
    """Build and start the server; ``settings.listen`` may use port 0 for a free port.

    A start-up that fails half-way releases what it had started before it raises.
    """
    quiet_peer_gone_reports()
    resources = contextlib.AsyncExitStack()
    try:
        return await _start(settings, resources)
    except BaseException:
        await resources.aclose()
        raise


async def _start(settings: Settings, resources: contextlib.AsyncExitStack) -> Running:
    """Start everything, pushing each release on ``resources`` as soon as there is one."""
    scenarios_dir = settings.scenarios_dir or default_scenarios_dir()
    catalogue = load_catalogue(scenarios_dir)
    for problem in catalogue.problems:
        log.warning("scenario not loaded: %s", problem)
    log.info("loaded %d scenarios from %s", len(catalogue.scenarios), scenarios_dir)

    check_exposure(settings)
    engine = create_engine(settings.database_url)
    resources.push_async_callback(engine.dispose)
    await prepare_database(settings, engine)
    if settings.auth_enabled and not is_sqlite(settings.database_url):
        await check_row_level_security(engine)
    uow = SqlUnitOfWorkFactory(tenant_aware_sessions(engine))
    reads = SqlReads(engine)
    resources.push_async_callback(reads.close)
    sqlite_path = sqlite_file(settings.database_url)
    # Compaction's reads on a connection of their own: the engine's one is the writer's.
    compaction_reads = None
    if sqlite_path is not None and settings.compaction_interval > 0:
        compaction_reads = SqliteReadConnections(sqlite_path, 1)
        resources.push_async_callback(compaction_reads.close)
    authenticator = (
        Authenticator(uow, settings.auth_cache_seconds) if settings.auth_enabled else None
    )

    metrics = ServerMetrics()
    calls = Calls(CallAuthorizer(authenticator), metrics)
    server = grpc.aio.server(
        interceptors=[CallInterceptor(calls)],
        options=[
            # Stream messages may be up to 8 MiB (documented in telemetry.proto); gRPC's
            # default is 4 MiB. A little headroom for the envelope.
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second server on a port in use would start
            # silently and share its callers with the first (and, likely, another database).
            ("grpc.so_reuseport", int(settings.reuse_port)),
        ],
    )
    bus: InProcessBus = (
        InProcessBus() if is_sqlite(settings.database_url) else PostgresBus(settings.database_url)
    )
    registry = StreamRegistry()
    bus.on_command(registry.deliver)
    validations = ValidationService(uow, catalogue)
    artifacts = ArtifactService(
        uow, ArtifactStore(settings.artifacts_dir), settings.artifact_max_bytes
    )
    # What the writer stores, told to compaction (a round need not scan every small chunk).
    pending = PendingChunks() if settings.compaction_interval > 0 else None
    writer = GroupCommitWriter(
        IngestStore(engine),
        bus.publish_runs,
        metrics,
        validations.check_completed,
        chunks_stored=None if pending is None else pending.stored,
        # Small messages staged only where this process moves them on (its compaction).
        stage=settings.compaction_interval > 0,
    )
    metrics.watch(registry.open_count, lambda: bus.watching, engine)
    live_runs = LiveRuns(uow, bus)
    # One servicer per service, serving it over gRPC and over HTTP alike.
    servicers = {
        "AgentService": AgentServicer(AgentService(uow)),
        "ExperimentService": ExperimentServicer(
            ExperimentService(uow, catalogue), SimulationService(uow), TemplateService(uow)
        ),
        "RunService": RunServicer(
            RunService(uow, catalogue, reads),
            ParticipantService(uow),
            live_runs,
            Rankings(uow, catalogue),
            bus,
        ),
        "TelemetryService": TelemetryServicer(
            live_runs,
            HistoryService(uow, reads),
            CompareService(uow),
            writer,
            registry,
            settings.heartbeat_interval,
        ),
        "ArtifactService": ArtifactServicer(artifacts),
        "ValidationService": ValidationServicer(validations),
        "ScenarioService": ScenarioServicer(ScenarioQueries(catalogue)),
    }
    for service in SERVICES:
        service.add_to_grpc(servicers[service.name], server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    endpoint = None
    if settings.metrics_listen:
        try:
            endpoint = MetricsEndpoint.start(settings.metrics_listen, metrics.registry)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {settings.metrics_listen} (SIMTRACK_METRICS_LISTEN): "
                f"{exc}"
            ) from exc
        resources.push_async_callback(endpoint.stop)
    # Each stop copes with a start that failed half-way (the bus's listener retries until
    # stopped), so it goes on the stack before the start.
    resources.push_async_callback(bus.stop)
    await bus.start()
    resources.push_async_callback(writer.stop)  # after a graceful stop: a no-op
    await writer.start()
    # The listen port is bound last: gRPC frees it only once the server has started (an
    # unstarted server keeps it until the process ends), so only the start comes after it.
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError:
        port = 0  # some gRPC versions raise on a failed bind, others return port 0
    if port == 0:
        raise StartupError(
            f"cannot listen on {settings.listen}: the address is in use or unavailable "
            "(another simtrack serve?). Choose another SIMTRACK_LISTEN, or set "
            "SIMTRACK_REUSE_PORT=true if processes are meant to share the port"
        )
    resources.push_async_callback(server.stop, None)  # after a graceful stop: a no-op
    await server.start()
    http = None
    if settings.http_listen:
        app = HttpApp({s: servicers[s.name] for s in SERVICES}, calls, MAX_MESSAGE_BYTES)
        try:
            http = HttpListener(app, settings.http_listen, settings.shutdown_grace)
        except OSError as exc:
            raise StartupError(
                f"cannot serve HTTP on {settings.http_listen} (SIMTRACK_HTTP_LISTEN): {exc}. "
                "Choose another address, or set SIMTRACK_HTTP_LISTEN= (empty) to serve gRPC only"
            ) from exc
        resources.push_async_callback(http.stop)  # after a graceful stop: a no-op
    background = BackgroundLoops()
    resources.push_async_callback(background.stop)
    background.spawn(
        monitor_database(
            engine,
            health_servicer,
            SERVICE_NAMES,
            settings.health_check_interval,
            background.stopping,
        )
    )
    background.spawn(sweep_runs(live_runs, validations, artifacts, settings, background.stopping))
    if sqlite_path is not None:
        background.spawn(WalCheckpoints(sqlite_path).run(background.stopping))
    if settings.compaction_interval > 0:
        compaction = CompactionService(
            SqlCompactionStore(engine, compaction_reads),
            timedelta(seconds=settings.compaction_settle),
            settings.compaction_target_points,
            batch_metrics=settings.compaction_batch_metrics,
            idle=timedelta(seconds=settings.compaction_idle),
            pending=pending,
            # Acks first, compaction in what is left: on SQLite the process's one connection,
            # on either database its one event loop (a fleet's runs come due for staging
            # together, and the moves' decoding put acks p99 at seconds on PostgreSQL).
            ingest_waiting=writer.waiting,
        )
        background.spawn(
            compact_chunks(compaction, settings.compaction_interval, metrics, background.stopping)
        )
    return Running(
        server=server,
        port=port,
        http=http,
        engine=engine,
        health=health_servicer,
        writer=writer,
        registry=registry,
        bus=bus,
        background=background,
        metrics_endpoint=endpoint,
        resources=resources,
    )


async def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    running = await start(settings)
    settle_garbage_collector()
    keep_freed_memory()
    host = settings.listen.rsplit(":", 1)[0]
    # Tests and scripts read these lines to learn the ports when listening on port 0 ("serving"
    # last: once it is out, the others are).
    if (endpoint := running.metrics_endpoint) is not None:
        log.info("simtrack metrics on %s:%d", endpoint.host, endpoint.port)
    if (http := running.http) is not None:
        log.info("simtrack http on %s:%d (the dashboard: http://%s:%d/)", *(http.address * 2))
    log.info("simtrack serving on %s:%d", host, running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace)
    await running.stop(settings.shutdown_grace)
