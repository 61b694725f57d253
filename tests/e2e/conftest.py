"""End-to-end fixtures: the real ``simtrack serve`` as a subprocess, driven through its stubs.

``server`` starts one server per test on a free port against the test's own migrated database
(``database_url``: SQLite and PostgreSQL) and stops it with SIGTERM afterwards. Teardown fails
the test when the server's log holds a Python traceback or when any call answered UNKNOWN or
INTERNAL (the server must map everything a caller can do to a meaningful status); a test that
expects either opts in with ``@pytest.mark.allow_server_errors``.

``start_server`` starts more servers (or servers against other databases) with the same checks;
``launch`` only starts the process, for servers that are expected to refuse to start. Both take
``listen=`` (default ``127.0.0.1:0``) and extra ``SIMTRACK_*`` settings as keywords;
``start_server(url, auth=True)`` serves with API keys required and, on PostgreSQL, connects the
server as the non-superuser application role (row-level security binds it) while
``Server.database_url`` stays the owner's URL, for snapshots and the operator's ``simtrack`` CLI.
``Server.connect(authorization)`` opens a channel that sends that ``authorization`` metadata.

``module_server_pool`` and ``module_database_url`` do the same once per test module (and backend),
for modules whose tests share one server but each use data of their own; ``simtrack_cli`` runs the
real ``simtrack`` command (e.g. ``tenants create``) as an operator would.

Test modules import the classes below for annotations only (``if TYPE_CHECKING``): every
directory's ``conftest.py`` is importable as ``conftest``, so a runtime import would be ambiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import numpy as np
import psycopg
import pytest
import sqlalchemy
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_status import rpc_status
from psycopg import sql

from simtrack.server.db.chunks import unpack
from simtrack.server.db.models import Base
from simtrack.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    artifacts_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    scenarios_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    validations_pb2_grpc,
)

SIMTRACK = Path(sys.executable).parent / "simtrack"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HEALTH_CHECK_INTERVAL = "0.2"
CLI_TIMEOUT = 60.0
LOOPBACK_ANY_PORT = "127.0.0.1:0"
# As in tests/conftest.py (not imported: every conftest.py is a module named ``conftest``):
# the non-superuser role the template database grants to, and the parameters of ``backend``.
APP_ROLE = "simtrack_app"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_SERVING = re.compile(r"simtrack serving on (?P<address>\S+:\d+)")
# Status codes that mean "the server did not handle this": never acceptable for caller input.
SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})

Req = TypeVar("Req")
Resp = TypeVar("Resp")

if TYPE_CHECKING:
    # type_check_only in grpc-stubs: what a unary-unary continuation returns.
    from grpc import _CallFuture, _CallIterator, _Metadata


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_server_errors: the test expects a traceback in the server log or an "
        "UNKNOWN/INTERNAL status; the e2e teardown does not fail it for that",
    )


class ServerProcess:
    """One ``simtrack serve`` subprocess; its stderr is drained into a buffer on a thread."""

    def __init__(
        self,
        database_url: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        listen: str = LOOPBACK_ANY_PORT,
    ) -> None:
        self.database_url = database_url
        self.cwd = cwd
        self.listen = listen
        # Inherited SIMTRACK_* settings (a developer's shell) must not change what is tested.
        self.env = clean_env(SIMTRACK_HEALTH_CHECK_INTERVAL=HEALTH_CHECK_INTERVAL)
        self.env.update(env or {})
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._serving = threading.Event()
        self._address = ""
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                str(SIMTRACK),
                "serve",
                "--listen",
                self.listen,
                "--database-url",
                self.database_url,
            ],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self._lines.append(line)
            match = _SERVING.search(line)
            if match and not self._serving.is_set():
                self._address = match["address"]
                self._serving.set()

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def stderr(self) -> str:
        """Everything the server has logged so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_serving(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The ``host:port`` the server listens on, once it says it is serving."""
        deadline = time.monotonic() + timeout
        while not self._serving.wait(0.05):
            if self.process.poll() is not None:
                self._finish_drain()
                if self._serving.is_set():
                    break
                pytest.fail(
                    f"simtrack serve exited with {self.process.returncode} before serving:\n"
                    f"{self.stderr}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"simtrack serve did not report serving within {timeout}s:\n{self.stderr}",
                    pytrace=False,
                )
        return self._address

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Wait for the process to end by itself (e.g. a refused start); its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"simtrack serve still running after {timeout}s:\n{self.stderr}")
        self._finish_drain()
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (idempotent)."""
        if self._process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._finish_drain()
                pytest.fail(
                    f"simtrack serve ignored SIGTERM for {timeout}s and was killed:\n{self.stderr}",
                    pytrace=False,
                )
        self._finish_drain()
        return self.process.returncode

    def _finish_drain(self) -> None:
        if self._drain is not None:
            self._drain.join(5)


def as_app_role(url: str) -> str:
    """The same PostgreSQL database, reached as the application role (trust auth in tests)."""
    return sqlalchemy.make_url(url).set(username=APP_ROLE, password=None).render_as_string(False)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SIMTRACK_* settings (a developer's shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMTRACK_")}
    env.update(extra)
    return env


@dataclass
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: _Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class Authorization(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends ``authorization: <value>`` metadata (verbatim) on every call of the channel."""

    def __init__(self, value: str) -> None:
        self.value = value

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = (*(details.metadata or ()), ("authorization", self.value))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallFuture[Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallIterator[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallIterator[Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Req]], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Req],
    ) -> _CallFuture[Resp]:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Req]], _CallIterator[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Req],
    ) -> _CallIterator[Resp]:
        return continuation(self._details(client_call_details), request_iterator)


class StatusRecorder(grpc.UnaryUnaryClientInterceptor):
    """Remembers the status code of every unary call made through the channel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, grpc.StatusCode]] = []

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallFuture[Resp]:
        outcome = continuation(client_call_details, request)
        self.calls.append((client_call_details.method, outcome.code()))
        return outcome

    def faults(self) -> list[tuple[str, grpc.StatusCode]]:
        return [(method, code) for method, code in self.calls if code in SERVER_FAULTS]


@dataclass
class Client:
    """The stubs of every simtrack service on one channel."""

    channel: grpc.Channel
    agents: agents_pb2_grpc.AgentServiceStub = field(init=False)
    experiments: experiments_pb2_grpc.ExperimentServiceStub = field(init=False)
    runs: runs_pb2_grpc.RunServiceStub = field(init=False)
    telemetry: telemetry_pb2_grpc.TelemetryServiceStub = field(init=False)
    artifacts: artifacts_pb2_grpc.ArtifactServiceStub = field(init=False)
    validations: validations_pb2_grpc.ValidationServiceStub = field(init=False)
    scenarios: scenarios_pb2_grpc.ScenarioServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.validations = validations_pb2_grpc.ValidationServiceStub(self.channel)
        self.scenarios = scenarios_pb2_grpc.ScenarioServiceStub(self.channel)


@dataclass
class Server:
    """A serving simtrack: its address, a channel with the stubs of every service, its log."""

    process: ServerProcess
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
        return self.operator_url or self.process.database_url

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
        return self.process.stderr

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
        for client in self._clients:
            client.channel.close()
        if self._database is not None:
            self._database.dispose()
        return self.process.stop()

    def kill(self) -> None:
        """``kill -9`` the server now (a crash); the teardown then expects no clean exit."""
        self.killed = True
        self.process.process.kill()
        self.process.process.wait()

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
    """Launches ``simtrack serve`` processes in folders under ``workdir``; stops them all after."""

    def __init__(self, workdir: Path, allow_server_errors: bool = False) -> None:
        self.workdir = workdir
        self.allow_server_errors = allow_server_errors
        self.launched: list[ServerProcess] = []
        self.started: list[Server] = []

    def launch(
        self, database_url: str, *, listen: str = LOOPBACK_ANY_PORT, **env: str
    ) -> ServerProcess:
        workdir = self.workdir / f"server{len(self.launched)}"
        workdir.mkdir()
        process = ServerProcess(database_url, workdir, env, listen)
        self.launched.append(process)
        process.start()
        return process

    def start(
        self, database_url: str, *, auth: bool = False, listen: str = LOOPBACK_ANY_PORT, **env: str
    ) -> Server:
        served, operator_url = database_url, None
        if auth:
            env = {"SIMTRACK_AUTH_ENABLED": "true", **env}
            if sqlalchemy.make_url(database_url).get_backend_name() == "postgresql":
                # Row-level security binds only a non-superuser: serve as the application role.
                served, operator_url = as_app_role(database_url), database_url
        process = self.launch(served, listen=listen, **env)
        address = process.wait_serving()
        recorder = StatusRecorder()
        channel = grpc.intercept_channel(grpc.insecure_channel(address), recorder)
        server = Server(
            process,
            address,
            channel,
            recorder,
            allow_server_errors=self.allow_server_errors,
            operator_url=operator_url,
        )
        self.started.append(server)
        grpc.channel_ready_future(channel).result(timeout=10)
        return server

    def stop_started(self) -> None:
        """SIGTERM every started server; each must exit with 0 and pass ``check_clean``."""
        codes = [server.stop() for server in self.started]
        for server, code in zip(self.started, codes, strict=True):
            server.check_clean()
            assert code == 0 or server.killed, (
                f"simtrack serve exited with {code} on SIGTERM:\n{server.stderr}"
            )

    def kill_launched(self) -> None:
        for process in self.launched:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()


@pytest.fixture
def server_pool(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    """This test's servers (behind ``launch`` and ``start_server``)."""
    allow = request.node.get_closest_marker("allow_server_errors") is not None
    pool = ServerPool(tmp_path, allow)
    try:
        yield pool
    finally:
        pool.kill_launched()


@pytest.fixture
def launch(server_pool: ServerPool) -> Launch:
    """Start ``simtrack serve`` processes without waiting for them; all are stopped after.

    ``launch(database_url, listen=..., **env)``; for servers expected to refuse to start.
    """
    return server_pool.launch


@pytest.fixture
def start_server(server_pool: ServerPool) -> Iterator[StartServer]:
    """Start ``simtrack serve`` against a database URL and wait until it serves.

    ``start_server(database_url, auth=False, listen=..., **env)``. After the test every server
    gets SIGTERM and must exit with 0, and is checked for tracebacks and UNKNOWN/INTERNAL answers.
    Request the database fixture *before* this one, so the database outlives the servers using it.
    """
    yield server_pool.start
    server_pool.stop_started()


@pytest.fixture(scope="module")
def module_server_pool(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ServerPool]:
    """Servers shared by the tests of one module (and backend); stopped and checked after them.

    It depends on ``module_database_url`` so that the database outlives the servers using it.
    """
    allow = request.node.get_closest_marker("allow_server_errors") is not None
    pool = ServerPool(tmp_path_factory.mktemp("servers"), allow)
    try:
        yield pool
        pool.stop_started()
    finally:
        pool.kill_launched()


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database shared by one module's tests (sqlite and postgresql), as its owner."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("database") / "simtrack.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin")
    template: str = request.getfixturevalue("postgres_template")
    name = f"simtrack_test_{uuid.uuid4().hex[:12]}"

    def admin(statement: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL(statement).format(sql.Identifier(name), sql.Identifier(template))
            )

    admin("CREATE DATABASE {} TEMPLATE {}")  # a copy keeps the template's grants
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")


SimtrackCli = Callable[..., "subprocess.CompletedProcess[str]"]


def run_simtrack(
    *args: str, database_url: str | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``simtrack ARGS [--database-url URL]`` as a user runs it; fails the test on a bad exit.

    ``env``: SIMTRACK_* settings for the command (e.g. SIMTRACK_TARGET for the client commands).
    """
    database = ["--database-url", database_url] if database_url is not None else []
    result = subprocess.run(
        [str(SIMTRACK), *args, *database],
        env=clean_env(COLUMNS="250", **env),  # rich tables: wide enough that no cell wraps
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"simtrack {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


@pytest.fixture(scope="session")
def simtrack_cli() -> SimtrackCli:
    """``simtrack_cli(*args, database_url=None, check=True, **env)``: the real ``simtrack``."""
    return run_simtrack


@pytest.fixture
def server(database_url: str, start_server: StartServer) -> Server:
    """A serving simtrack on this test's own migrated database (sqlite and postgresql)."""
    return start_server(database_url)


# Worker streams (StreamRun): a raw client, deterministic telemetry, the database's view of it,
# and a connection-cutting TCP proxy. Test modules reach them through the ``streams`` fixture
# (the classes are imported for annotations only, as above).

STREAM_WINDOW = 32  # unacknowledged sequenced messages a worker keeps in flight
# Reconnect quickly: a test's server comes back (or the proxy lets through) within a second.
AIO_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Statuses after which a worker reconnects and resends; anything else ends its upload.
RECONNECTABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


# grpc aio (grpc/grpc#36066): a client write that loses the race with the server's end of the
# call replaces the server's status with this one, on the client side only.
WRITE_RACE_DETAILS = "Internal error from Core"


class StreamEnded(Exception):
    """The stream ended while the test still expected something of it."""

    def __init__(self, stream: RawStream, waiting_for: str) -> None:
        self.code = stream.code
        self.details = stream.details
        super().__init__(
            f"stream of run {stream.run_id} ended with {self.code}: {self.details!r} "
            f"while waiting for {waiting_for}"
        )


class RawStream:
    """One ``TelemetryService.StreamRun`` call, driven message by message as a worker would.

    A reader task records everything the server says (welcome, acks, commands, going away)
    and how the call ended. ``send`` keeps at most ``window`` sequenced messages beyond the
    last ack in flight; every wait is bounded and fails fast when the call has ended.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        run_id: str,
        worker_id: str = "e2e-worker",
        window: int = STREAM_WINDOW,
        authorization: str | None = None,
    ) -> None:
        self.stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        self.metadata = (("authorization", authorization),) if authorization is not None else None
        self.run_id = run_id
        self.worker_id = worker_id
        self.window = window
        self.call: (
            grpc.aio.StreamStreamCall[
                telemetry_pb2.StreamRunRequest, telemetry_pb2.StreamRunResponse
            ]
            | None
        ) = None
        self.welcome: telemetry_pb2.Welcome | None = None
        self.committed = 0  # the highest watermark the server reported (welcome or ack)
        self.acks: list[int] = []
        self.commands: list[runs_pb2.Command] = []
        self.going_away: telemetry_pb2.GoingAway | None = None
        self.sent = 0  # the highest seq written
        self.code: grpc.StatusCode | None = None  # set once the call ended
        self.details = ""
        self.error: grpc.aio.AioRpcError | None = None
        self.violations: list[str] = []  # protocol breaches seen in the server's answers
        self.write_failed = False
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._cancelled = False

    async def open(
        self, last_acked: int = 0, timeout: float = 10.0, replay: bool = False
    ) -> telemetry_pb2.Welcome:
        """Say hello (as a live worker, or ``replay``ing a dead one's spool); the welcome."""
        hello = telemetry_pb2.Hello(
            run_id=self.run_id, worker_id=self.worker_id, last_acked_seq=last_acked, replay=replay
        )
        return await self.start(telemetry_pb2.StreamRunRequest(hello=hello), timeout)

    async def start(
        self, first: telemetry_pb2.StreamRunRequest, timeout: float = 10.0
    ) -> telemetry_pb2.Welcome:
        """Open the call with ``first`` as its first message (hello, or not); the welcome."""
        self.call = self.stub.StreamRun(metadata=self.metadata)
        self._reader = asyncio.create_task(self._read(), name=f"stream-{self.run_id}")
        await self._write(first, "the first message")
        await self.wait(lambda: self.welcome is not None, timeout, "the welcome")
        assert self.welcome is not None
        return self.welcome

    async def send(self, message: telemetry_pb2.StreamRunRequest, timeout: float = 20.0) -> None:
        """Write ``message`` once the window has room for its seq.

        After a GoingAway nothing more is sent (the server would drop it): StreamEnded once
        the server has ended the call, as a worker would wait for that before reconnecting.
        """
        seq = message.seq
        if seq > 0:
            await self.wait(
                lambda: seq - self.committed <= self.window or self.going_away is not None,
                timeout,
                f"room to send seq {seq}",
            )
        if self.going_away is not None:
            with contextlib.suppress(TimeoutError):
                await self.wait_end(timeout)
            raise StreamEnded(self, f"sending seq {seq} after GoingAway")
        await self._write(message, f"sending seq {seq}")
        self.sent = max(self.sent, seq)

    async def send_all(
        self, messages: Iterable[telemetry_pb2.StreamRunRequest], timeout: float = 20.0
    ) -> None:
        for message in messages:
            await self.send(message, timeout)

    async def heartbeat(self) -> None:
        heartbeat = telemetry_pb2.StreamRunRequest(heartbeat=telemetry_pb2.Heartbeat())
        await self._write(heartbeat, "a heartbeat")

    async def wait_acked(self, seq: int, timeout: float = 20.0) -> None:
        await self.wait(lambda: self.committed >= seq, timeout, f"the ack of seq {seq}")

    async def wait_command(self, name: str, timeout: float = 10.0) -> runs_pb2.Command:
        """The first command called ``name`` the server pushed (waiting for it if need be)."""

        def found() -> runs_pb2.Command | None:
            return next((c for c in self.commands if c.name == name), None)

        await self.wait(lambda: found() is not None, timeout, f"a {name!r} command")
        command = found()
        assert command is not None
        return command

    async def wait_end(self, timeout: float = 10.0) -> grpc.StatusCode:
        """How the call ended (waiting for the end)."""
        async with asyncio.timeout(timeout):
            while self.code is None:
                await self._next_change()
        return self.code

    async def finish(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Half-close (no more messages) and wait for the server to end the call."""
        assert self.call is not None
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.done_writing()
        return await self.wait_end(timeout)

    @property
    def write_race(self) -> bool:
        """Whether the status seen is grpc aio's stand-in after a failed write (see above)."""
        return (
            self.write_failed
            and self.code == grpc.StatusCode.INTERNAL
            and self.details == WRITE_RACE_DETAILS
        )

    def cancel(self) -> None:
        """Vanish: drop the call without a word (as a dying worker's connection would)."""
        self._cancelled = True
        if self.call is not None:
            self.call.cancel()

    async def close(self) -> None:
        """End the call if it still runs, politely (half-close, as a worker that is done),
        cancelling it only if the server does not end it; stop the reader (teardown).
        """
        if self.call is not None and self.code is None:
            with contextlib.suppress(TimeoutError):
                await self.finish(timeout=5)
        if self.code is None:
            self.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader

    def bad_request_fields(self) -> list[str]:
        """The fields the google.rpc.BadRequest of the call's error status names."""
        return bad_request_fields(self.error) if self.error is not None else []

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds; StreamEnded if the call ends first."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    assert not self.violations, self.violations
                    if self.code is not None:
                        raise StreamEnded(self, what)
                    await self._next_change()
        except TimeoutError:
            raise TimeoutError(
                f"run {self.run_id}: no {what} within {timeout}s (committed {self.committed}, "
                f"sent {self.sent}, ended {self.code})"
            ) from None

    async def _next_change(self) -> None:
        event = self._changed
        await event.wait()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _write(self, message: telemetry_pb2.StreamRunRequest, what: str) -> None:
        assert self.call is not None
        try:
            await self.call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            self.write_failed = True
            with contextlib.suppress(TimeoutError):
                await self.wait_end(5)
            raise StreamEnded(self, what) from None

    async def _read(self) -> None:
        assert self.call is not None
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                assert isinstance(response, telemetry_pb2.StreamRunResponse)
                kind = response.WhichOneof("kind")
                if kind == "welcome":
                    if self.welcome is not None:
                        self.violations.append("a second welcome")
                    self.welcome = response.welcome
                    self.committed = response.welcome.committed_seq
                    self.commands.extend(response.welcome.pending_commands)
                elif kind == "ack":
                    seq = response.ack.committed_seq
                    if seq < self.committed:
                        self.violations.append(f"the watermark went back: {self.committed}, {seq}")
                    self.acks.append(seq)
                    self.committed = max(self.committed, seq)
                elif kind == "command":
                    self.commands.append(response.command)
                elif kind == "going_away":
                    self.going_away = response.going_away
                self._changed_now()
            self.code = await self.call.code()
            self.details = await self.call.details() or ""
        except grpc.aio.AioRpcError as error:
            self.error = error
            self.code = error.code()
            self.details = error.details() or ""
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self.code = grpc.StatusCode.CANCELLED
        finally:
            if self.code is None:
                self.code = grpc.StatusCode.UNKNOWN
            self._changed_now()


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of ``error``."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    fields: list[str] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


def _refusal(call: Callable[[Any], object], request: Any) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    error = cast(grpc.aio.AioRpcError, caught.value)  # a sync RpcError is a grpc.Call too
    return error.code(), bad_request_fields(error)


Refusal = Callable[[Callable[[Any], object], Any], tuple[grpc.StatusCode, list[str]]]


@pytest.fixture(scope="session")
def refusal() -> Refusal:
    """``refusal(stub.Method, request)``: the status code and the BadRequest fields named by a
    unary call that must fail (the test fails if it succeeds).
    """
    return _refusal


@dataclass(frozen=True)
class Checksum:
    """A metric's points as stored or as sent: count, the steps' multiset, the values' sum.

    ``points`` is the sha256 of the (step, value-bits) pairs sorted by step, so equal
    checksums mean the very same points, bit for bit, each once.
    """

    count: int
    steps: str
    value_sum: float
    points: str

    @classmethod
    def of(cls, steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> Checksum:
        order = np.argsort(steps, kind="stable")
        steps_sorted = np.ascontiguousarray(steps[order], dtype="<i8")
        values_sorted = np.ascontiguousarray(values[order], dtype="<f8")
        return cls(
            count=len(steps),
            steps=hashlib.sha256(steps_sorted.tobytes()).hexdigest()[:16],
            value_sum=math.fsum(values_sorted[np.isfinite(values_sorted)].tolist()),
            points=hashlib.sha256(steps_sorted.tobytes() + values_sorted.tobytes()).hexdigest(),
        )


class Dataset:
    """Deterministic metric batches: message ``i`` (seq ``first_seq + i``) holds ``points``
    points of every metric, steps ``i * points ...``, values from a seeded generator.
    """

    def __init__(
        self,
        batches: int,
        points: int = 1000,
        metrics: Sequence[str] = ("loss", "reward"),
        seed: int = 0,
        first_seq: int = 1,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.metrics = tuple(metrics)
        self.points = points
        self.steps = {
            name: np.arange(batches * points, dtype="<i8") + 1000 * k
            for k, name in enumerate(self.metrics)
        }
        self.values = {name: rng.normal(k, 1.0, batches * points) for k, name in enumerate(metrics)}
        self.messages = [
            telemetry_pb2.StreamRunRequest(
                seq=first_seq + i,
                metrics=telemetry_pb2.MetricBatch(
                    series=[
                        telemetry_pb2.MetricSeries(
                            name=name,
                            steps=self.steps[name][i * points : (i + 1) * points].tolist(),
                            values=self.values[name][i * points : (i + 1) * points].tolist(),
                        )
                        for name in self.metrics
                    ]
                ),
            )
            for i in range(batches)
        ]

    @property
    def total_points(self) -> int:
        return sum(len(v) for v in self.values.values())

    def checksums(self, batches: int | None = None) -> dict[str, Checksum]:
        """Per metric: the checksum of every point sent, or of the first ``batches`` batches."""
        end = None if batches is None else batches * self.points
        return {
            name: Checksum.of(self.steps[name][:end], self.values[name][:end])
            for name in self.metrics
        }


@dataclass
class StoredMetric:
    """A metric as the database holds it: its chunks decoded, and its summary row."""

    name: str
    seqs: list[int]
    steps: np.ndarray[Any, Any]
    values: np.ndarray[Any, Any]
    timestamps: np.ndarray[Any, Any]
    raw_values: bytes  # the stored value bytes, concatenated in seq order
    count: int
    min_value: float | None
    max_value: float | None
    last_step: int | None
    last_value: float | None

    def checksum(self) -> Checksum:
        return Checksum.of(self.steps, self.values)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    position: int
    step: int
    type: str
    agent_id: str | None
    payload: dict[str, Any]


class TelemetryDatabase:
    """Reads what the server stored straight from its database (PostgreSQL as the superuser
    that owns the test database, so row-level security hides nothing; SQLite from the file).
    """

    def __init__(self, url: str) -> None:
        parsed = sqlalchemy.make_url(url)
        if parsed.get_backend_name() == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.NullPool)

    def rows(self, query: str, **params: Any) -> list[sqlalchemy.Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(query), params))

    def metrics(self, run_id: str) -> dict[str, StoredMetric]:
        """Every metric of the run with its chunks decoded (each chunk's sizes checked)."""
        summaries = self.rows(
            "select id, name, count as point_count, min_value, max_value, last_step, last_value "
            "from metrics where run_id = :run",
            run=run_id,
        )
        chunks = self.rows(
            "select metric_id, seq, run_id, n, first_step, last_step, steps, vals, ts "
            "from metric_chunks where run_id = :run order by metric_id, seq",
            run=run_id,
        )
        stored = {}
        for summary in summaries:
            name = summary.name
            mine = [c for c in chunks if c.metric_id == summary.id]
            steps, values, stamps = [], [], []
            for chunk in mine:
                columns = (bytes(chunk.steps), bytes(chunk.vals), bytes(chunk.ts))
                chunk_steps, chunk_values, chunk_times = unpack(chunk.n, chunk.first_step, *columns)
                steps.append(chunk_steps)
                values.append(chunk_values)
                stamps.append(chunk_times)
                assert (chunk.first_step, chunk.last_step) == (
                    int(steps[-1].min()),
                    int(steps[-1].max()),
                ), f"chunk {chunk.seq} of {name}: wrong step range"
            stored[name] = StoredMetric(
                name=name,
                seqs=[c.seq for c in mine],
                steps=np.concatenate(steps) if steps else np.zeros(0, dtype="<i8"),
                values=np.concatenate(values) if values else np.zeros(0, dtype="<f8"),
                timestamps=np.concatenate(stamps) if stamps else np.zeros(0, dtype="<f8"),
                raw_values=b"".join(bytes(c.vals) for c in mine),
                count=summary.point_count,
                min_value=summary.min_value,
                max_value=summary.max_value,
                last_step=summary.last_step,
                last_value=summary.last_value,
            )
        assert sum(len(m.seqs) for m in stored.values()) == len(chunks), "orphan chunks"
        return stored

    def checksums(self, run_id: str) -> dict[str, Checksum]:
        """Per metric: the checksum of its stored points; its summary count must agree."""
        result = {}
        for name, metric in self.metrics(run_id).items():
            assert metric.count == len(metric.steps), (
                f"{name}: the summary counts {metric.count} points, the chunks hold "
                f"{len(metric.steps)}"
            )
            result[name] = metric.checksum()
        return result

    def committed_seq(self, run_id: str) -> int:
        return int(self.rows("select committed_seq from runs where id = :run", run=run_id)[0][0])

    def events(self, run_id: str) -> list[StoredEvent]:
        rows = self.rows(
            "select seq, position, step, type, agent_id, payload from events "
            "where run_id = :run order by seq, position",
            run=run_id,
        )
        return [
            StoredEvent(
                r.seq,
                r.position,
                r.step,
                r.type,
                r.agent_id,
                json.loads(r.payload) if isinstance(r.payload, str) else r.payload,
            )
            for r in rows
        ]

    def dispose(self) -> None:
        self.engine.dispose()


class TcpProxy:
    """A TCP relay in front of a server that cuts its connections on purpose.

    The first ``max_cuts`` connections each get, from a seeded generator, a byte budget in
    one direction (toward the server: batches cut mid-send; toward the client: acks lost
    after the commit); once it is spent both sides are aborted (RST, no goodbye), in the
    middle of whatever frame was passing. Later connections are relayed faithfully, so a
    test always finishes.
    """

    def __init__(
        self,
        upstream: str,
        seed: int = 0,
        max_cuts: int = 0,
        to_server_budget: tuple[int, int] = (5_000, 100_000),
        to_client_budget: tuple[int, int] = (60, 400),
    ) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.max_cuts = max_cuts
        self.to_server_budget = to_server_budget
        self.to_client_budget = to_client_budget
        self.armed = 0  # connections given a budget
        self.cuts = 0
        self.cuts_toward = {"server": 0, "client": 0}  # which way the cut data was going
        self.connections = 0
        self.address = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def close(self) -> None:
        """Stop accepting, drop every connection, and let the handlers finish."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await self._relay(client_r, client_w)
        finally:
            self._handlers.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, _, port = self.upstream.rpartition(":")
        try:
            server_r, server_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.transport.abort()
            return
        budgets: list[int | None] = [None, None]
        if self.armed < self.max_cuts:
            self.armed += 1
            direction = self.rng.randrange(2)
            low, high = self.to_server_budget if direction == 0 else self.to_client_budget
            budgets[direction] = self.rng.randint(low, high)
        writers = (client_w, server_w)
        self._writers.update(writers)

        def cut(toward: str) -> None:
            self.cuts += 1
            self.cuts_toward[toward] += 1
            for writer in writers:
                writer.transport.abort()

        pipes = [
            asyncio.create_task(self._pipe(client_r, server_w, budgets[0], lambda: cut("server"))),
            asyncio.create_task(self._pipe(server_r, client_w, budgets[1], lambda: cut("client"))),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in writers:
                writer.transport.abort()
            self._writers.difference_update(writers)
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        budget: int | None,
        cut: Callable[[], None],
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                if budget is not None:
                    if len(data) >= budget:
                        sink.write(data[:budget])  # part of a frame: the worst moment
                        cut()
                        return
                    budget -= len(data)
                sink.write(data)
                await sink.drain()


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


@pytest.fixture
async def streams() -> AsyncIterator[StreamKit]:
    """Raw StreamRun clients and friends; fails the test if any stream ended UNKNOWN/INTERNAL."""
    kit = StreamKit()
    yield kit
    await kit.aclose()
    faults = [code for code in kit.stream_codes if code in SERVER_FAULTS]
    assert not faults, f"streams ended with a server fault: {faults}"
    assert not kit.violations, f"the server broke the stream protocol: {kit.violations}"


@pytest.fixture
def served_url(backend: str, database_url: str, request: pytest.FixtureRequest) -> str:
    """What the server connects with: on PostgreSQL the application role (RLS applies)."""
    if backend == "postgresql":
        return str(request.getfixturevalue("app_role_url"))
    return database_url
