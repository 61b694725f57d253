"""PostgreSQL's row-level security is a second wall behind the repositories' tenant filter.

The server connects as a role that cannot bypass RLS; these tests connect the same way, then
switch the repository filter off and check that PostgreSQL alone still keeps tenants apart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from simtrack.errors import NotFound
from simtrack.server.app import StartupError, check_row_level_security
from simtrack.server.core.tenancy import Principal, Role, reset_principal, set_principal
from simtrack.server.db import repositories
from simtrack.server.db.engine import create_engine, libpq_conninfo
from simtrack.server.db.models import TENANT_OWNED_TABLES, Run, Tenant
from simtrack.server.db.pg_reads import PreparedConnection, ReadConnection, ReadConnections
from simtrack.server.db.reads import PREPARED, versions
from tests.support import MakeServices, Services  # noqa: F401

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)

TENANT_A = "aaaaaaaa-0000-0000-0000-000000000001"
TENANT_B = "bbbbbbbb-0000-0000-0000-000000000002"


class acting_as:  # noqa: N801 - reads like a sentence at the call site
    """Run a block as a writer of ``tenant``."""

    def __init__(self, tenant: str) -> None:
        self.principal = Principal(tenant, Role.WRITER)

    def __enter__(self) -> None:
        self.token = set_principal(self.principal)

    def __exit__(self, *exc: object) -> None:
        reset_principal(self.token)


@pytest.fixture
async def two_tenants(
    make_services: MakeServices, app_role_url: str
) -> tuple[Services, dict[str, str]]:
    """Tenants A and B with one agent each, written as the owner; then services as the app role."""
    owner = make_services()
    async with owner.uow() as uow:
        for tenant_id, name in ((TENANT_A, "a"), (TENANT_B, "b")):
            await uow.access.add(Tenant(id=tenant_id, name=name))
        await uow.commit()
    agents = {}
    for tenant_id in (TENANT_A, TENANT_B):
        with acting_as(tenant_id):
            agents[tenant_id] = (await owner.agent(f"agent-of-{tenant_id[:1]}")).id
    return make_services(url=app_role_url), agents


@pytest.fixture
def repository_filter_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Simulate a bug in the repositories: their tenant filter keeps every row."""
    monkeypatch.setattr(repositories, "scoped", lambda model: sqlalchemy.true())
    yield


@pytest.mark.usefixtures("repository_filter_off")
async def test_rls_hides_other_tenants_rows_without_the_repository_filter(
    two_tenants: tuple[Services, dict[str, str]],
) -> None:
    app, agents = two_tenants
    with acting_as(TENANT_A):
        listed = await app.agents.list(0, "", "")
        assert [a.id for a in listed.items] == [agents[TENANT_A]]
        with pytest.raises(NotFound):
            await app.agents.get(agents[TENANT_B])
    with acting_as(TENANT_B):
        assert [a.id for a in (await app.agents.list(0, "", "")).items] == [agents[TENANT_B]]


@pytest.mark.usefixtures("repository_filter_off")
async def test_rls_refuses_a_cross_tenant_insert_and_update(
    two_tenants: tuple[Services, dict[str, str]],
) -> None:
    app, agents = two_tenants
    with acting_as(TENANT_A):
        async with app.uow() as uow:
            with pytest.raises(DBAPIError, match="row-level security"):
                await uow.session.execute(
                    text(
                        "INSERT INTO agents (tenant_id, id, name, framework, config, "
                        "created_at, updated_at) VALUES (:t, gen_random_uuid()::text, 'x', "
                        "'custom', '{}', now(), now())"
                    ),
                    {"t": TENANT_B},
                )
        async with app.uow() as uow:
            # B's row is invisible to A's transaction: the update touches nothing.
            result = await uow.session.execute(
                text("UPDATE agents SET name = 'stolen' WHERE id = :id"), {"id": agents[TENANT_B]}
            )
            assert result.rowcount == 0  # type: ignore[attr-defined]
            await uow.commit()
    with acting_as(TENANT_B):
        assert (await app.agents.get(agents[TENANT_B])).name == "agent-of-b"


async def test_without_a_tenant_the_app_role_sees_nothing(
    two_tenants: tuple[Services, dict[str, str]],
) -> None:
    app, _ = two_tenants
    async with app.engine.connect() as connection:  # no principal: app.tenant_id never set
        for table in TENANT_OWNED_TABLES:
            count = (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
            assert count == 0, table
        tenants = (await connection.execute(text("SELECT count(*) FROM tenants"))).scalar_one()
        assert tenants >= 2


async def test_the_app_role_cannot_mint_keys_or_bypass_rls(
    two_tenants: tuple[Services, dict[str, str]],
) -> None:
    app, _ = two_tenants
    async with app.engine.connect() as connection:
        with pytest.raises(DBAPIError, match="permission denied"):
            await connection.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_hash, "
                    "created_at, updated_at) VALUES ('k', :t, '', 'admin', 'p', 'h', now(), now())"
                ),
                {"t": TENANT_A},
            )
    await check_row_level_security(app.engine)  # the app role passes the start-up check


async def test_server_refuses_auth_as_a_role_that_bypasses_rls(database_url: str) -> None:
    engine = create_engine(database_url)  # the superuser the tests administer with
    try:
        with pytest.raises(StartupError, match="simtrack_app"):
            await check_row_level_security(engine)
    finally:
        await engine.dispose()


async def _run_of_each_tenant(app: Services, agents: dict[str, str]) -> dict[str, str]:
    runs = {}
    for tenant in (TENANT_A, TENANT_B):
        with acting_as(tenant):
            experiment = await app.experiment(agents[tenant])
            runs[tenant] = (await app.run(experiment.id)).id
    return runs


async def test_a_read_connection_sees_only_the_tenant_it_was_last_told(
    two_tenants: tuple[Services, dict[str, str]],
) -> None:
    """The reads' connections keep the tenant in their session (db/reads.py): a statement with
    no tenant filter of its own sees that tenant's rows alone, whoever read before.
    """
    app, agents = two_tenants
    runs = await _run_of_each_tenant(app, agents)
    # One connection for all
    connections = ReadConnections(libpq_conninfo(app.url), ReadConnection.connect, size=1)
    try:
        for tenant in (TENANT_A, TENANT_B, TENANT_B, TENANT_A, TENANT_A, TENANT_B):
            async with connections.connection() as read:
                rows, _ = await read.rows(tenant, "SELECT id FROM runs", None)
            assert [row[0] for row in rows] == [runs[tenant]], tenant
        # A statement that fails takes the tenant it was told with down with it.
        async with connections.connection() as read:
            with pytest.raises(psycopg.errors.DivisionByZero):
                await read.rows(TENANT_A, "SELECT 1 / 0", None)
            assert read.tenant is None
        for tenant in (TENANT_B, TENANT_B):
            async with connections.connection() as read:
                rows, _ = await read.rows(tenant, "SELECT id FROM runs", None)
            assert [row[0] for row in rows] == [runs[tenant]], tenant
    finally:
        await connections.close()


def _end_the_app_roles_connections(database_url: str) -> None:
    """As a restart of the database would (the server connects as the app role)."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND usename <> current_user"
        ).fetchall()
    assert ended


async def test_a_read_whose_connection_was_terminated_is_retried_on_a_new_one(
    two_tenants: tuple[Services, dict[str, str]], database_url: str
) -> None:
    app, agents = two_tenants
    runs = await _run_of_each_tenant(app, agents)
    with acting_as(TENANT_A):
        assert (await app.runs.get(runs[TENANT_A])).id == runs[TENANT_A]
        _end_the_app_roles_connections(database_url)
        assert (await app.runs.get(runs[TENANT_A])).id == runs[TENANT_A]
        with pytest.raises(NotFound):
            await app.runs.get(runs[TENANT_B])


# GetRun's versions (``pg_reads.PreparedConnection``: libpq's own calls on connections of their
# own)


@dataclass
class Versions:
    runs: dict[str, str]  # tenant -> its run
    connections: ReadConnections[PreparedConnection]  # one connection for all


@pytest.fixture
async def versions_of_two_tenants(
    two_tenants: tuple[Services, dict[str, str]],
) -> AsyncIterator[Versions]:
    app, agents = two_tenants
    runs = await _run_of_each_tenant(app, agents)
    opener = PreparedConnection.opener(PREPARED)
    connections = ReadConnections(libpq_conninfo(app.url), opener, size=1)
    try:
        yield Versions(runs, connections)
    finally:
        await connections.close()


async def test_a_version_connection_sees_only_the_tenant_it_was_last_told_and_each_change(
    versions_of_two_tenants: Versions, database_url: str
) -> None:
    runs, connections = versions_of_two_tenants.runs, versions_of_two_tenants.connections
    both = list(runs.values())
    seen: dict[str, int] = {}
    for tenant in (TENANT_A, TENANT_B, TENANT_B, TENANT_A):
        async with connections.connection() as prepared:
            found = await versions(prepared, tenant, both)
            alone = {run: await versions(prepared, tenant, [run]) for run in both}  # one id
        assert list(found) == [runs[tenant]], tenant
        assert alone == {run: found if run in found else {} for run in both}, tenant
        seen[tenant] = found[runs[tenant]]
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("UPDATE runs SET worker_id = 'moved' WHERE id = %s", (runs[TENANT_A],))
    async with connections.connection() as prepared:
        moved = await versions(prepared, TENANT_A, both)
        assert moved[runs[TENANT_A]] != seen[TENANT_A]
        assert await versions(prepared, TENANT_B, both) == {runs[TENANT_B]: seen[TENANT_B]}


async def test_a_version_statement_that_fails_leaves_its_connection_answering(
    versions_of_two_tenants: Versions,
) -> None:
    runs, connections = versions_of_two_tenants.runs, versions_of_two_tenants.connections
    async with connections.connection() as prepared:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            await versions(prepared, TENANT_A, ['{"not an id', runs[TENANT_A]])  # no array
        assert not prepared.broken
        assert list(await versions(prepared, TENANT_A, [runs[TENANT_A]])) == [runs[TENANT_A]]


async def test_a_long_list_of_ids_is_sent_in_full(versions_of_two_tenants: Versions) -> None:
    """More than a socket's buffer (40,000 ids, 1.5 MB): sent as the socket takes it."""
    runs, connections = versions_of_two_tenants.runs, versions_of_two_tenants.connections
    ids = [str(uuid.UUID(int=i)) for i in range(40_000)] + [runs[TENANT_B]]
    async with connections.connection() as prepared:
        assert list(await versions(prepared, TENANT_B, ids)) == [runs[TENANT_B]]


async def test_a_version_statement_cancelled_half_way_gives_its_connection_up(
    versions_of_two_tenants: Versions, database_url: str
) -> None:
    runs, connections = versions_of_two_tenants.runs, versions_of_two_tenants.connections
    async with connections.connection() as prepared:  # opened (its statements prepared)
        assert list(await versions(prepared, TENANT_A, [runs[TENANT_A]])) == [runs[TENANT_A]]
    with psycopg.connect(database_url) as admin:
        admin.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")  # the statement waits
        async with connections.connection() as prepared:
            asking = asyncio.create_task(versions(prepared, TENANT_A, [runs[TENANT_A]]))
            await asyncio.sleep(0.2)
            assert not asking.done()
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking
            assert prepared.broken  # its answer would still come: given up, closed
        admin.rollback()
    async with connections.connection() as fresh:
        assert fresh is not prepared and prepared.connection.closed
        assert list(await versions(fresh, TENANT_A, [runs[TENANT_A]])) == [runs[TENANT_A]]


def _run_id(run: Run) -> str:  # GetRun's rendering, as the reads are given it
    return run.id


async def test_getrun_answers_again_once_its_version_connection_was_terminated(
    two_tenants: tuple[Services, dict[str, str]], database_url: str
) -> None:
    app, agents = two_tenants
    runs = await _run_of_each_tenant(app, agents)
    with acting_as(TENANT_A):
        assert await app.reads.rendered(runs[TENANT_A], _run_id) == runs[TENANT_A]
        _end_the_app_roles_connections(database_url)
        await asyncio.sleep(0.1)  # the reader sees the connection go
        assert await app.reads.rendered(runs[TENANT_A], _run_id) == runs[TENANT_A]
        assert await app.reads.rendered(runs[TENANT_B], _run_id) is None
