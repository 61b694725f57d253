"""Test databases: which backends the tests run on, throwaway PostgreSQL databases, the app role.

PostgreSQL is reached as ``SIMTRACK_TEST_POSTGRES_URL`` (default: the local server's ``test``
database as ``postgres``, trust auth); every test database is a copy of a migrated template.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Connection, NullPool, make_url
from sqlalchemy import create_engine as create_sync_engine

# The non-superuser role the server connects as, so row-level security applies to it.
APP_ROLE = "simtrack_app"
POSTGRES_ADMIN_URL = os.environ.get(
    "SIMTRACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# The parameters of the ``backend`` fixtures: every database test runs on both.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def as_app_role(url: str) -> str:
    """The same PostgreSQL database, reached as the application role (trust auth in tests)."""
    return make_url(url).set(username=APP_ROLE, password=None).render_as_string(False)


def admin_execute(admin_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


class PostgresDatabases:
    """Creates throwaway databases (optionally copies of a template) and drops them after."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self, template: str | None = None) -> str:
        """A new database (a copy of ``template``, which keeps its grants); its URL."""
        name = f"simtrack_test_{uuid.uuid4().hex[:12]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        admin_execute(self.admin_url, statement)
        self.created.append(name)
        return with_database(self.admin_url, name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            admin_execute(
                self.admin_url,
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
            )
        self.created.clear()


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A sync connection (pysqlite / psycopg) in a transaction that commits on success."""
    parsed = make_url(url)
    driver = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    engine = create_sync_engine(parsed.set(drivername=driver), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()
