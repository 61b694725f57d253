"""Upgrading a database that holds data, from every revision, on SQLite and PostgreSQL.

For each revision: migrate an empty database to it, put a row in every table it has (the rows
are written through the reflected schema of that revision, so they fit it), upgrade to head and
check that every row is still there with its values, and that every column added since holds
its default or its backfill; then downgrade to the revision again and check the rows survive.

A new table without a row below, or a new column without its expected value at head, fails the
test: a migration's data handling is part of what it must declare.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, select

from alembic import command
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import migrate
from tests.support import connect


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory(str(migrate.script_location()))
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


OTHER_TENANT = "11111111-0000-0000-0000-000000000001"
AGENT, TEMPLATE, EXPERIMENT = "a0000000-0000-0000-0000-000000000001", "t1", "e1"
SIMULATION, RUN, PARTICIPANT = "s1", "r0000000-0000-0000-0000-000000000001", "p1"
METRIC, VALIDATION, ARTIFACT, KEY = "m1", "v1", "f1", "k1"
CREATED = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)
COMPLETED = datetime(2026, 11, 1, 13, 0, 0, 654321, tzinfo=UTC)
EVENT_TIME = datetime(2026, 11, 1, 12, 30, 15, 250001, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK_TIME = 1_790_000_000.25  # the one timestamp of the chunk's two points


def nanos(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1) * 1000


# One row per table, with the union of its columns over all revisions: each revision's insert
# keeps the columns its schema has. Key: the column(s) that find the row again.
ROWS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "tenants": (("id",), {"id": OTHER_TENANT, "name": "other"}),
    "api_keys": (
        ("id",),
        {
            "id": KEY, "tenant_id": OTHER_TENANT, "name": "ops", "role": "writer",
            "prefix": "abcdefghij", "secret_hash": "0" * 64,
        },
    ),
    "agents": (
        ("id",), {"id": AGENT, "name": "pricer", "framework": "custom", "config": {"k": 1}}
    ),
    "templates": (
        ("id",), {"id": TEMPLATE, "name": "tpl", "description": "d", "config": {"x": [1]}}
    ),
    "experiments": (
        ("id",),
        {
            "id": EXPERIMENT, "name": "exp", "description": "", "agent_id": AGENT,
            "scenario_id": "tier0-tutorial", "params": {"seed": 7}, "hypothesis": "h",
            "status": "running", "results_summary": {}, "last_run_number": 1,
        },
    ),
    "simulations": (
        ("id",),
        {
            "id": SIMULATION, "experiment_id": EXPERIMENT, "status": "running",
            "parameters": {"p": 1}, "metadata": {"m": "x"}, "results_summary": {},
            "started_at": CREATED,
        },
    ),
    "runs": (
        ("id",),
        {
            "id": RUN, "experiment_id": EXPERIMENT, "run_number": 1,
            "scenario_id": "tier0-tutorial", "scenario_hash": "h" * 64, "params": {"seed": 7},
            "status": "completed", "current_tick": 60, "total_ticks": 60,
            "progress_percent": 100.0, "started_at": CREATED, "completed_at": COMPLETED,
            "metrics_summary": {}, "results": {"profit": 3.5}, "error_message": "",
            "error_details": {}, "worker_id": "w1",
        },
    ),
    "run_participants": (
        ("id",),
        {"id": PARTICIPANT, "run_id": RUN, "agent_id": AGENT, "role": "seller",
         "config_override": {}},
    ),
    "metrics": (
        ("id",),
        {
            "id": METRIC, "run_id": RUN, "name": "profit", "unit": "usd", "kind": "gauge",
            "labels": {}, "count": 2, "last_step": 1, "last_value": 2.5, "min_value": 1.5,
            "max_value": 2.5,
        },
    ),
    "metric_chunks": (
        ("metric_id", "seq"),
        {
            "metric_id": METRIC, "seq": 1, "run_id": RUN, "first_step": 0, "last_step": 1,
            "n": 2, "vmin": 1.5, "vmax": 2.5, "steps": b"", "vals": struct.pack("<2d", 1.5, 2.5),
            "ts": struct.pack("<d", CHUNK_TIME),
        },
    ),
    "staged_messages": (
        ("run_id", "seq"),
        {"run_id": RUN, "seq": 2, "written_at": CREATED, "points": 2, "series": 1,
         "body": b"\x02m1"},
    ),
    "events": (
        ("run_id", "seq", "position"),
        {
            "run_id": RUN, "seq": 1, "position": 0, "step": 3, "time": EVENT_TIME,
            "time_ns": nanos(EVENT_TIME),
            "type": "trade", "agent_id": AGENT, "payload": {"qty": 2},
        },
    ),
    "validations": (
        ("id",),
        {"id": VALIDATION, "run_id": RUN, "validator": "ext", "kind": "k", "passed": True,
         "score": 0.5, "details": {}},
    ),
    "artifacts": (
        ("id",),
        {"id": ARTIFACT, "run_id": RUN, "name": "r.txt", "type": "report",
         "content_type": "text/plain", "size_bytes": 3, "sha256": "f" * 64},
    ),
}  # fmt: skip
# Written on every table that has them.
COMMON = {"created_at": CREATED, "updated_at": CREATED, "tenant_id": DEFAULT_TENANT_ID}


# What a column added after a revision holds at head for the rows above: its default, or the
# migration's backfill. Keyed by (table, column); "*" stands for any table.
ADDED: dict[tuple[str, str], Any] = {
    ("*", "tenant_id"): DEFAULT_TENANT_ID,  # rows from before tenancy: the default tenant
    ("runs", "committed_seq"): 0,
    ("runs", "last_seen_at"): None,
    ("runs", "cancel_requested_at"): None,
    # A run completed before criteria existed counts as checked: never judged after the fact.
    ("runs", "criteria_checked_at"): COMPLETED,
    ("runs", "cancel_reason"): "",
    ("runs", "vanished_at"): None,
    ("runs", "revived_at"): None,
    ("runs", "paused_at"): None,
    ("events", "time_ns"): nanos(EVENT_TIME),  # converted from the old ``time``
    # Backfilled from the chunk's columns (values 1.5 at step 0, 2.5 at step 1).
    ("metric_chunks", "vmin_step"): 0,
    ("metric_chunks", "vmax_step"): 1,
    ("metric_chunks", "vmin_ts"): CHUNK_TIME,
    ("metric_chunks", "vmax_ts"): CHUNK_TIME,
    # NULL arrival is "long settled".
    ("metric_chunks", "written_at"): None,
    # A chunk as ingest wrote it (raw) keeps its chunk summaries: no blocks.
    ("metric_chunks", "blocks"): None,
    # The run completed: its metric's summary (2.5 latest, 1.5 to 2.5) copied for ordering.
    ("metrics", "final_last"): 2.5,
    ("metrics", "final_min"): 1.5,
    ("metrics", "final_max"): 2.5,
}


def reflect(connection: Connection) -> dict[str, Table]:
    metadata = MetaData()
    metadata.reflect(connection)
    return {name: t for name, t in metadata.tables.items() if name != "alembic_version"}


def normal(value: Any) -> Any:
    """A read value comparable with what was written (SQLite: naive times, JSON as text)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def row_of(connection: Connection, table: Table, key: tuple[str, ...]) -> dict[str, Any]:
    values = ROWS[table.name][1]
    rows = (
        connection.execute(select(table).where(*(table.c[k] == values[k] for k in key)))
        .mappings()
        .all()
    )
    assert len(rows) == 1, f"{table.name}: {len(rows)} rows for the one written"
    return {name: normal(value) for name, value in rows[0].items()}


Written = dict[str, tuple[dict[str, Any], set[str]]]


def insert_rows(connection: Connection) -> Written:
    """A row in every table of the current schema; per table, what was written and the
    columns the table had.
    """
    tables = reflect(connection)
    missing = set(tables) - set(ROWS)
    assert not missing, f"tables without a row in {__name__}.ROWS: {sorted(missing)}"
    written: Written = {}
    for name in ROWS:  # in dependency order
        if name not in tables:
            continue
        table = tables[name]
        values = {**COMMON, **ROWS[name][1]}
        values = {k: v for k, v in values.items() if k in table.c}
        connection.execute(table.insert().values(**values))
        written[name] = values, set(table.c.keys())
    return written


def expected_added(table: str, column: str) -> Any:
    for key in ((table, column), ("*", column)):
        if key in ADDED:
            return ADDED[key]
    raise AssertionError(f"{table}.{column} is new since the revision: add it to ADDED")


def check_rows(url: str, written: Written) -> None:
    """Every written row is there with its values; new columns hold their ADDED values."""
    with connect(url) as connection:
        tables = reflect(connection)
        for name, (values, had) in written.items():
            row = row_of(connection, tables[name], ROWS[name][0])
            for column, value in values.items():
                if column in row:
                    assert row[column] == value, f"{name}.{column}"
            for column in sorted(set(row) - had):
                assert row[column] == expected_added(name, column), f"{name}.{column}"


REVISIONS = revisions()


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_from_a_revision_with_data_keeps_it_and_fills_new_columns(
    empty_database_url: str, revision: str
) -> None:
    url = empty_database_url
    migrate.upgrade(url, revision)
    with connect(url) as connection:
        written = insert_rows(connection)
    assert set(written) >= {"agents", "experiments", "runs"}

    migrate.upgrade(url)
    check_rows(url, written)
    command.check(migrate.alembic_config(url))
    if revision == REVISIONS[-1]:
        return

    migrate.downgrade(url, revision)
    with connect(url) as connection:
        assert set(reflect(connection)) == set(written), "the revision's tables, no others"
    check_rows(url, written)


def test_the_matrix_covers_every_table_and_added_column() -> None:
    """ROWS names only real tables, and ADDED only columns the models have."""
    from simtrack.server.db.models import Base

    assert set(ROWS) == set(Base.metadata.tables)
    for table, column in ADDED:
        tables = Base.metadata.tables.values() if table == "*" else [Base.metadata.tables[table]]
        assert any(column in t.c for t in tables), (table, column)
