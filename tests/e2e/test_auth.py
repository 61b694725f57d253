"""API keys end to end, on SQLite and PostgreSQL: who may call what, and what is refused at start.

Most tests share one server per backend with keys required and the key cache off
(SIMTRACK_AUTH_CACHE_SECONDS=0, so a revocation counts at once); on PostgreSQL it connects as the
application role. Keys are made, listed and revoked with the real operator CLI. Each test makes
keys and objects of its own. The start-up tests (local mode, non-loopback refusal, the role check
on PostgreSQL) start servers of their own.

Every credential sent (good and bad) is remembered; the last test of the shared server stops it
and checks that its log holds none of them (so the tests of their own servers come first).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from simtrack.server.db.models import TENANT_OWNED_TABLES, Base
from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    scenarios_pb2,
    validations_pb2,
)
from tests.support import APP_ROLE, Client, Launch, Server, ServerPool, SimtrackCli, StartServer
from tests.support.auth_requests import (
    METHODS,
    PERMISSION_DENIED,
    SERVICES,
    SERVING,
    UNAUTHENTICATED,
    Message,
    Objects,
    create_objects,
    empty_requests,
    invoke,
    read_requests,
    snapshot,
    table_rows,
    unique,
    write_requests,
)
from tests.support.protos import (
    TIMEOUT,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    Simulation,
    Template,
)
from tests.support.waiting import wait_for

POSTGRESQL_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def test_every_rpc_has_a_read_or_write_request() -> None:
    """A new RPC fails here until the role tests below cover it."""
    objects = Objects(
        Agent(id="a"),
        Agent(id="s"),
        Template(id="t"),
        Experiment(id="e"),
        Simulation(id="x"),
        Run(id="r"),
        Participant(id="p"),
        Run(id="w"),
        validations_pb2.Validation(id="v"),
        artifacts_pb2.Artifact(id="f"),
    )
    reads = set(read_requests(objects))
    writes = [name for name, _ in write_requests(objects)]
    assert len(writes) == len(set(writes)) and not reads & set(writes)
    assert reads | set(writes) == set(METHODS)
    assert all(
        name.split(".")[1].startswith(("Get", "List", "Watch", "Compare", "Read")) for name in reads
    )


# Servers of their own (first: the shared server's last test stops it): local mode,
# non-loopback addresses, the database role


def test_without_auth_no_key_is_needed_and_all_is_the_default_tenants(
    database_url: str, start_server: StartServer, simtrack_cli: SimtrackCli
) -> None:
    server = start_server(database_url)  # the local default: auth disabled, loopback
    client = server.connect(None)
    objects = create_objects(client)
    for method, request in read_requests(objects).items():
        invoke(client, method, request)
    for method, request in write_requests(create_objects(client)):
        invoke(client, method, request)

    tenants = table_rows(simtrack_cli("tenants", "list", database_url=database_url).stdout)
    assert [name for _, name, _ in tenants] == ["default"], tenants
    default_id = tenants[0][0]
    rows = server.database_snapshot()
    for table in TENANT_OWNED_TABLES:
        # Every row of every tenant-owned table belongs to the default tenant.
        column = list(Base.metadata.tables[table].columns.keys()).index("tenant_id")
        assert {row[column] for row in rows[table]} <= {default_id}, table
    assert rows["api_keys"] == []


def test_a_non_loopback_address_without_auth_is_refused(database_url: str, launch: Launch) -> None:
    process = launch(database_url, listen="0.0.0.0:0")
    code = process.wait_exit()
    assert code != 0, process.stderr
    assert "SIMTRACK_AUTH_ENABLED" in process.stderr, process.stderr
    assert "SIMTRACK_ALLOW_UNAUTHENTICATED_REMOTE" in process.stderr, process.stderr
    assert "simtrack serving on" not in process.stderr


def test_a_non_loopback_address_without_auth_may_be_allowed_explicitly(
    database_url: str, start_server: StartServer
) -> None:
    server = start_server(
        database_url, listen="0.0.0.0:0", SIMTRACK_ALLOW_UNAUTHENTICATED_REMOTE="true"
    )
    assert server.address.startswith("0.0.0.0:")
    agent = Agent(name="remote", framework=Framework.FRAMEWORK_CUSTOM)
    server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent), timeout=TIMEOUT)


def test_a_non_loopback_address_with_auth_is_served(
    database_url: str, start_server: StartServer
) -> None:
    server = start_server(database_url, auth=True, listen="0.0.0.0:0")
    assert server.address.startswith("0.0.0.0:")
    assert server.health_status("") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        server.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)
    assert info.value.code() == UNAUTHENTICATED, info.value.details()


@POSTGRESQL_ONLY
def test_with_auth_a_role_that_bypasses_row_level_security_is_refused(
    database_url: str, launch: Launch
) -> None:
    process = launch(database_url, SIMTRACK_AUTH_ENABLED="true")  # postgres: a superuser
    code = process.wait_exit()
    assert code != 0, process.stderr
    assert APP_ROLE in process.stderr and "row-level security" in process.stderr, process.stderr
    assert "simtrack serving on" not in process.stderr


@POSTGRESQL_ONLY
def test_with_auth_the_application_role_serves(
    database_url: str, start_server: StartServer, simtrack_cli: SimtrackCli
) -> None:
    server = start_server(database_url, auth=True)
    assert f"//{APP_ROLE}@" in server.host.database_url
    simtrack_cli("tenants", "create", "acme", database_url=database_url)
    created = simtrack_cli("keys", "create", "--tenant", "acme", database_url=database_url)
    client = server.connect(f"Bearer {created.stdout.strip()}")
    agent = Agent(name="rls", framework=Framework.FRAMEWORK_CUSTOM)
    made = client.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent), timeout=TIMEOUT)
    listed = client.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT).agents
    assert [a.id for a in listed] == [made.agent.id]


# The shared server


@dataclass(frozen=True)
class Key:
    token: str

    @property
    def prefix(self) -> str:
        return self.token.split("_", 2)[1]

    @property
    def secret(self) -> str:
        return self.token.split("_", 2)[2]


@dataclass
class World:
    """One auth-enabled server per backend, its owner's CLI, and every credential sent to it."""

    server: Server
    cli: SimtrackCli
    tenant: str
    sent: list[str] = field(default_factory=list)

    def simtrack(self, *args: str) -> str:
        """Run an operator command against the server's database; its stdout."""
        result = self.cli(*args, database_url=self.server.database_url)
        self.check_not_leaked(f"simtrack {' '.join(args)}", result.stdout + result.stderr)
        return str(result.stdout)

    def key(self, role: str, *, tenant: str | None = None) -> Key:
        """A new key of ``role``, checked to work (its first use)."""
        result = self.cli(
            "keys",
            "create",
            "--tenant",
            tenant or self.tenant,
            "--role",
            role,
            database_url=self.server.database_url,
        )
        key = Key(result.stdout.strip())
        assert key.token.startswith("stk_") and len(key.secret) >= 32, result.stdout
        assert key.prefix in result.stderr and key.token not in result.stderr
        self.sent.append(key.token)
        self.as_key(key).agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)
        return key

    def as_key(self, key: Key) -> Client:
        return self.server.connect(f"Bearer {key.token}")

    def connect(self, authorization: str | None) -> Client:
        """A client sending ``authorization`` verbatim; remembered to look for in the log."""
        if authorization is not None:
            self.sent.append(authorization)
        return self.server.connect(authorization)

    def check_not_leaked(self, where: str, text: str) -> None:
        """None of the credentials sent (nor a real key's secret part) appears in ``text``."""
        for credential in self.sent:
            for part in (credential, *credential.split(" ", 1)[1:], *credential.split("_", 2)[2:]):
                # Short parts ("Bearer", a bare prefix) are no secrets and may well appear.
                assert len(part) < 16 or part not in text, f"{where} shows a credential"


@pytest.fixture(scope="module")
def world(
    module_database_url: str, module_server_pool: ServerPool, simtrack_cli: SimtrackCli
) -> World:
    server = module_server_pool.start(
        module_database_url, auth=True, SIMTRACK_AUTH_CACHE_SECONDS="0"
    )
    tenant = "acme"
    simtrack_cli("tenants", "create", tenant, database_url=server.database_url)
    return World(server, simtrack_cli, tenant)


def refusals(
    world: World, client: Client, calls: Iterable[tuple[str, Message]], code: grpc.StatusCode
) -> list[str]:
    """Make every call; what did not fail with ``code`` (or echoed a credential)."""
    wrong: list[str] = []
    for method, request in calls:
        try:
            invoke(client, method, request)
        except grpc.RpcError as error:
            if error.code() != code or not error.details():
                wrong.append(f"{method}: {error.code().name} {error.details()}")
            world.check_not_leaked(f"{method}'s status message", error.details() or "")
        else:
            wrong.append(f"{method}: succeeded")
    return wrong


# Missing and bad keys


def test_a_call_without_a_key_is_unauthenticated(world: World) -> None:
    before = snapshot(world.server)
    assert refusals(world, world.connect(None), empty_requests(), UNAUTHENTICATED) == []
    assert snapshot(world.server) == before


def _malformed(token: str) -> dict[str, str]:
    """Bad ``authorization`` values, built around a real key's ``token``; by what is wrong."""
    prefix, secret = token.split("_", 2)[1:]
    return {
        "basic scheme": f"Basic {secrets.token_urlsafe(24)}",
        "scheme only": "Bearer",
        "garbage": f"Bearer garbage-{secrets.token_urlsafe(24)}",
        "wrong token prefix": f"Bearer sk_{prefix}_{secret}",
        "no secret": f"Bearer stk_{prefix}_",
        "short lookup prefix": f"Bearer stk_{prefix[:6]}_{secret}",
        "unknown lookup prefix": f"Bearer stk_{secrets.token_hex(5)}_{secret}",
        "key without scheme": token,
    }


@pytest.fixture(scope="module")
def idle_key(world: World) -> Key:
    """A real writer key that is never used: bad keys are built from its prefix and secret."""
    created = world.cli(
        "keys", "create", "--tenant", world.tenant, database_url=world.server.database_url
    )
    key = Key(created.stdout.strip())
    world.sent.append(key.token)
    return key


@pytest.mark.parametrize("what", sorted(_malformed("stk_0123456789_x")))
def test_a_malformed_or_unknown_key_is_unauthenticated(
    world: World, idle_key: Key, what: str
) -> None:
    before = snapshot(world.server)
    client = world.connect(_malformed(idle_key.token)[what])
    assert refusals(world, client, empty_requests(), UNAUTHENTICATED) == []
    assert snapshot(world.server) == before, "a refused call changed the database"


def test_the_wrong_secret_for_an_existing_key_is_unauthenticated(
    world: World, idle_key: Key
) -> None:
    before = snapshot(world.server)
    forged = Key(f"stk_{idle_key.prefix}_{secrets.token_urlsafe(32)}")
    assert forged.prefix == idle_key.prefix and len(forged.token) == len(idle_key.token)
    client = world.connect(f"Bearer {forged.token}")
    assert refusals(world, client, empty_requests(), UNAUTHENTICATED) == []
    # Not even the key's last use is stamped.
    assert snapshot(world.server) == before

    # Whether a prefix exists is not revealed: the answer is the one for an unknown prefix.
    def refusal(token: str) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            world.connect(f"Bearer {token}").agents.ListAgents(agents_pb2.ListAgentsRequest())
        return info.value.code(), info.value.details() or ""

    unknown = Key(f"stk_{secrets.token_hex(5)}_{forged.secret}")
    assert refusal(forged.token) == refusal(unknown.token)


def test_a_revoked_key_is_unauthenticated_at_once(world: World) -> None:
    key, other = world.key("writer"), world.key("writer")
    client = world.as_key(key)
    create_objects(client)
    output = world.simtrack("keys", "revoke", key.prefix)
    assert f"key {key.prefix} revoked at" in output
    before = snapshot(world.server)
    assert refusals(world, client, empty_requests(), UNAUTHENTICATED) == []
    assert snapshot(world.server) == before
    # The tenant's other keys still work.
    world.as_key(other).agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)


# Roles


def test_a_reader_may_read_everything_and_write_nothing(world: World) -> None:
    writer, reader = world.as_key(world.key("writer")), world.as_key(world.key("reader"))
    objects = create_objects(writer)
    for method, request in read_requests(objects).items():
        assert invoke(reader, method, request) == invoke(writer, method, request), method
    before = snapshot(world.server, keys=False)
    wrong = refusals(world, reader, write_requests(objects), PERMISSION_DENIED)
    assert wrong == []
    assert snapshot(world.server, keys=False) == before, "a reader changed the database"
    # The refusal says why.
    with pytest.raises(grpc.RpcError) as info:
        reader.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=objects.spare_agent.id))
    assert "reader" in (info.value.details() or ""), info.value.details()


@pytest.mark.parametrize("role", ["writer", "admin"])
def test_writers_and_admins_may_write(world: World, role: str) -> None:
    client = world.as_key(world.key(role))
    objects = create_objects(client)
    for method, request in write_requests(objects):
        invoke(client, method, request)
    for method, request in read_requests(create_objects(client)).items():
        invoke(client, method, request)


# Operators' view of keys


def test_keys_list_shows_last_use_and_revocation_but_never_a_token(world: World) -> None:
    tenant = unique("keys-list")
    tenant_id = world.simtrack("tenants", "create", tenant).strip()
    result = world.cli(
        "keys",
        "create",
        "--tenant",
        tenant,
        "--role",
        "reader",
        database_url=world.server.database_url,
    )
    key = Key(result.stdout.strip())
    world.sent.append(key.token)

    def listed() -> dict[str, str]:
        rows = table_rows(world.simtrack("keys", "list", "--tenant", tenant))
        assert len(rows) == 1, rows
        columns = ["prefix", "tenant", "role", "name", "created", "last used", "revoked"]
        return dict(zip(columns, rows[0], strict=True))

    fresh = listed()
    assert fresh["prefix"] == key.prefix and fresh["tenant"] == tenant_id
    assert fresh["role"] == "reader" and fresh["last used"] == "-" and fresh["revoked"] == "-"

    world.as_key(key).scenarios.ListScenarios(scenarios_pb2.ListScenariosRequest())
    used = listed()
    assert used["last used"] != "-" and used["last used"] >= fresh["created"], used
    assert used["revoked"] == "-"

    world.simtrack("keys", "revoke", key.prefix)
    revoked = listed()
    assert revoked["revoked"] != "-" and revoked["revoked"] >= used["last used"], revoked
    # Every key of every tenant, without --tenant: still no token.
    assert key.prefix in world.simtrack("keys", "list")


def test_last_use_is_stamped_at_most_once_a_minute(world: World) -> None:
    """Every call re-checks the key here (cache 0s); its row is still written once a minute."""
    key = world.key("reader")  # its first use stamps it

    def key_row() -> tuple[Any, ...]:
        (row,) = [row for row in snapshot(world.server)["api_keys"] if key.prefix in row]
        return row

    stamped = key_row()
    client = world.as_key(key)
    for _ in range(3):
        client.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)
    assert key_row() == stamped, "the key's row was written again within the minute"


# Health, reflection; and last of all, the log


def test_health_and_reflection_need_no_key(world: World) -> None:
    server = world.server  # its own channel sends no key
    assert server.health_status("") == SERVING

    def serving(service: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return server.health_status(service) == SERVING
            except grpc.RpcError as exc:  # NOT_FOUND until the first database probe
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
                return False

        return check

    for service in SERVICES.values():
        wait_for(serving(service.full_name), what=f"{service.full_name} to report SERVING")
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="simtrack.v1.AgentService"),
    ]
    responses = list(server.reflection.ServerReflectionInfo(iter(requests), timeout=TIMEOUT))
    names = {s.name for s in responses[0].list_services_response.service}
    assert names >= {s.full_name for s in SERVICES.values()} | {"grpc.health.v1.Health"}
    assert responses[1].file_descriptor_response.file_descriptor_proto


def test_the_server_log_never_holds_a_key(world: World) -> None:
    """Runs last on the shared server: stops it and reads everything it logged."""
    # Two more first uses of keys: the module's other tests may have run elsewhere (another
    # pytest-xdist worker, which has its own server) or been deselected.
    world.key("admin")
    world.key("reader")
    assert len(world.sent) >= 2
    assert world.server.stop() == 0
    log = world.server.stderr
    assert "simtrack serving on" in log and "shutting down" in log
    world.check_not_leaked("the server log", log)
    world.server.check_clean()
