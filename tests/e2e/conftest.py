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

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import psycopg
import pytest
import sqlalchemy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from psycopg import sql

from simtrack.server.db.models import Base
from simtrack.v1 import (
    agents_pb2_grpc,
    experiments_pb2_grpc,
    runs_pb2_grpc,
    scenarios_pb2_grpc,
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
    scenarios: scenarios_pb2_grpc.ScenarioServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
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
    scenarios: scenarios_pb2_grpc.ScenarioServiceStub = field(init=False)
    health: Any = field(init=False)  # grpc_health ships no type information
    reflection: Any = field(init=False)
    allow_server_errors: bool = False
    # The owner's URL when the server connects as another role (the application role).
    operator_url: str | None = None
    _database: sqlalchemy.Engine | None = field(default=None, init=False)
    _clients: list[Client] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
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
                    tuple(row) for row in connection.execute(table.select().order_by(table.c.id))
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
            assert code == 0, f"simtrack serve exited with {code} on SIGTERM:\n{server.stderr}"

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
    *args: str, database_url: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``simtrack ARGS --database-url URL`` as an operator runs it; fails the test on a bad exit."""
    result = subprocess.run(
        [str(SIMTRACK), *args, "--database-url", database_url],
        env=clean_env(COLUMNS="250"),  # rich tables: wide enough that no cell wraps
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
    """``simtrack_cli(*args, database_url=..., check=True)``: the real ``simtrack`` command."""
    return run_simtrack


@pytest.fixture
def server(database_url: str, start_server: StartServer) -> Server:
    """A serving simtrack on this test's own migrated database (sqlite and postgresql)."""
    return start_server(database_url)
