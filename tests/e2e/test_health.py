"""Health follows the database (PostgreSQL only): NOT_SERVING and UNAVAILABLE while it is
unreachable, SERVING again once it is back. Refused at start-up: an unmigrated database, and
an address (gRPC or metrics) another server already listens on, unless sharing is asked for.

Each test has a PostgreSQL database of its own (``empty_database_url`` on the postgresql
backend, created by ``PostgresDatabases``): the outage test takes it away from everyone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from psycopg import sql

from simtrack.server.db import migrate
from simtrack.v1 import agents_pb2, agents_pb2_grpc, scenarios_pb2
from tests.support import Launch, Server, ServerProcess, StartServer
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from pathlib import Path

POSTGRESQL_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
# The server probes every 0.2 s (SIMTRACK_HEALTH_CHECK_INTERVAL in the fixture).
REACTION_TIME = 5.0


def health_is(server: Server, expected: int, service: str = "") -> Callable[[], bool]:
    def check() -> bool:
        try:
            return server.health_status(service) == expected
        except grpc.RpcError as exc:  # NOT_FOUND until the first probe has set the service
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
            return False

    return check


def database_name(url: str) -> str:
    return url.rpartition("/")[2]


def set_allow_connections(admin_url: str, name: str, allow: bool) -> None:
    """Open or close a database to new connections; closing also ends the existing ones."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allow)
            )
        )
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


@contextmanager
def database_unreachable(admin_url: str, name: str) -> Iterator[None]:
    set_allow_connections(admin_url, name, False)
    try:
        yield
    finally:
        set_allow_connections(admin_url, name, True)


def list_agents(server: Server) -> list[str]:
    response = server.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=15)
    return [a.name for a in response.agents]


def create_agent(server: Server, name: str) -> None:
    agent = agents_pb2.Agent(name=name, framework=agents_pb2.Framework.FRAMEWORK_BASELINE)
    server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent), timeout=15)


@POSTGRESQL_ONLY
def test_health_and_calls_follow_the_database(
    empty_database_url: str, postgres_admin: str, start_server: StartServer
) -> None:
    migrate.upgrade(empty_database_url)
    server = start_server(empty_database_url)
    wait_for(health_is(server, SERVING, "simtrack.v1.AgentService"), REACTION_TIME, "AgentService")
    assert server.health_status("") == SERVING
    create_agent(server, "before")
    assert list_agents(server) == ["before"]

    with database_unreachable(postgres_admin, database_name(empty_database_url)):
        wait_for(health_is(server, NOT_SERVING), REACTION_TIME, "NOT_SERVING, the database away")
        for service in ("simtrack.v1.AgentService", "simtrack.v1.RunService"):
            assert server.health_status(service) == NOT_SERVING
        for call in (lambda: list_agents(server), lambda: create_agent(server, "during")):
            with pytest.raises(grpc.RpcError) as info:
                call()
            # A transient fault the caller may retry: not UNKNOWN/INTERNAL (and no traceback,
            # which the fixture checks after the test).
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        # The catalogue lives in memory: it keeps answering.
        scenarios = server.scenarios.ListScenarios(scenarios_pb2.ListScenariosRequest())
        assert scenarios.scenarios

    wait_for(health_is(server, SERVING), REACTION_TIME, "SERVING once the database is back")
    for service in ("simtrack.v1.AgentService", "simtrack.v1.ExperimentService"):
        assert server.health_status(service) == SERVING
    create_agent(server, "after")
    assert list_agents(server) == ["before", "after"]
    log = server.stderr
    assert "database unreachable, reporting NOT_SERVING" in log
    assert "database reachable again, reporting SERVING" in log


@POSTGRESQL_ONLY
def test_an_unmigrated_postgresql_database_is_refused(
    empty_database_url: str, launch: Launch
) -> None:
    process = launch(empty_database_url)
    code = process.wait_exit()
    assert code != 0, process.stderr
    assert "simtrack migrate" in process.stderr
    assert "serving on" not in process.stderr
    assert "Traceback" not in process.stderr, process.stderr


def refusal_line(process: ServerProcess) -> str:
    """The one line a server that refused to start said why in (exit code 2, no traceback)."""
    assert process.wait_exit() == 2, process.stderr
    assert "Traceback" not in process.stderr and "serving on" not in process.stderr
    [line] = [line for line in process.stderr.splitlines() if line.startswith("simtrack:")]
    return line


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_second_server_on_an_address_in_use_refuses_to_start(
    database_url: str, start_server: StartServer, launch: Launch, tmp_path: Path
) -> None:
    first = start_server(database_url, SIMTRACK_METRICS_LISTEN="127.0.0.1:0")
    other_database = f"sqlite:///{tmp_path / 'other.db'}"

    line = refusal_line(launch(other_database, listen=first.address))
    assert line.startswith(f"simtrack: cannot listen on {first.address}: ")
    assert "SIMTRACK_REUSE_PORT" in line
    # The first keeps serving, and every new connection reaches it (and its database).
    for i in range(6):
        with grpc.insecure_channel(first.address) as channel:
            agent = agents_pb2.Agent(name=f"caller-{i}", framework=agents_pb2.FRAMEWORK_BASELINE)
            request = agents_pb2.CreateAgentRequest(agent=agent)
            agents_pb2_grpc.AgentServiceStub(channel).CreateAgent(request, timeout=15)
    assert sorted(list_agents(first)) == [f"caller-{i}" for i in range(6)]
    assert first.health_status() == SERVING

    found = re.search(r"simtrack metrics on (\S+:\d+)", first.stderr)
    assert found, first.stderr
    line = refusal_line(launch(other_database, SIMTRACK_METRICS_LISTEN=found[1]))
    assert line.startswith(f"simtrack: cannot serve metrics on {found[1]} ")
    assert "SIMTRACK_METRICS_LISTEN" in line

    # Sharing a port is an explicit setting, on every process that shares it.
    shared = start_server(other_database, SIMTRACK_REUSE_PORT="true")
    also = start_server(database_url, listen=shared.address, SIMTRACK_REUSE_PORT="true")
    assert also.address == shared.address
