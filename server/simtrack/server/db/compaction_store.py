"""Compaction's transactions (the domain's ``CompactionStore``), across tenants.

Each metric is compacted in a transaction of its own that first takes the metric's compaction
lock, then reads what is committed, so two servers on one database never compact a metric at
once and neither works from a stale read:

* PostgreSQL: ``pg_try_advisory_xact_lock`` on the metric (a busy metric is skipped, not
  waited for; commit, rollback or a dropped connection release it), the transaction told the
  tenant for row-level security, as the sweeps' units of work are;
* SQLite: ``BEGIN IMMEDIATE``, the database's write lock, taken before the first read (a
  deferred transaction could read, then fail to upgrade when another process wrote).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, func, insert, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from simtrack.errors import FailedPrecondition
from simtrack.server.core.model import utcnow
from simtrack.server.db.chunks import CompactedChunk, SmallChunk, StoredChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS, MetricChunk, Tenant

# The advisory lock's first key: compaction's namespace (the second is the metric's hash).
_LOCK_CLASS = 0x53434D50  # "SCMP"
# The small-chunk condition as a literal, so PostgreSQL's planner matches the partial index.
_SMALL = MetricChunk.n < literal_column(str(SMALL_CHUNK_POINTS))


class SqlMetricCompaction:
    """One metric's compaction transaction (the domain's ``MetricCompaction``)."""

    def __init__(self, connection: AsyncConnection, tenant_id: str, metric_id: str) -> None:
        self.connection = connection
        self.tenant_id = tenant_id
        self.metric_id = metric_id
        self.run_id: str | None = None

    def _of_metric(self) -> ColumnElement[bool]:
        return and_(
            MetricChunk.tenant_id == self.tenant_id, MetricChunk.metric_id == self.metric_id
        )

    async def small_chunks(self) -> list[SmallChunk]:
        stmt = (
            select(MetricChunk.seq, MetricChunk.n, MetricChunk.written_at)
            .where(self._of_metric(), _SMALL)
            .order_by(MetricChunk.seq)
        )
        return [SmallChunk(*row) for row in await self.connection.execute(stmt)]

    async def sizes_below(self, seq: int, limit: int) -> list[tuple[int, int]]:
        stmt = (
            select(MetricChunk.seq, MetricChunk.n)
            .where(self._of_metric(), MetricChunk.seq < seq)
            .order_by(MetricChunk.seq.desc())
            .limit(limit)
        )
        return [(s, n) for s, n in await self.connection.execute(stmt)]

    async def chunks(self, first_seq: int, last_seq: int) -> list[StoredChunk]:
        stmt = (
            select(MetricChunk.run_id, *(getattr(MetricChunk, f) for f in StoredChunk._fields))
            .where(self._of_metric(), MetricChunk.seq.between(first_seq, last_seq))
            .order_by(MetricChunk.seq)
        )
        rows = list(await self.connection.execute(stmt))
        if rows:
            self.run_id = rows[0][0]
        return [StoredChunk(*row[1:]) for row in rows]

    async def replace(
        self, first_seq: int, last_seq: int, count: int, rows: Sequence[CompactedChunk]
    ) -> None:
        # Delete first: the new rows reuse some of the old rows' seqs (the primary key).
        deleted = await self.connection.execute(
            delete(MetricChunk).where(
                self._of_metric(), MetricChunk.seq.between(first_seq, last_seq)
            )
        )
        if deleted.rowcount != count:
            # The run was deleted meanwhile, or the span changed: leave everything as it was.
            raise FailedPrecondition(
                f"compaction of metric {self.metric_id}: {deleted.rowcount} chunks in seqs "
                f"{first_seq}..{last_seq}, not the {count} read"
            )
        written_at = utcnow()  # as ingest stamps rows: this process's clock
        await self.connection.execute(
            insert(MetricChunk),
            [
                {
                    **row._asdict(),
                    "metric_id": self.metric_id,
                    "tenant_id": self.tenant_id,
                    "run_id": self.run_id,
                    "written_at": written_at,
                }
                for row in rows
            ],
        )


class SqlCompactionStore:
    """Compaction's transactions on the server's engine (the domain's ``CompactionStore``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def tenants(self) -> list[str]:
        async with self.engine.connect() as connection:
            return list((await connection.scalars(select(Tenant.id).order_by(Tenant.id))).all())

    async def due_metrics(self, tenant_id: str, settled_before: datetime, limit: int) -> list[str]:
        written = MetricChunk.written_at
        stmt = (
            select(MetricChunk.metric_id)
            .where(MetricChunk.tenant_id == tenant_id, _SMALL)
            .group_by(MetricChunk.metric_id)
            .having(
                (func.count() >= 2)
                & (
                    (func.count(written) < func.count())  # rows from before arrivals were kept
                    | (func.min(written) <= settled_before)
                )
            )
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            await self._use_tenant(connection, tenant_id)
            return list((await connection.scalars(stmt)).all())

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_id: str
    ) -> AsyncIterator[SqlMetricCompaction | None]:
        async with self.engine.connect() as connection:
            if self._postgres:
                await self._use_tenant(connection, tenant_id)
                locked = await connection.scalar(
                    select(func.pg_try_advisory_xact_lock(_LOCK_CLASS, func.hashtext(metric_id)))
                )
                if not locked:
                    yield None
                    return
            else:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield SqlMetricCompaction(connection, tenant_id, metric_id)
            await connection.commit()
        # Leaving without commit (an exception) rolls back: the pool resets the connection.

    async def _use_tenant(self, connection: AsyncConnection, tenant_id: str) -> None:
        if self._postgres:  # row-level security's input, for this transaction only
            await connection.execute(
                text("select set_config('app.tenant_id', :tenant, true)"), {"tenant": tenant_id}
            )
