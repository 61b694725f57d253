"""Serving simtracks for the e2e tests: ``Server`` (a channel with every stub, the server's log,
its database) and ``ServerPool``, which starts them as ``simtrack serve`` processes or in-process
and, after the test, stops each and checks it: a clean exit, no traceback in its log, no call
answered UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from simtrack.server.db.models import Base
from simtrack.v1 import (
    agents_pb2_grpc,
    artifacts_pb2_grpc,
    experiments_pb2_grpc,
    runs_pb2_grpc,
    scenarios_pb2_grpc,
    telemetry_pb2_grpc,
    validations_pb2_grpc,
)
from tests.support.clients import Authorization, Client, StatusRecorder
from tests.support.databases import as_app_role
from tests.support.http_stubs import STUB_NAMES, HttpClient
from tests.support.inprocess import InProcessServer
from tests.support.processes import LOOPBACK_ANY_PORT, ServerFailed, ServerProcess


@dataclass
class Server:
    """A serving simtrack: its address, a channel with the stubs of every service, its log."""

    host: ServerProcess | InProcessServer
    address: str
    channel: grpc.Channel
    recorder: StatusRecorder
    agents: agents_pb2_grpc.AgentServiceStub = field(init=False)
    experiments: experiments_pb2_grpc.ExperimentServiceStub = field(init=False)
    runs: runs_pb2_grpc.RunServiceStub = field(init=False)
    telemetry: telemetry_pb2_grpc.TelemetryServiceStub = field(init=False)
    artifacts: artifacts_pb2_grpc.ArtifactServiceStub = field(init=False)
    validations: validations_pb2_grpc.ValidationServiceStub = field(init=False)
    scenarios: scenarios_pb2_grpc.ScenarioServiceStub = field(init=False)
    health: Any = field(init=False)  # grpc_health ships no type information
    reflection: Any = field(init=False)
    allow_server_errors: bool = False
    killed: bool = field(default=False, init=False)
    # The owner's URL when the server connects as another role (the application role).
    operator_url: str | None = None
    _database: sqlalchemy.Engine | None = field(default=None, init=False)
    _clients: list[Client] = field(default_factory=list, init=False)
    _http: HttpClient | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.validations = validations_pb2_grpc.ValidationServiceStub(self.channel)
        self.scenarios = scenarios_pb2_grpc.ScenarioServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.reflection = reflection_pb2_grpc.ServerReflectionStub(self.channel)

    @property
    def database_url(self) -> str:
        """The database as its owner (an operator) reaches it."""
        return self.operator_url or self.host.database_url

    @property
    def process(self) -> ServerProcess:
        """The ``simtrack serve`` process (a test that signals it must not run in-process)."""
        if not isinstance(self.host, ServerProcess):
            raise ServerFailed("this server runs in-process: mark the test in_process(False)")
        return self.host

    @property
    def artifacts_dir(self) -> Path:
        """Where the server keeps artifact files."""
        return self.host.artifacts_dir

    @property
    def in_process(self) -> bool:
        return isinstance(self.host, InProcessServer)

    def over_http(self, transport: str) -> None:
        """Make every service's stub call the HTTP listener by ``transport`` (a name in
        ``TRANSPORTS``); health, reflection and ``connect`` stay on gRPC.
        """
        if transport == "grpc-http":  # gRPC's own client, on the HTTP listener (HTTP/2)
            channel = grpc.intercept_channel(
                grpc.insecure_channel(self.host.http_address), self.recorder
            )
            client = Client(channel)
            self._clients.append(client)
            stubs: Client | HttpClient = client
        else:
            stubs = self._http = HttpClient(transport, self.host.http_address, self.recorder)
        for name in STUB_NAMES.values():
            setattr(self, name, getattr(stubs, name))

    def connect(self, authorization: str | None) -> Client:
        """A channel sending ``authorization`` metadata verbatim (None: none) on every call.

        Its unary calls are recorded like the server's own channel's, so teardown checks them.
        """
        interceptors: list[Any] = [self.recorder]
        if authorization is not None:
            interceptors.append(Authorization(authorization))
        channel = grpc.intercept_channel(grpc.insecure_channel(self.address), *interceptors)
        client = Client(channel)
        self._clients.append(client)
        return client

    @property
    def stderr(self) -> str:
        """The server's log so far (a process's stderr, an in-process server's records)."""
        return self.host.stderr

    def health_status(self, service: str = "") -> int:
        """The health check answer for ``service`` (a HealthCheckResponse.ServingStatus)."""
        request = health_pb2.HealthCheckRequest(service=service)
        return int(self.health.Check(request, timeout=5).status)

    def database_snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every simtrack table, read directly from the database, by id.

        Reads go through this process's own connection (committed data only, no transaction
        kept open between snapshots), so comparing two snapshots shows any change the server
        committed in between.
        """
        if self._database is None:
            url = sqlalchemy.make_url(self.database_url)
            if url.get_backend_name() == "postgresql":
                url = url.set(drivername="postgresql+psycopg")
            self._database = sqlalchemy.create_engine(url)
        with self._database.connect() as connection:
            return {
                table.name: [
                    tuple(row)
                    for row in connection.execute(
                        table.select().order_by(*table.primary_key.columns)
                    )
                ]
                for table in Base.metadata.sorted_tables
            }

    def stop(self) -> int:
        """Stop the server now (SIGTERM); its exit code."""
        self.channel.close()
        if self._http is not None:
            self._http.close()
        for client in self._clients:
            client.channel.close()
        if self._database is not None:
            self._database.dispose()
        return self.host.stop()

    def kill(self) -> None:
        """``kill -9`` the server now (a crash); the teardown then expects no clean exit."""
        self.killed = True
        self.process.kill()

    def check_clean(self) -> None:
        """Fail unless every answer was a deliberate status and the log has no traceback."""
        if self.allow_server_errors:
            return
        faults = self.recorder.faults()
        assert not faults, f"calls answered with a server fault: {faults}\n{self.stderr}"
        assert "Traceback" not in self.stderr, f"the server logged a traceback:\n{self.stderr}"


Launch = Callable[..., ServerProcess]
StartServer = Callable[..., Server]


class ServerPool:
    """Starts servers in folders under ``workdir`` (``simtrack serve`` processes, or in-process
    when ``in_process``); stops and checks them all after.
    """

    def __init__(
        self,
        workdir: Path,
        allow_server_errors: bool = False,
        in_process: bool = False,
        transport: str = "grpc",
    ) -> None:
        """``transport``: what the started servers' stubs call over (``http_stubs.TRANSPORTS``)."""
        self.workdir = workdir
        self.allow_server_errors = allow_server_errors
        self.in_process = in_process
        self.transport = transport
        self.launched: list[ServerProcess] = []
        self.started: list[Server] = []
        self._folders = 0

    def _folder(self) -> Path:
        folder = self.workdir / f"server{self._folders}"
        self._folders += 1
        folder.mkdir()
        return folder

    def launch(
        self, database_url: str, *, listen: str = LOOPBACK_ANY_PORT, **env: str
    ) -> ServerProcess:
        """A ``simtrack serve`` process, started but not waited for (always a process)."""
        process = ServerProcess.simtrack_serve(database_url, self._folder(), env, listen)
        self.launched.append(process)
        process.start()
        return process

    def start(
        self,
        database_url: str,
        *,
        auth: bool = False,
        listen: str = LOOPBACK_ANY_PORT,
        in_process: bool | None = None,
        **env: str,
    ) -> Server:
        """A serving server (in-process if ``in_process``, default: the pool's choice)."""
        served, operator_url = database_url, None
        if auth:
            env = {"SIMTRACK_AUTH_ENABLED": "true", **env}
            if sqlalchemy.make_url(database_url).get_backend_name() == "postgresql":
                # Row-level security binds only a non-superuser: serve as the application role.
                served, operator_url = as_app_role(database_url), database_url
        host: ServerProcess | InProcessServer
        if self.in_process if in_process is None else in_process:
            host = InProcessServer(served, self._folder(), env, listen)
            address = host.start()
        else:
            host = self.launch(served, listen=listen, **env)
            address = host.wait_serving()
        recorder = StatusRecorder()
        channel = grpc.intercept_channel(grpc.insecure_channel(address), recorder)
        server = Server(
            host,
            address,
            channel,
            recorder,
            allow_server_errors=self.allow_server_errors,
            operator_url=operator_url,
        )
        self.started.append(server)
        grpc.channel_ready_future(channel).result(timeout=10)
        if self.transport != "grpc":
            server.over_http(self.transport)
        return server

    def stop_started(self) -> None:
        """Stop every started server (SIGTERM for a process); each must exit with 0 (unless
        killed) and pass ``check_clean``.
        """
        codes = [server.stop() for server in self.started]
        for server, code in zip(self.started, codes, strict=True):
            server.check_clean()
            if isinstance(server.host, ServerProcess) and server.host.ignored_sigterm:
                raise ServerFailed(
                    f"simtrack serve ignored SIGTERM and was killed:\n{server.stderr}"
                )
            assert code == 0 or server.killed, (
                f"the server exited with {code} when stopped:\n{server.stderr}"
            )

    def kill_launched(self) -> None:
        """Kill what still runs (after a failed test); in-process servers are stopped."""
        for process in self.launched:
            process.kill()
        for server in self.started:
            if isinstance(server.host, InProcessServer):
                server.host.stop()
