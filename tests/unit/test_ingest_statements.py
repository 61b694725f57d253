"""The writer's compiled statements bind each row's values as SQLAlchemy's own execution does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from simtrack.server.core.model import MetricKind
from simtrack.server.db.bulk import Compiled
from simtrack.server.db.ingest_store import Statements

NOW = datetime(2026, 12, 5, 8, 0, 1, 250_000, tzinfo=UTC)


def _as_sqlalchemy_binds(compiled: Compiled, values: dict[str, Any], dialect: Dialect) -> Any:
    """The parameters SQLAlchemy's own execution would send for ``values``."""
    statement = compiled.statement
    sql = statement.compile(dialect=dialect)
    assert isinstance(sql, SQLCompiler)
    params = sql.construct_params(values)
    processors: Any = sql._bind_processors  # noqa: SLF001 - what execution applies
    bound = {
        name: processors[name](value) if name in processors else value
        for name, value in params.items()
    }
    if sql.positional:
        return tuple(bound[name] for name in sql.positiontup or ())
    return bound


def _chunk(i: int) -> dict[str, Any]:
    return {
        "metric_id": f"m{i}", "seq": i, "run_id": "r", "first_step": i * 10,
        "last_step": i * 10 + 9, "n": 10, "vmin": -1.5 * i, "vmax": 2.0, "vmin_step": i * 10,
        "vmax_step": i * 10 + 1, "vmin_ts": 1.0, "vmax_ts": None, "steps": b"\x01" * i,
        "vals": b"\x02", "ts": b"",
    }  # fmt: skip


def _metric(i: int) -> dict[str, Any]:
    return {
        "id": f"m{i}", "run_id": "r", "name": f"loss{i}", "unit": "", "kind": MetricKind.GAUGE,
        "count": 10, "min_value": None, "max_value": float(i), "last_step": i,
        "last_value": 0.5,
    }  # fmt: skip


def test_each_row_is_bound_as_sqlalchemy_binds_it() -> None:
    """SQLite's bulk writes bind row by row (``executemany``)."""
    dialect = sqlite.dialect()
    statements = Statements(dialect)
    chunks_shared = {"tenant_id": "t", "written_at": NOW}
    metrics_shared = {"tenant_id": "t", "labels": {"a": 1}, "created_at": NOW, "updated_at": NOW}
    cases = [
        (statements.insert_chunks, [_chunk(i) for i in range(3)], chunks_shared),
        (statements.upsert_metrics, [_metric(i) for i in range(3)], metrics_shared),
    ]
    for compiled, rows, shared in cases:
        made = compiled.params_many(rows, shared)
        expected = [_as_sqlalchemy_binds(compiled, {**row, **shared}, dialect) for row in rows]
        assert made == expected
        # Again with other shared values: the row maker is kept per shared columns.
        later = {**shared, "tenant_id": "u"}
        assert compiled.params_many(rows[:1], later) == [
            _as_sqlalchemy_binds(compiled, {**rows[0], **later}, dialect)
        ]
        assert compiled.params({**rows[0], **shared}) == expected[0]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg.dialect()])  # type: ignore[no-untyped-call]
def test_a_single_execution_is_bound_as_sqlalchemy_binds_it(dialect: Dialect) -> None:
    compiled = Statements(dialect).lock_runs(4)
    values = {"tenant_id": "t", **{f"id{i}": f"r{i}" for i in range(4)}}
    assert compiled.params(values) == _as_sqlalchemy_binds(compiled, values, dialect)
