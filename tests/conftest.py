"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests are real tests: with CI=true an unreachable server fails them; on a laptop
without PostgreSQL they skip and say why. Point SIMTRACK_TEST_POSTGRES_URL elsewhere if needed.
The helpers behind these fixtures (backends, throwaway PostgreSQL databases, the application
role) live in tests/support/databases.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from simtrack.server.core.tenancy import LOCAL_PRINCIPAL, reset_principal, set_principal
from simtrack.server.db import migrate
from tests.support import (
    APP_ROLE,
    BACKENDS,
    POSTGRES_ADMIN_URL,
    PostgresDatabases,
    as_app_role,
)


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


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: str) -> Iterator[str]:
    """A database migrated to head once per session; tests get copies of it."""
    databases = PostgresDatabases(postgres_admin)
    try:
        url = databases.create()
        migrate.upgrade(url)
        try:  # copies of the template keep the grants
            migrate.grant_app_role(url, APP_ROLE)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            # Another test process (pytest -n) created the role first, on a new cluster.
            migrate.grant_app_role(url, APP_ROLE)
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
