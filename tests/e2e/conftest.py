"""End-to-end fixtures: the real simtrack server, driven through its stubs.

The harness behind them is a library, tests/support (``from tests.support import Server``).

``server`` starts one server per test on a free port against the test's own migrated database
(``database_url``: SQLite and PostgreSQL) and stops it afterwards: a ``simtrack serve`` process
stopped with SIGTERM or, in modules marked ``in_process``, the same application served on a
thread of the test process (much faster to start; for tests that do not need a process). Teardown
fails the test when the server's log holds a Python traceback or when any call answered UNKNOWN
or INTERNAL (the server must map everything a caller can do to a meaningful status); a test that
expects either opts in with ``@pytest.mark.allow_server_errors``.

``start_server`` starts more servers (or servers against other databases) with the same checks;
``launch`` only starts a process, for servers that are expected to refuse to start. Both take
``listen=`` (default ``127.0.0.1:0``) and extra ``SIMTRACK_*`` settings as keywords;
``start_server(url, auth=True)`` serves with API keys required and, on PostgreSQL, connects the
server as the non-superuser application role (row-level security binds it) while
``Server.database_url`` stays the owner's URL, for snapshots and the operator's ``simtrack`` CLI.
``Server.connect(authorization)`` opens a channel that sends that ``authorization`` metadata.

``module_server_pool`` and ``module_database_url`` do the same once per test module (and backend),
for modules whose tests share one server but each use data of their own; ``simtrack_cli`` runs the
real ``simtrack`` command (e.g. ``tenants create``) as an operator would.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import (
    BACKENDS,
    SERVER_FAULTS,
    Launch,
    PostgresDatabases,
    Refusal,
    Server,
    ServerPool,
    SimtrackCli,
    StartServer,
    StreamKit,
    run_simtrack,
)
from tests.support import (
    refusal as call_refusal,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_server_errors: the test expects a traceback in the server log or an "
        "UNKNOWN/INTERNAL status; the e2e teardown does not fail it for that",
    )
    config.addinivalue_line(
        "markers",
        "in_process(enabled=True): ``server``/``start_server`` serve the application on a thread "
        "of the test process instead of a ``simtrack serve`` process (a module's pytestmark; "
        "``in_process(False)`` on a test that needs a process)",
    )
    config.addinivalue_line(
        "markers",
        "transports(*names): run the module's tests with the servers' stubs calling over each "
        "transport (grpc, connect-json, connect-proto, grpc-web, grpc-http: the HTTP listener)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None and "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", marker.args, indirect=True)


def _pool(
    node: pytest.Item | pytest.Collector, workdir: Path, transport: str = "grpc"
) -> ServerPool:
    allow = node.get_closest_marker("allow_server_errors") is not None
    marker = node.get_closest_marker("in_process")
    in_process = marker is not None and bool(marker.args[0] if marker.args else True)
    return ServerPool(workdir, allow, in_process, transport)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """What the servers' stubs call over: gRPC, unless the module's ``transports`` marker
    runs its tests over several (``tests.support.http_stubs.TRANSPORTS``).
    """
    return str(getattr(request, "param", "grpc"))


@pytest.fixture
def server_pool(
    tmp_path: Path, request: pytest.FixtureRequest, transport: str
) -> Iterator[ServerPool]:
    """This test's servers (behind ``launch`` and ``start_server``)."""
    pool = _pool(request.node, tmp_path, transport)
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
    """Start a server against a database URL and wait until it serves.

    ``start_server(database_url, auth=False, listen=..., in_process=None, **env)``. After the
    test every server is stopped (SIGTERM for a process) and must exit with 0, and is checked
    for tracebacks and UNKNOWN/INTERNAL answers. Request the database fixture *before* this
    one, so the database outlives the servers using it.
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
    pool = _pool(request.node, tmp_path_factory.mktemp("servers"))
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
    databases = PostgresDatabases(request.getfixturevalue("postgres_admin"))
    try:
        # A copy of the template keeps its grants to the application role.
        yield databases.create(template=request.getfixturevalue("postgres_template"))
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def simtrack_cli() -> SimtrackCli:
    """``simtrack_cli(*args, database_url=None, check=True, **env)``: the real ``simtrack``."""
    return run_simtrack


@pytest.fixture
def server(database_url: str, start_server: StartServer) -> Server:
    """A serving simtrack on this test's own migrated database (sqlite and postgresql)."""
    return start_server(database_url)


@pytest.fixture(scope="session")
def refusal() -> Refusal:
    """``refusal(stub.Method, request)``: the status code and the BadRequest fields named by a
    unary call that must fail (the test fails if it succeeds).
    """
    return call_refusal


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
