"""Alembic migrations on SQLite and PostgreSQL: up from empty, check, down to base, up again.

Alembic runs synchronously here (its env.py drives the async engine with ``asyncio.run``), so
these tests are plain functions; the database is inspected through a short-lived sync engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.util.exc import CommandError
from sqlalchemy import Connection, DateTime, bindparam, inspect, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from alembic import command
from simtrack.server.app import StartupError, prepare_database
from simtrack.server.config import Settings
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import migrate
from simtrack.server.db.engine import create_engine
from simtrack.server.db.models import TENANT_OWNED_TABLES, Base

APP_TABLES = frozenset(Base.metadata.tables)
ON_DELETE = {
    ("experiments", "agent_id"): "RESTRICT",
    ("simulations", "experiment_id"): "SET NULL",
    ("runs", "experiment_id"): "CASCADE",
    ("run_participants", "run_id"): "CASCADE",
    ("run_participants", "agent_id"): "RESTRICT",
    ("api_keys", "tenant_id"): "CASCADE",
    ("metrics", "run_id"): "CASCADE",
    ("metric_chunks", "metric_id"): "CASCADE",
    ("metric_chunks", "run_id"): "CASCADE",
    ("events", "run_id"): "CASCADE",
    ("validations", "run_id"): "CASCADE",
    ("artifacts", "run_id"): "CASCADE",
    **{(table, "tenant_id"): "RESTRICT" for table in TENANT_OWNED_TABLES},
}
PRE_TENANCY_REVISION = "26280ff863b1"
PRE_PAUSE_REVISION = "de713ea7d47d"
POSTGRES_ONLY = [pytest.param("postgresql", marks=pytest.mark.postgres)]


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


def table_names(url: str) -> set[str]:
    with connect(url) as connection:
        return set(inspect(connection).get_table_names())


def stamped_revisions(url: str) -> list[str]:
    with connect(url) as connection:
        return [
            row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))
        ]


def test_upgrade_from_empty_creates_the_schema(empty_database_url: str) -> None:
    assert table_names(empty_database_url) == set()
    migrate.upgrade(empty_database_url)
    assert table_names(empty_database_url) == APP_TABLES | {"alembic_version"}
    assert APP_TABLES >= {
        "agents",
        "templates",
        "experiments",
        "simulations",
        "runs",
        "run_participants",
    }
    assert stamped_revisions(empty_database_url) == [migrate.head_revision()]

    with connect(empty_database_url) as connection:
        inspector = inspect(connection)
        rules: dict[tuple[str, str], str] = {}
        for table in ON_DELETE:
            for fk in inspector.get_foreign_keys(table[0]):
                rule = str(fk["options"].get("ondelete") or "NO ACTION").upper()
                rules[(table[0], fk["constrained_columns"][0])] = rule
        uniques = {
            (table, tuple(u["column_names"]))
            for table in ("agents", "templates", "runs", "run_participants")
            for u in inspector.get_unique_constraints(table)
        }
        indexed = {
            (table, tuple(ix["column_names"]))
            for table in APP_TABLES
            for ix in inspector.get_indexes(table)
        }
        # A primary key's leading column is indexed by the key itself.
        indexed |= {
            (table, tuple(inspector.get_pk_constraint(table)["constrained_columns"][:1]))
            for table in APP_TABLES
        }
    assert rules == ON_DELETE
    assert uniques >= {
        ("agents", ("tenant_id", "name")),
        ("templates", ("tenant_id", "name")),
        ("runs", ("experiment_id", "run_number")),
        ("run_participants", ("run_id", "agent_id")),
    }
    # Every foreign key and every status column is the leading column of an index.
    for table_name, column in [*ON_DELETE, ("experiments", "status"), ("runs", "status")]:
        assert (table_name, (column,)) in indexed, (table_name, column)


def test_alembic_check_reports_no_drift(empty_database_url: str) -> None:
    config = migrate.alembic_config(empty_database_url)
    # On a database behind head the check refuses: it really looks at the database.
    with pytest.raises(CommandError):
        command.check(config)
    migrate.upgrade(empty_database_url)
    command.check(config)  # raises AutogenerateDiffsDetected on any model/migration drift


def test_downgrade_to_base_and_upgrade_again(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.downgrade(empty_database_url, "base")
    assert table_names(empty_database_url) == {"alembic_version"}
    assert stamped_revisions(empty_database_url) == []

    migrate.upgrade(empty_database_url)
    assert table_names(empty_database_url) == APP_TABLES | {"alembic_version"}
    assert stamped_revisions(empty_database_url) == [migrate.head_revision()]
    command.check(migrate.alembic_config(empty_database_url))


def test_data_survives_a_repeated_upgrade(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    agent_id = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat()
    with connect(empty_database_url) as connection:
        connection.execute(
            text(
                "INSERT INTO agents (tenant_id, id, name, framework, created_at, updated_at) "
                "VALUES (:tenant, :id, 'survivor', 'baseline', :now, :now)"
            ),
            {"id": agent_id, "now": now, "tenant": DEFAULT_TENANT_ID},
        )
    migrate.upgrade(empty_database_url)  # already at head: nothing to do, nothing lost
    with connect(empty_database_url) as connection:
        rows = connection.execute(text("SELECT id, name FROM agents")).all()
    assert [tuple(r) for r in rows] == [(agent_id, "survivor")]
    assert stamped_revisions(empty_database_url) == [migrate.head_revision()]


@pytest.mark.parametrize("backend", POSTGRES_ONLY)
async def test_server_refuses_an_unmigrated_postgres(empty_database_url: str) -> None:
    settings = Settings(database_url=empty_database_url)
    engine = create_engine(settings.database_url)
    try:
        with pytest.raises(StartupError, match="simtrack migrate") as excinfo:
            await prepare_database(settings, engine)
    finally:
        await engine.dispose()
    assert "empty database" in str(excinfo.value)
    # Refusing means not touching: the database is still empty.
    assert await asyncio.to_thread(table_names, empty_database_url) == set()


@pytest.mark.parametrize("backend", POSTGRES_ONLY)
async def test_server_starts_on_a_migrated_postgres(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    engine = create_engine(settings.database_url)
    try:
        await prepare_database(settings, engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_server_reports_an_unreachable_postgres(postgres_admin: str) -> None:
    url = f"{postgres_admin.rpartition('/')[0]}/simtrack_no_such_database_{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=url)
    engine = create_engine(settings.database_url)
    try:
        with pytest.raises(StartupError, match="cannot reach the database"):
            await prepare_database(settings, engine)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_server_migrates_an_empty_sqlite_file(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=empty_database_url)
    engine = create_engine(settings.database_url)
    try:
        assert await migrate.current_revision(engine) is None
        await prepare_database(settings, engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        await prepare_database(settings, engine)  # a restart on a migrated file is a no-op
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
    assert (tmp_path / "simtrack.db").is_file()
    assert await asyncio.to_thread(table_names, empty_database_url) == APP_TABLES | {
        "alembic_version"
    }


def test_postgres_engine_for_migrations_accepts_a_null_pool() -> None:
    """What alembic/env.py does on every PostgreSQL upgrade (regression: aec99e4).

    Building the engine needs no server, so this fails fast even where PostgreSQL is absent.
    """
    engine = create_engine(
        "postgresql://postgres@127.0.0.1:5432/test", poolclass=NullPool, sqlite_foreign_keys=False
    )
    assert isinstance(engine.sync_engine.pool, NullPool)


def test_existing_rows_move_to_the_default_tenant(empty_database_url: str) -> None:
    """Upgrading a database from before tenancy keeps its rows, now owned by `default`."""
    migrate.upgrade(empty_database_url, PRE_TENANCY_REVISION)
    agent_id = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat()
    with connect(empty_database_url) as connection:
        connection.execute(
            text(
                "INSERT INTO agents (id, name, framework, config, created_at, updated_at) "
                "VALUES (:id, 'old-timer', 'custom', '{}', :now, :now)"
            ),
            {"id": agent_id, "now": now},
        )
    migrate.upgrade(empty_database_url)
    with connect(empty_database_url) as connection:
        rows = connection.execute(text("SELECT id, tenant_id FROM agents")).all()
        tenants = connection.execute(text("SELECT id, name FROM tenants")).all()
    assert [tuple(r) for r in rows] == [(agent_id, DEFAULT_TENANT_ID)]
    assert [tuple(t) for t in tenants] == [(DEFAULT_TENANT_ID, "default")]
    command.check(migrate.alembic_config(empty_database_url))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
OLD_EVENT_TIMES = [
    datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    EPOCH,
    datetime(1677, 9, 21, 0, 12, 44, 1, tzinfo=UTC),  # just inside int64 nanoseconds
    datetime(2262, 4, 11, 23, 47, 15, 999999, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),  # outside: clamped to the ends
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]
KEPT = 5  # the times above that int64 nanoseconds hold


def nanos(when: datetime) -> int:
    exact = (when - EPOCH) // timedelta(microseconds=1) * 1000
    return min(max(exact, INT64_MIN), INT64_MAX)


def insert_run_with_events(connection: Connection, times: list[datetime]) -> str:
    """An agent, experiment and running run as the pre-pause schema has them, with events."""
    agent_id, experiment_id, run_id = (str(uuid.uuid4()) for _ in range(3))
    now = bindparam("now", type_=DateTime(timezone=True))
    at = bindparam("at", type_=DateTime(timezone=True))
    values = {"tenant": DEFAULT_TENANT_ID, "now": datetime.now(UTC)}
    statements = [
        "INSERT INTO agents (tenant_id, id, name, framework, created_at, updated_at) "
        "VALUES (:tenant, :agent, 'a', 'baseline', :now, :now)",
        "INSERT INTO experiments (tenant_id, id, name, description, agent_id, scenario_id, "
        "hypothesis, status, created_at, updated_at) "
        "VALUES (:tenant, :experiment, 'e', '', :agent, 's', '', 'running', :now, :now)",
        "INSERT INTO runs (tenant_id, id, experiment_id, run_number, scenario_id, "
        "scenario_hash, status, current_tick, total_ticks, progress_percent, error_message, "
        "worker_id, created_at, updated_at) VALUES (:tenant, :run, :experiment, 1, 's', 'h', "
        "'running', 0, 0, 0, '', '', :now, :now)",
    ]
    ids = {"agent": agent_id, "experiment": experiment_id, "run": run_id}
    for statement in statements:
        connection.execute(text(statement).bindparams(now), {**values, **ids})
    for position, when in enumerate(times):
        connection.execute(
            text(
                "INSERT INTO events (run_id, seq, position, tenant_id, step, time, type) "
                "VALUES (:run, 1, :position, :tenant, :position, :at, 'tick')"
            ).bindparams(at),
            {**values, "run": run_id, "position": position, "at": when},
        )
    return run_id


def test_pause_and_nanosecond_event_times_migrate_up_and_down_keeping_data(
    empty_database_url: str,
) -> None:
    """Event times convert exactly to int64 nanoseconds (clamped where they cannot be held)
    and back to microseconds; a paused run is running again after a downgrade.
    """
    url = empty_database_url
    migrate.upgrade(url, PRE_PAUSE_REVISION)
    with connect(url) as connection:
        run_id = insert_run_with_events(connection, OLD_EVENT_TIMES)
    migrate.upgrade(url)
    command.check(migrate.alembic_config(url))
    with connect(url) as connection:
        stored = connection.execute(text("SELECT time_ns FROM events ORDER BY position")).all()
        assert [row[0] for row in stored] == [nanos(t) for t in OLD_EVENT_TIMES]
        assert nanos(OLD_EVENT_TIMES[-1]) == INT64_MAX
        connection.execute(text("UPDATE runs SET status = 'paused' WHERE id = :id"), {"id": run_id})
        connection.execute(
            text("UPDATE events SET time_ns = time_ns + 999 WHERE step < :n"), {"n": KEPT}
        )

    migrate.downgrade(url, PRE_PAUSE_REVISION)
    with connect(url) as connection:
        times = connection.execute(
            text("SELECT time FROM events ORDER BY position").columns(time=DateTime(timezone=True))
        ).all()
        back = [t if t.tzinfo else t.replace(tzinfo=UTC) for (t,) in times]
        assert back[:KEPT] == OLD_EVENT_TIMES[:KEPT], "the microseconds are kept"
        status = connection.execute(text("SELECT status FROM runs WHERE id = :id"), {"id": run_id})
        assert status.scalar() == "running"
    with pytest.raises(IntegrityError), connect(url) as connection:
        connection.execute(text("UPDATE runs SET status = 'paused'"))
    migrate.upgrade(url)
    command.check(migrate.alembic_config(url))
