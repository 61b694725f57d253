"""Running Alembic from simtrack: upgrade, and the check the server does before it serves."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from simtrack.server.db.engine import libpq_conninfo
from simtrack.server.db.models import TENANT_OWNED_TABLES

_HERE = Path(__file__).resolve().parent
# A wheel carries the migrations inside the package; a source checkout has them at the top.
_CANDIDATES = (_HERE / "migrations", _HERE.parents[3] / "alembic")


def script_location() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("simtrack's migrations are missing from this installation")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` (blocking: call it outside the event loop)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory(str(script_location())).get_current_head()
    assert head is not None, "no migrations found"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def grant_app_role(url: str, role: str, password: str | None = None) -> None:
    """Create (if needed) the server's login role on PostgreSQL and grant it what it needs.

    Run by an operator with the database owner's URL, after upgrading. The role is not a
    superuser and cannot bypass row-level security; it may read and write the tenant-owned
    tables, read tenants and keys, and only stamp a key's last use (it cannot mint keys).
    """
    target = make_url(url)
    if target.get_backend_name() != "postgresql":
        raise ValueError("an application role only exists on PostgreSQL")
    conninfo = libpq_conninfo(target)
    name = sql.Identifier(role)
    with psycopg.connect(conninfo) as connection:  # one transaction, committed on exit
        exists = connection.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(name))
        if password is not None:
            connection.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password))
            )
        owned = sql.SQL(", ").join(sql.Identifier(t) for t in TENANT_OWNED_TABLES)
        for statement in (
            "GRANT CONNECT ON DATABASE {database} TO {role}",
            "GRANT USAGE ON SCHEMA public TO {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {owned} TO {role}",
            "GRANT SELECT ON tenants, alembic_version TO {role}",
            "GRANT SELECT, UPDATE (last_used_at) ON api_keys TO {role}",
        ):
            connection.execute(
                sql.SQL(statement).format(
                    database=sql.Identifier(connection.info.dbname), role=name, owned=owned
                )
            )
