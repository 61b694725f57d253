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
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Text,
    and_,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import QueryableAttribute

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

    def _spans(self, spans: Mapping[str, tuple[int, int]]) -> FromClause:
        """The spans as a relation (metric_id, first_seq, last_seq), one parameter whatever
        their number (PostgreSQL: arrays, unnested; SQLite: a JSON array, ``json_each``).
        """
        if self._postgres:
            return (
                func.unnest(
                    bindparam("span_ids", list(spans), type_=ARRAY(Text)),
                    bindparam(
                        "span_firsts", [f for f, _ in spans.values()], type_=ARRAY(BigInteger)
                    ),
                    bindparam(
                        "span_lasts", [last for _, last in spans.values()], type_=ARRAY(BigInteger)
                    ),
                )
                .table_valued("metric_id", "first_seq", "last_seq")
                .render_derived(name="spans", with_types=False)
            )
        rows = json.dumps([[m, first, last] for m, (first, last) in spans.items()])
        value: ColumnElement[str] = literal_column("value")
        each = func.json_each(bindparam("spans", rows, type_=Text))
        return (
            select(
                func.json_extract(value, "$[0]").label("metric_id"),
                func.json_extract(value, "$[1]").label("first_seq"),
                func.json_extract(value, "$[2]").label("last_seq"),
            )
            .select_from(each)
            .subquery("spans")
        )

    @staticmethod
    def _in(spans: FromClause) -> ColumnElement[bool]:
        """A chunk within its metric's span. No tenant condition: the metrics are the
        tenant's (found under its condition; PostgreSQL's row-level security holds the
        transaction to it too), and the metric and seq alone lead the planners down the
        primary key.
        """
        return and_(
            MetricChunk.metric_id == spans.c.metric_id,
            MetricChunk.seq.between(spans.c.first_seq, spans.c.last_seq),
        )

    def _lateral(
        self, spans: FromClause, *columns: ColumnElement[Any] | QueryableAttribute[Any]
    ) -> FromClause:
        """PostgreSQL: the columns of each span's chunks, read down the primary key span by
        span (``OFFSET 0``: the planner may not merge it into a join on the chunks, which,
        on a table with stale statistics, it may read whole under row-level security's
        tenant condition).
        """
        return select(*columns).where(self._in(spans)).offset(0).lateral("chunks")

    async def small_chunks(self) -> dict[str, list[SmallChunk]]:
        found: dict[str, list[SmallChunk]] = {m: [] for m in self.locked}
        if not self.locked:
            return found
        small = (MetricChunk.seq, MetricChunk.n, MetricChunk.written_at)
        mine = and_(MetricChunk.tenant_id == self.tenant_id, _SMALL)
        if self._postgres:  # metric by metric down the partial index (see `_lateral`)
            metrics = self._spans({m: (0, 0) for m in self.locked})
            rows = (
                select(*small)
                .where(mine, MetricChunk.metric_id == metrics.c.metric_id)
                .offset(0)
                .lateral("small")
            )
            stmt = (
                select(metrics.c.metric_id, rows)
                .select_from(metrics.join(rows, true()))
                .order_by(metrics.c.metric_id, rows.c.seq)
            )
        else:
            stmt = (
                select(MetricChunk.metric_id, *small)
                .where(mine, MetricChunk.metric_id.in_(self.locked))
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
        bounds = self._spans({m: (seq, seq) for m, seq in seqs.items()})
        of_metric = and_(  # no tenant condition, as in `_in`
            MetricChunk.metric_id == bounds.c.metric_id, MetricChunk.seq < bounds.c.first_seq
        )
        if self._postgres:  # each metric's ``limit`` highest, read down its primary key
            highest = (
                select(MetricChunk.seq, MetricChunk.n)
                .where(of_metric)
                .order_by(MetricChunk.seq.desc())
                .limit(limit)
                .lateral("below")
            )
            stmt = (
                select(bounds.c.metric_id, highest.c.seq, highest.c.n)
                .select_from(bounds.join(highest, true()))
                .order_by(bounds.c.metric_id, highest.c.seq.desc())
            )
        else:  # no LATERAL: each metric's chunks below, numbered from the top
            rank = func.row_number().over(
                partition_by=MetricChunk.metric_id, order_by=MetricChunk.seq.desc()
            )
            ranked = (
                select(MetricChunk.metric_id, MetricChunk.seq, MetricChunk.n, rank.label("rank"))
                .select_from(bounds.join(MetricChunk, of_metric))
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
        in_spans = self._spans(spans)
        if self._postgres:  # each span read down the primary key, whatever the statistics
            rows = self._lateral(in_spans, MetricChunk.run_id, *fields)
            stmt = (
                select(in_spans.c.metric_id, rows)
                .select_from(in_spans.join(rows, true()))
                .order_by(in_spans.c.metric_id, rows.c.seq)
            )
        else:
            stmt = (
                select(MetricChunk.metric_id, MetricChunk.run_id, *fields)
                .select_from(in_spans.join(MetricChunk, self._in(in_spans)))
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
        in_spans = self._spans(spans)
        if self._postgres:  # the spans' rows by their tuple ids (a TID scan)
            ctids = self._lateral(in_spans, literal_column("ctid").label("ctid"))
            found = select(ctids.c.ctid).select_from(in_spans.join(ctids, true()))
            stmt = delete(MetricChunk).where(
                literal_column("metric_chunks.ctid") == any_(func.array(found.scalar_subquery()))
            )
        else:  # no DELETE ... USING: the rows of the spans by key
            stmt = delete(MetricChunk).where(
                tuple_(MetricChunk.metric_id, MetricChunk.seq).in_(
                    select(MetricChunk.metric_id, MetricChunk.seq).select_from(
                        in_spans.join(MetricChunk, self._in(in_spans))
                    )
                )
            )
        deleted = await self.connection.execute(stmt)
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
        self,
        tenant_id: str,
        settled_before: datetime,
        idle_before: datetime,
        limit: int,
        start: str = "",
        rows: int | None = None,
    ) -> tuple[list[tuple[str, int]], str]:
        mine = and_(MetricChunk.tenant_id == tenant_id, _SMALL, MetricChunk.metric_id >= start)
        written = MetricChunk.written_at
        before_arrivals = func.count(written) < func.count()  # rows from before they were kept
        stmt = (
            select(MetricChunk.metric_id, func.count())
            .where(mine)
            .group_by(MetricChunk.metric_id)
            .having(
                (func.count() >= 2)
                & (before_arrivals | (func.min(written) <= settled_before))
                & (
                    before_arrivals
                    | (func.sum(MetricChunk.n) >= SMALL_CHUNK_POINTS)
                    | (func.max(written) <= idle_before)
                )
            )
            .order_by(MetricChunk.metric_id)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            await self._use_tenant(connection, tenant_id)
            end: str | None = None
            if rows is not None:  # the metric ``rows`` small chunks on, down the index
                first_after = (
                    select(MetricChunk.metric_id)
                    .where(mine)
                    .order_by(MetricChunk.metric_id)
                    .offset(rows)
                    .limit(1)
                )
                end = await connection.scalar(first_after)
                if end is not None:
                    stmt = stmt.where(MetricChunk.metric_id < end)
            due = [(metric_id, count) for metric_id, count in await connection.execute(stmt)]
        if len(due) >= limit:
            return due, due[-1][0]
        return due, end or ""

    @contextlib.asynccontextmanager
    async def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AsyncIterator[SqlBatchCompaction]:
        async with self.engine.connect() as connection:
            if self._postgres:
                # Row-level security's input, and no bitmap scans: on a table not analyzed
                # yet, the planner takes the tenant's index (all its rows) beside the
                # primary key for each metric's few rows. Both for this transaction only.
                await connection.execute(
                    text(
                        "select set_config('app.tenant_id', :tenant, true), "
                        "set_config('enable_bitmapscan', 'off', true)"
                    ),
                    {"tenant": tenant_id},
                )
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
