"""Wiring: build the services, the gRPC server, health and reflection; serve until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from simtrack.server.api.agents import AgentServicer
from simtrack.server.api.artifacts import ArtifactServicer
from simtrack.server.api.auth import CallAuthorizer
from simtrack.server.api.experiments import ExperimentServicer
from simtrack.server.api.interceptor import CallInterceptor
from simtrack.server.api.runs import RunServicer
from simtrack.server.api.scenarios import ScenarioServicer
from simtrack.server.api.telemetry import TelemetryServicer
from simtrack.server.api.validations import ValidationServicer
from simtrack.server.artifacts import ArtifactStore
from simtrack.server.config import Settings
from simtrack.server.db import migrate
from simtrack.server.db.engine import create_engine, is_sqlite
from simtrack.server.db.ingest import IngestStore
from simtrack.server.db.repositories import ping
from simtrack.server.db.uow import UnitOfWorkFactory, tenant_aware_sessions
from simtrack.server.domain.access import Authenticator
from simtrack.server.domain.agents import AgentService
from simtrack.server.domain.artifacts import ArtifactService
from simtrack.server.domain.experiments import ExperimentService, TemplateService
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.rankings import RunQueries
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.domain.scenarios import ScenarioQueries
from simtrack.server.domain.simulations import SimulationService
from simtrack.server.domain.telemetry import TelemetryService
from simtrack.server.domain.validations import ValidationService
from simtrack.server.ingest.bus import Bus, PostgresBus
from simtrack.server.ingest.streams import StreamRegistry
from simtrack.server.ingest.writer import GroupCommitWriter
from simtrack.server.observability import MetricsEndpoint, ServerMetrics
from simtrack.server.scenarios import default_scenarios_dir, load_catalogue
from simtrack.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    scenarios_pb2,
    scenarios_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    validations_pb2,
    validations_pb2_grpc,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024 + 64 * 1024
# A database that takes longer than this to answer "select 1" counts as unreachable.
PROBE_TIMEOUT = 2.0

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (agents_pb2, "AgentService"),
        (artifacts_pb2, "ArtifactService"),
        (experiments_pb2, "ExperimentService"),
        (runs_pb2, "RunService"),
        (scenarios_pb2, "ScenarioService"),
        (telemetry_pb2, "TelemetryService"),
        (validations_pb2, "ValidationService"),
    )
)


class StartupError(Exception):
    """The server cannot start; the message says what to do."""


@dataclass
class Running:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    engine: AsyncEngine
    health: health.aio.HealthServicer
    writer: GroupCommitWriter
    registry: StreamRegistry
    bus: Bus
    background: list[asyncio.Task[None]]
    stopping: asyncio.Event
    metrics_endpoint: MetricsEndpoint | None  # None: SIMTRACK_METRICS_LISTEN unset

    async def stop(self, grace: float) -> None:
        """Stop accepting, tell workers to go away, commit and ack what came in, exit."""
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        stopped = asyncio.create_task(self.server.stop(grace))  # no new calls from here on
        try:
            async with asyncio.timeout(grace):
                await self.registry.going_away("server shutting down")
        except TimeoutError:
            log.warning("streams did not finish within %.1fs", grace)
        await self.writer.stop()
        await stopped
        done, pending = await asyncio.wait(self.background, timeout=PROBE_TIMEOUT + 1)
        for task in pending:
            task.cancel()
        await self.bus.stop()
        await self.engine.dispose()
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.stop()


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_exposure(settings: Settings) -> None:
    """Refuse to serve everyone's data to a network without keys, unless told to."""
    host = settings.listen.rsplit(":", 1)[0]
    if settings.auth_enabled or settings.allow_unauthenticated_remote or host in LOOPBACK_HOSTS:
        return
    raise StartupError(
        f"refusing to listen on {settings.listen} with auth disabled: anyone who can reach it "
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


def probe_timeout(interval: float) -> float:
    return max(interval, PROBE_TIMEOUT)


async def _monitor_database(
    engine: AsyncEngine,
    servicer: health.aio.HealthServicer,
    interval: float,
    stopping: asyncio.Event,
) -> None:
    """Report NOT_SERVING while the database does not answer, SERVING once it does again.

    It stops when ``stopping`` is set, between probes: cancelling a probe half-way through a
    driver call can leave aiosqlite's connection unclosable and hang the shutdown.
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
        for name in ("", *SERVICE_NAMES):
            await servicer.set(name, status)
        last = status
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()


async def start(settings: Settings) -> Running:
    """Build and start the server; ``settings.listen`` may use port 0 for a free port."""
    scenarios_dir = settings.scenarios_dir or default_scenarios_dir()
    catalogue = load_catalogue(scenarios_dir)
    for problem in catalogue.problems:
        log.warning("scenario not loaded: %s", problem)
    log.info("loaded %d scenarios from %s", len(catalogue.scenarios), scenarios_dir)

    check_exposure(settings)
    engine = create_engine(settings.database_url)
    try:
        await prepare_database(settings, engine)
        if settings.auth_enabled and not is_sqlite(settings.database_url):
            await check_row_level_security(engine)
    except BaseException:
        await engine.dispose()
        raise
    uow = UnitOfWorkFactory(tenant_aware_sessions(engine))
    authenticator = (
        Authenticator(uow, settings.auth_cache_seconds) if settings.auth_enabled else None
    )

    metrics = ServerMetrics()
    server = grpc.aio.server(
        interceptors=[CallInterceptor(CallAuthorizer(authenticator), metrics)],
        options=[
            # Stream messages may be up to 8 MiB (documented in telemetry.proto); gRPC's
            # default is 4 MiB. A little headroom for the envelope.
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second server on a port in use would start
            # silently and share its callers with the first (and, likely, another database).
            ("grpc.so_reuseport", int(settings.reuse_port)),
        ],
    )
    agents_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(AgentService(uow)), server)
    experiments_pb2_grpc.add_ExperimentServiceServicer_to_server(
        ExperimentServicer(
            ExperimentService(uow, catalogue), SimulationService(uow), TemplateService(uow)
        ),
        server,
    )
    bus: Bus = Bus() if is_sqlite(settings.database_url) else PostgresBus(settings.database_url)
    registry = StreamRegistry()
    bus.on_command(registry.deliver)
    validations = ValidationService(uow, catalogue)
    artifacts = ArtifactService(
        uow, ArtifactStore(settings.artifacts_dir), settings.artifact_max_bytes
    )
    writer = GroupCommitWriter(
        IngestStore(engine), bus.publish_runs, metrics, validations.check_completed
    )
    metrics.watch(registry.open_count, lambda: bus.watching, engine)
    telemetry = TelemetryService(uow, bus)
    runs_pb2_grpc.add_RunServiceServicer_to_server(
        RunServicer(
            RunService(uow, catalogue),
            ParticipantService(uow),
            telemetry,
            RunQueries(uow, catalogue),
            bus,
        ),
        server,
    )
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(
        TelemetryServicer(
            telemetry, HistoryService(uow), writer, registry, settings.heartbeat_interval
        ),
        server,
    )
    artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(artifacts), server)
    validations_pb2_grpc.add_ValidationServiceServicer_to_server(
        ValidationServicer(validations), server
    )
    scenarios_pb2_grpc.add_ScenarioServiceServicer_to_server(
        ScenarioServicer(ScenarioQueries(catalogue)), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError:
        port = 0  # some gRPC versions raise on a failed bind, others return port 0
    if port == 0:
        await engine.dispose()
        raise StartupError(
            f"cannot listen on {settings.listen}: the address is in use or unavailable "
            "(another simtrack serve?). Choose another SIMTRACK_LISTEN, or set "
            "SIMTRACK_REUSE_PORT=true if processes are meant to share the port"
        )
    endpoint = None
    if settings.metrics_listen:
        try:
            endpoint = MetricsEndpoint.start(settings.metrics_listen, metrics.registry)
        except OSError as exc:
            await engine.dispose()
            raise StartupError(
                f"cannot serve metrics on {settings.metrics_listen} (SIMTRACK_METRICS_LISTEN): "
                f"{exc}"
            ) from exc
    await bus.start()
    await writer.start()
    await server.start()
    stopping = asyncio.Event()
    background = [
        asyncio.create_task(
            _monitor_database(engine, health_servicer, settings.health_check_interval, stopping)
        ),
        asyncio.create_task(_sweep_runs(telemetry, validations, artifacts, settings, stopping)),
    ]
    return Running(
        server, port, engine, health_servicer, writer, registry, bus, background, stopping, endpoint
    )


async def _sweep_runs(
    telemetry: TelemetryService,
    validations: ValidationService,
    artifacts: ArtifactService,
    settings: Settings,
    stopping: asyncio.Event,
) -> None:
    """Fail runs whose worker vanished; stop cancelled runs whose worker never confirmed;
    check the success criteria of completed runs a crash left unchecked; remove the files of
    deleted runs."""
    interval = min(settings.heartbeat_timeout, settings.cancel_grace) / 4
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()
        try:
            changed = await telemetry.sweep(settings.heartbeat_timeout, settings.cancel_grace)
            if changed:
                log.info("liveness: %d run(s) ended by the sweeper", len(changed))
            if checked := await validations.sweep():
                log.info("success criteria of %d run(s) checked by the sweeper", checked)
            if removed := await artifacts.sweep():
                log.info("artifact files of %d deleted run(s) removed", removed)
        except Exception:  # noqa: BLE001 - the next sweep tries again
            log.warning("liveness sweep failed", exc_info=True)


async def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    running = await start(settings)
    host = settings.listen.rsplit(":", 1)[0]
    # Tests and scripts read these lines to learn the ports when listening on port 0.
    if (endpoint := running.metrics_endpoint) is not None:
        log.info("simtrack metrics on %s:%d", endpoint.host, endpoint.port)
    log.info("simtrack serving on %s:%d", host, running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace)
    await running.stop(settings.shutdown_grace)
