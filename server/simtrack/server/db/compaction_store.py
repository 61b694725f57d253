"""Compaction's transactions (the domain's ``CompactionStore``), across tenants.

A batch of one tenant's metrics is compacted in a transaction of its own that first takes the
metrics' compaction locks, then reads what is committed, so two servers on one database never
compact a metric at once and neither works from a stale read:

* PostgreSQL: ``pg_try_advisory_xact_lock`` on each metric of the batch, in one statement (a
  busy metric is skipped, not waited for; commit, rollback or a dropped connection release
  them), the transaction told the tenant for row-level security, as the sweeps' units of work
  are;
* SQLite: ``BEGIN IMMEDIATE``, the database's write lock, taken before the first read (a
  deferred transaction could read, then fail to upgrade when another process wrote); it
  covers the whole batch.

Every step is one statement for the whole batch, whatever its size: the lock, the small
chunks, the sizes below the spans, the spans' chunks, one delete and one insert.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from simtrack.errors import FailedPrecondition
from simtrack.server.core.model import utcnow
from simtrack.server.db.chunks import CompactedChunk, SmallChunk, StoredChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS, MetricChunk, Tenant

# The advisory lock's first key: compaction's namespace (the second is the metric's hash).
_LOCK_CLASS = 0x53434D50  # "SCMP"
# The small-chunk condition as a literal, so PostgreSQL's planner matches the partial index.
_SMALL = MetricChunk.n < literal_column(str(SMALL_CHUNK_POINTS))


class SqlBatchCompaction:
    """A batch's compaction transaction (the domain's ``BatchCompaction``)."""

    def __init__(
        self, connection: AsyncConnection, tenant_id: str, locked: Sequence[str], postgres: bool
    ) -> None:
        self.connection = connection
        self.tenant_id = tenant_id
        self.locked = list(locked)
        self._postgres = postgres
        self.run_ids: dict[str, str] = {}

    def _of(self, metric_ids: Sequence[str]) -> ColumnElement[bool]:
        """The chunks of these metrics (PostgreSQL: one array parameter, one statement text
        whatever the batch's size).
        """
        if self._postgres:
            ids = bindparam("metric_ids", list(metric_ids), type_=ARRAY(Text))
            of_metrics = MetricChunk.metric_id == any_(ids)
        else:
            of_metrics = MetricChunk.metric_id.in_(metric_ids)
        return and_(MetricChunk.tenant_id == self.tenant_id, of_metrics)

    def _in_spans(self, spans: Mapping[str, tuple[int, int]]) -> ColumnElement[bool]:
        return and_(
            self._of(list(spans)),
            or_(
                *(
                    and_(MetricChunk.metric_id == m, MetricChunk.seq.between(first, last))
                    for m, (first, last) in spans.items()
                )
            ),
        )

    async def small_chunks(self) -> dict[str, list[SmallChunk]]:
        found: dict[str, list[SmallChunk]] = {m: [] for m in self.locked}
        if not self.locked:
            return found
        stmt = (
            select(MetricChunk.metric_id, MetricChunk.seq, MetricChunk.n, MetricChunk.written_at)
            .where(self._of(self.locked), _SMALL)
            .order_by(MetricChunk.metric_id, MetricChunk.seq)
        )
        for metric_id, seq, n, written_at in await self.connection.execute(stmt):
            found[metric_id].append(SmallChunk(seq, n, written_at))
        return found

    async def sizes_below(
        self, seqs: Mapping[str, int], limit: int
    ) -> dict[str, list[tuple[int, int]]]:
        found: dict[str, list[tuple[int, int]]] = {m: [] for m in seqs}
        if not seqs:
            return found
        # Each metric's highest below its seq: numbered from the top, the first ``limit``.
        rank = (
            func.row_number()
            .over(partition_by=MetricChunk.metric_id, order_by=MetricChunk.seq.desc())
            .label("rank")
        )
        below = or_(
            *(and_(MetricChunk.metric_id == m, MetricChunk.seq < s) for m, s in seqs.items())
        )
        ranked = (
            select(MetricChunk.metric_id, MetricChunk.seq, MetricChunk.n, rank)
            .where(self._of(list(seqs)), below)
            .subquery()
        )
        stmt = (
            select(ranked.c.metric_id, ranked.c.seq, ranked.c.n)
            .where(ranked.c.rank <= limit)
            .order_by(ranked.c.metric_id, ranked.c.seq.desc())
        )
        for metric_id, seq, n in await self.connection.execute(stmt):
            found[metric_id].append((seq, n))
        return found

    async def chunks(self, spans: Mapping[str, tuple[int, int]]) -> dict[str, list[StoredChunk]]:
        found: dict[str, list[StoredChunk]] = {m: [] for m in spans}
        if not spans:
            return found
        fields = (getattr(MetricChunk, f) for f in StoredChunk._fields)
        stmt = (
            select(MetricChunk.metric_id, MetricChunk.run_id, *fields)
            .where(self._in_spans(spans))
            .order_by(MetricChunk.metric_id, MetricChunk.seq)
        )
        for row in await self.connection.execute(stmt):
            self.run_ids[row[0]] = row[1]
            found[row[0]].append(StoredChunk(*row[2:]))
        return found

    async def replace(
        self,
        spans: Mapping[str, tuple[int, int]],
        count: int,
        rows: Mapping[str, Sequence[CompactedChunk]],
    ) -> None:
        if not spans:
            return
        # Delete first: the new rows reuse some of the old rows' seqs (the primary key).
        deleted = await self.connection.execute(delete(MetricChunk).where(self._in_spans(spans)))
        if deleted.rowcount != count:
            # A run was deleted meanwhile, or a span changed: leave everything as it was.
            raise FailedPrecondition(
                f"compaction of {len(spans)} metric(s): {deleted.rowcount} chunks in their "
                f"spans, not the {count} read"
            )
        written_at = utcnow()  # as ingest stamps rows: this process's clock
        values = [
            {
                **row._asdict(),
                "metric_id": metric_id,
                "tenant_id": self.tenant_id,
                "run_id": self.run_ids[metric_id],
                "written_at": written_at,
            }
            for metric_id, mine in rows.items()
            for row in mine
        ]
        if values:
            await self.connection.execute(insert(MetricChunk), values)


class SqlCompactionStore:
    """Compaction's transactions on the server's engine (the domain's ``CompactionStore``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def tenants(self) -> list[str]:
        async with self.engine.connect() as connection:
            return list((await connection.scalars(select(Tenant.id).order_by(Tenant.id))).all())

    async def due_metrics(
        self, tenant_id: str, settled_before: datetime, limit: int
    ) -> list[tuple[str, int]]:
        written = MetricChunk.written_at
        stmt = (
            select(MetricChunk.metric_id, func.count())
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
            return [(metric_id, count) for metric_id, count in await connection.execute(stmt)]

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with self.engine.connect() as connection:
            if self._postgres:
                await self._use_tenant(connection, tenant_id)
                # Each metric's lock tried once, in the batch's order; the ones taken kept.
                ids = column("m", Text)
                wanted = func.unnest(bindparam("metric_ids", list(metric_ids), type_=ARRAY(Text)))
                stmt = (
                    select(ids)
                    .select_from(wanted.alias("m"))
                    .where(func.pg_try_advisory_xact_lock(_LOCK_CLASS, func.hashtext(ids)))
                )
                locked = list((await connection.scalars(stmt)).all())
            else:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
                locked = list(metric_ids)
            yield SqlBatchCompaction(connection, tenant_id, locked, self._postgres)
            await connection.commit()
        # Leaving without commit (an exception) rolls back: the pool resets the connection.

    async def _use_tenant(self, connection: AsyncConnection, tenant_id: str) -> None:
        if self._postgres:  # row-level security's input, for this transaction only
            await connection.execute(
                text("select set_config('app.tenant_id', :tenant, true)"), {"tenant": tenant_id}
            )
