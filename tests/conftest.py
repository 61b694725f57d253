"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests are real tests: with CI=true an unreachable server fails them; on a laptop
without PostgreSQL they skip and say why. Point SIMTRACK_TEST_POSTGRES_URL elsewhere if needed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from simtrack.server.core.tenancy import LOCAL_PRINCIPAL, reset_principal, set_principal
from simtrack.server.db import migrate

# The non-superuser role the server connects as, so row-level security applies to it.
APP_ROLE = "simtrack_app"
POSTGRES_ADMIN_URL = os.environ.get(
    "SIMTRACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def as_app_role(url: str) -> str:
    """The same database, reached as the application role (trust auth here)."""
    return make_url(url).set(username=APP_ROLE, password=None).render_as_string(False)


@pytest.fixture
def app_role_url(database_url: str) -> str:
    """This test's PostgreSQL database as the server's non-superuser role sees it."""
    return as_app_role(database_url)


@pytest.fixture(autouse=True)
def local_principal() -> Iterator[None]:
    """Tests that call the service layer directly act as the local (auth-disabled) caller."""
    token = set_principal(LOCAL_PRINCIPAL)
    yield
    reset_principal(token)


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The admin URL of a reachable PostgreSQL, or skip (fail under CI=true)."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


def _admin_execute(admin_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


class PostgresDatabases:
    """Creates throwaway databases (optionally copies of a template) and drops them after."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self, template: str | None = None) -> str:
        name = f"simtrack_test_{uuid.uuid4().hex[:12]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        _admin_execute(self.admin_url, statement)
        self.created.append(name)
        return _with_database(self.admin_url, name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            _admin_execute(
                self.admin_url,
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
            )
        self.created.clear()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: str) -> Iterator[str]:
    """A database migrated to head once per session; tests get copies of it."""
    databases = PostgresDatabases(postgres_admin)
    try:
        url = databases.create()
        migrate.upgrade(url)
        migrate.grant_app_role(url, APP_ROLE)  # copies of the template keep the grants
        yield url.rpartition("/")[2]
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "simtrack.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database a parametrized test runs on."""
    return str(request.param)


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A new, empty database of this test's own."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'simtrack.db'}"
        return
    databases = PostgresDatabases(request.getfixturevalue("postgres_admin"))
    try:
        yield databases.create()
    finally:
        databases.drop_all()


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database of this test's own, migrated to head."""
    if backend == "sqlite":
        path = tmp_path / "simtrack.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    databases = PostgresDatabases(request.getfixturevalue("postgres_admin"))
    try:
        yield databases.create(template=request.getfixturevalue("postgres_template"))
    finally:
        databases.drop_all()
