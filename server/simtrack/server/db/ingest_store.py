"""The ingest writer's persistence: its statements (``db/bulk.py``: compiled once, run on the
driver), its transactions and their connection.

One statement per table and transaction, executed straight on the DBAPI driver's connection
(psycopg's, pipelined, or aiosqlite's). Values shared by every row of a statement (the tenant,
the commit's time) are bound once.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import (
    BindParameter,
    ClauseElement,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from simtrack.errors import FailedPrecondition, Unavailable
from simtrack.server.core.model import RUN_FINAL, ExperimentStatus, RunStatus
from simtrack.server.db.bulk import ROWS, Compiled, bulk_insert, bulk_update, rows_json
from simtrack.server.db.engine import libpq_conninfo
from simtrack.server.db.models import (
    Event,
    Experiment,
    Metric,
    MetricChunk,
    Run,
    StagedMessage,
)
from simtrack.server.db.repositories import finalize_metrics


@dataclass(slots=True)
class RunState:
    """The part of a run's row the writer reads (under lock) and changes."""

    id: str
    experiment_id: str
    status: RunStatus
    committed_seq: int
    current_tick: int
    total_ticks: int
    progress_percent: float
    started_at: datetime | None
    vanished_at: datetime | None  # failed by the liveness sweep, not by its worker
    cancel_reason: str
    completed_at: datetime | None = None
    duration: timedelta | None = None


_RUN_COLUMNS = (
    Run.id, Run.experiment_id, Run.status, Run.committed_seq, Run.current_tick, Run.total_ticks,
    Run.progress_percent, Run.started_at, Run.vanished_at, Run.cancel_reason,
)  # fmt: skip


def _lock_runs(count: int) -> ClauseElement:
    """A tenant's runs, locked (PostgreSQL) in id order: one lock order everywhere."""
    ids: list[BindParameter[str]] = [bindparam(f"id{i}") for i in range(count)]
    return (
        select(*_RUN_COLUMNS)
        .where(Run.tenant_id == bindparam("tenant_id"), Run.id.in_(ids))
        .order_by(Run.id)
        .with_for_update()
    )


_CHUNK_COLUMNS = (
    "metric_id", "seq", "tenant_id", "run_id", "first_step", "last_step", "n", "vmin", "vmax",
    "vmin_step", "vmax_step", "vmin_ts", "vmax_ts", "written_at", "steps", "vals", "ts",
)  # fmt: skip
_STAGED_COLUMNS = ("run_id", "seq", "tenant_id", "written_at", "points", "series", "body")
_EVENT_COLUMNS = (
    "run_id", "seq", "position", "tenant_id", "step", "time_ns", "type", "agent_id", "payload",
)  # fmt: skip
_METRIC_COLUMNS = (
    "id", "tenant_id", "run_id", "name", "unit", "kind", "labels", "count", "min_value",
    "max_value", "last_step", "last_value", "created_at", "updated_at",
)  # fmt: skip
_CHUNK_SHARED = ("tenant_id", "written_at")
_METRIC_SHARED = ("tenant_id", "labels", "created_at", "updated_at")
_RUN_PROGRESS = (
    "committed_seq", "last_seen_at", "current_tick", "total_ticks", "progress_percent",
    "updated_at",
)  # fmt: skip
_RUN_END = (
    "status", "completed_at", "duration", "error_message", "error_details", "vanished_at",
    "updated_at",
)  # fmt: skip


def _upsert_metrics(postgres: bool) -> ClauseElement:
    """INSERT ... ON CONFLICT that folds a transaction's summaries into the stored ones."""
    stmt = bulk_insert(Metric, _METRIC_COLUMNS, postgres, _METRIC_SHARED)
    new = stmt.excluded
    least, greatest = (func.least, func.greatest) if postgres else (func.min, func.max)
    newer = (new.last_step.is_not(None)) & (
        Metric.last_step.is_(None) | (new.last_step >= Metric.last_step)
    )
    upsert: ClauseElement = stmt.on_conflict_do_update(
        index_elements=[Metric.id],
        set_={
            "count": Metric.count + new["count"],
            # coalesce: an absent (all non-finite) side must not blank the other
            "min_value": least(
                func.coalesce(Metric.min_value, new.min_value),
                func.coalesce(new.min_value, Metric.min_value),
            ),
            "max_value": greatest(
                func.coalesce(Metric.max_value, new.max_value),
                func.coalesce(new.max_value, Metric.max_value),
            ),
            "last_step": case((newer, new.last_step), else_=Metric.last_step),
            "last_value": case((newer, new.last_value), else_=Metric.last_value),
            "updated_at": new.updated_at,
            # Not the ``final_*`` copies: an ended run's are copied again by ``update_runs``
            # (a late write), and no indexed column changes, so the update stays in place.
        },
    )
    return upsert


def _lock_experiment() -> ClauseElement:
    return select(Experiment.id).where(Experiment.id == bindparam("id")).with_for_update()


def _run_statuses() -> ClauseElement:
    return select(Run.status).where(Run.experiment_id == bindparam("id")).distinct()


class Statements:
    """Every statement of the writer, compiled for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        postgres = dialect.name == "postgresql"
        self.insert_chunks = Compiled(
            bulk_insert(MetricChunk, _CHUNK_COLUMNS, postgres, _CHUNK_SHARED), dialect
        )
        self.insert_staged = Compiled(
            bulk_insert(StagedMessage, _STAGED_COLUMNS, postgres, _CHUNK_SHARED), dialect
        )
        self.insert_events = Compiled(bulk_insert(Event, _EVENT_COLUMNS, postgres), dialect)
        self.upsert_metrics = Compiled(_upsert_metrics(postgres), dialect)
        self.update_progress = Compiled(
            bulk_update(Run, _RUN_PROGRESS, postgres, ("last_seen_at", "updated_at")), dialect
        )
        self.update_end = Compiled(bulk_update(Run, _RUN_END, postgres, ("updated_at",)), dialect)
        self.finalize_metrics = Compiled(
            finalize_metrics().where(Metric.run_id == bindparam("run_id")), dialect
        )
        self.update_results = Compiled(
            bulk_update(Run, ("results", "updated_at"), postgres, ("updated_at",)), dialect
        )
        self.lock_experiment = Compiled(_lock_experiment(), dialect)
        self.run_statuses = Compiled(_run_statuses(), dialect)
        self.update_experiment = Compiled(
            bulk_update(Experiment, ("status", "updated_at"), postgres), dialect
        )

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one Statements per engine, kept for its life
    def lock_runs(self, count: int) -> Compiled:
        return Compiled(_lock_runs(count), self.dialect)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run that ended in this transaction ended (beyond its status and times)."""

    run: RunState
    error_message: str
    error_details: dict[str, Any]
    results: dict[str, Any]


@dataclass
class ConnectionState:
    """What the writer's own connection carries from one transaction to the next."""

    tenant: str | None = None  # whose rows row-level security lets it see and write


class IngestTransaction:
    """One group commit's transaction on a driver connection (psycopg or aiosqlite)."""

    def __init__(self, driver: Any, statements: Statements, state: ConnectionState) -> None:
        self._driver = driver
        self._sql = statements
        self._state = state
        self._postgres = statements.dialect.name == "postgresql"

    async def _execute(self, compiled: Compiled, values: Mapping[str, Any]) -> list[Any]:
        params = compiled.params(values)
        if not self._postgres:  # one trip to aiosqlite's thread, not two
            rows = await self._driver.execute_fetchall(compiled.sql, params)
            return compiled.rows(None, rows)
        cursor = await self._driver.execute(compiled.sql, params)
        rows = await cursor.fetchall()  # in a pipeline: the description comes with the rows
        return compiled.rows([d.type_code for d in cursor.description], rows)

    async def _write(
        self,
        compiled: Compiled,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """A bulk statement for ``rows`` (each a mapping of column name to value), with
        ``shared`` the values of the columns every row has alike.
        """
        if not rows:
            return
        shared = shared or {}
        if self._postgres:  # one statement, the rows one JSON document (and binary arrays)
            arrays = {name: [row[name] for row in rows] for name in compiled.arrays}
            values = {ROWS: rows_json(rows, compiled.arrays), **arrays, **shared}
            await self._driver.execute(compiled.sql, compiled.params(values))
        else:
            await self._driver.executemany(compiled.sql, compiled.params_many(rows, shared))

    async def _each(self, compiled: Compiled, rows: Sequence[Mapping[str, Any]]) -> None:
        """``compiled`` once for each of ``rows``, in one go (PostgreSQL: pipelined; SQLite:
        one trip to aiosqlite's thread).
        """
        if not rows:
            return
        params = compiled.params_many(rows, {})
        if self._postgres:
            async with self._driver.cursor() as cursor:
                await cursor.executemany(compiled.sql, params)
        else:
            await self._driver.executemany(compiled.sql, params)

    async def use_tenant(self, tenant_id: str) -> None:
        """What follows acts for ``tenant_id`` (PostgreSQL row-level security's input)."""
        if self._postgres and self._state.tenant != tenant_id:
            # For the session, not the transaction: the writer's connection is its own, and
            # most groups are one tenant's, so the setting rarely changes.
            await self._driver.execute(
                "select set_config('app.tenant_id', %s, false)", (tenant_id,)
            )
            self._state.tenant = tenant_id

    async def lock_runs(self, tenant_id: str, run_ids: Sequence[str]) -> dict[str, RunState]:
        # The statement for the next power of two, its extra places the first id again: a
        # handful of compiled statements, where a group's every size (up to MAX_GROUP runs)
        # would compile one, more than the cache keeps under a fleet.
        size = 1 << (len(run_ids) - 1).bit_length()
        padded = [*run_ids, *[run_ids[0]] * (size - len(run_ids))]
        values = {f"id{i}": run_id for i, run_id in enumerate(padded)}
        rows = await self._execute(self._sql.lock_runs(size), {"tenant_id": tenant_id, **values})
        return {row[0]: RunState(*row) for row in rows}

    async def insert_chunks(
        self, tenant_id: str, now: datetime, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """New chunks (``_CHUNK_COLUMNS`` but the tenant and the time, which all rows share)."""
        # Not COPY: PostgreSQL refuses COPY FROM into a table under row-level security.
        shared = {"tenant_id": tenant_id, "written_at": now}
        await self._write(self._sql.insert_chunks, rows, shared)

    async def insert_staged(
        self, tenant_id: str, now: datetime, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """New staged messages (run_id, seq, points, series, body each)."""
        shared = {"tenant_id": tenant_id, "written_at": now}
        await self._write(self._sql.insert_staged, rows, shared)

    async def insert_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        await self._write(self._sql.insert_events, rows)

    async def upsert_metrics(
        self, tenant_id: str, now: datetime, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Fold summaries into the metrics' rows, creating the new ones (unlabelled)."""
        shared = {"tenant_id": tenant_id, "labels": {}, "created_at": now, "updated_at": now}
        await self._write(self._sql.upsert_metrics, rows, shared)

    async def update_runs(
        self, runs: Iterable[RunState], now: datetime, ended: Mapping[str, Ending]
    ) -> None:
        """Write each run's watermark, liveness and progress; and how the ended ones ended."""
        progress = [
            {
                "id": run.id,
                "committed_seq": run.committed_seq,
                "current_tick": run.current_tick,
                "total_ticks": run.total_ticks,
                "progress_percent": run.progress_percent,
            }
            for run in runs
        ]
        await self._write(
            self._sql.update_progress, progress, {"last_seen_at": now, "updated_at": now}
        )
        endings = [
            {
                "id": run_id,
                "status": end.run.status,
                "completed_at": end.run.completed_at,
                "duration": end.run.duration,
                "error_message": end.error_message,
                "error_details": end.error_details,
                "vanished_at": end.run.vanished_at,
            }
            for run_id, end in ended.items()
        ]
        await self._write(self._sql.update_end, endings, {"updated_at": now})
        # The ended runs' metrics (ending now, or written late): their copies for ordered
        # lists, after the summaries.
        finals = {run.id for run in runs if run.status in RUN_FINAL} | set(ended)
        await self._each(self._sql.finalize_metrics, [{"run_id": r} for r in sorted(finals)])
        results = [
            {"id": run_id, "results": end.results} for run_id, end in ended.items() if end.results
        ]
        await self._write(self._sql.update_results, results, {"updated_at": now})

    async def experiment_run_statuses(self, experiment_id: str) -> set[RunStatus] | None:
        """Lock an experiment's row and read its runs' statuses (None: no such experiment)."""
        if not await self._execute(self._sql.lock_experiment, {"id": experiment_id}):
            return None
        rows = await self._execute(self._sql.run_statuses, {"id": experiment_id})
        return {row[0] for row in rows}

    async def set_experiment_status(
        self, experiment_id: str, status: ExperimentStatus, now: datetime
    ) -> None:
        row = {"id": experiment_id, "status": status, "updated_at": now}
        await self._write(self._sql.update_experiment, [row])


class IngestStore:
    """Transactions for the writer.

    PostgreSQL: the writer has a connection of its own (its prepared statements stay warm, and
    the tenant setting for row-level security is changed only when the tenant changes) and
    pipelines each transaction. SQLite: the engine's one shared connection, taken per group.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.statements = Statements(engine.dialect)
        self._postgres = engine.dialect.name == "postgresql"
        self._conninfo = libpq_conninfo(engine.url)
        self._own: psycopg.AsyncConnection[Any] | None = None
        self._state = ConnectionState()

    async def open(self) -> None:
        if self._postgres:
            await self._connect()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._own is None or self._own.closed:
            self._state = ConnectionState()
            self._own = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=5)
        return self._own

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[IngestTransaction]:
        """A transaction, committed when the block ends, rolled back if it raises.

        Database faults leave as Unavailable (the writer retries), constraint violations as
        FailedPrecondition; a broken connection is dropped.
        """
        try:
            if self._postgres:
                async with self._postgres_transaction() as transaction:
                    yield transaction
            else:
                async with self._sqlite_transaction() as transaction:
                    yield transaction
        except (psycopg.IntegrityError, sqlite3.IntegrityError) as exc:
            raise FailedPrecondition(f"the batch conflicts with stored data: {exc}") from exc
        except (psycopg.OperationalError, sqlite3.OperationalError, psycopg.InterfaceError) as exc:
            raise Unavailable("the database is unreachable; retry later") from exc
        except (DBAPIError, SQLAlchemyError) as exc:  # connecting failed
            raise Unavailable("the database is unreachable; retry later") from exc

    @contextlib.asynccontextmanager
    async def _postgres_transaction(self) -> AsyncIterator[IngestTransaction]:
        connection = await self._connect()
        try:
            async with connection.pipeline():
                yield IngestTransaction(connection, self.statements, self._state)
                await connection.commit()
        except BaseException as exc:
            self._state.tenant = None  # a rolled-back transaction takes its setting along
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                self._own = None
                with contextlib.suppress(Exception):
                    await connection.close()
            else:
                with contextlib.suppress(Exception):
                    await connection.rollback()
            raise

    @contextlib.asynccontextmanager
    async def _sqlite_transaction(self) -> AsyncIterator[IngestTransaction]:
        async with self.engine.connect() as connection:
            driver: Any = (await connection.get_raw_connection()).driver_connection
            # Take the write lock now: a deferred transaction could not upgrade later if
            # another process (the CLI) wrote in between.
            await driver.execute("BEGIN IMMEDIATE")
            try:
                yield IngestTransaction(driver, self.statements, ConnectionState())
                await driver.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await driver.rollback()
                raise
