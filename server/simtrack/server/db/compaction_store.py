"""Compaction's transactions (the domain's ``CompactionStore``), across tenants.

Two servers on one database never both rewrite a metric's chunks, and neither rewrites from a
stale read:

* PostgreSQL: a batch of one tenant's metrics is compacted in a transaction of its own that
  first takes ``pg_try_advisory_xact_lock`` on each metric, in one statement (a busy metric is
  skipped, not waited for; commit, rollback or a dropped connection release them), told the
  tenant for row-level security as the sweeps' units of work are.
* SQLite: the batch reads what is committed, statement by statement, and only its rewrite
  takes the database's write lock (``BEGIN IMMEDIATE``). The server's one connection is then
  the writer's again while the batch decodes and encodes (a fraction of a second a batch, a
  stall of every stream's acks when it held the connection throughout), and other processes
  may compact meanwhile: the rewrite checks that each span still holds exactly the chunks read
  (what the delete returns), else changes nothing.

Every step is one statement for the whole batch, whatever its size: the lock, the small
chunks, the sizes below the spans, the spans' chunks, one delete and one insert.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Select,
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
from simtrack.server.db.models import SMALL_CHUNK_POINTS, MetricChunk, StagedMessage, Tenant
from simtrack.server.db.sqlite_reads import SqliteReadConnections
from simtrack.server.db.staged import unpack_chunks

# The advisory lock's first key: compaction's namespace (the second is the metric's hash),
# and staging's (the second is the run's hash).
_LOCK_CLASS = 0x53434D50  # "SCMP"
_STAGED_LOCK_CLASS = 0x53535447  # "SSTG"
# The small-chunk condition as a literal, so PostgreSQL's planner matches the partial index.
_SMALL = MetricChunk.n < literal_column(str(SMALL_CHUNK_POINTS))


_Select = Callable[[Select[*tuple[Any, ...]]], Awaitable[Sequence[Sequence[Any]]]]


async def _rows_on(connection: AsyncConnection, stmt: Select[*tuple[Any, ...]]) -> list[Any]:
    return list(await connection.execute(stmt))


class SqlBatchCompaction:
    """A batch's compaction (the domain's ``BatchCompaction``), its reads by ``select``: on
    PostgreSQL one transaction on ``connection``; on SQLite (``connection`` None) committed
    reads, and the rewrite in a write transaction of its own on the engine's connection.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        connection: AsyncConnection | None,
        tenant_id: str,
        locked: Sequence[str],
        select: _Select,
    ) -> None:
        self._engine = engine
        self._held = connection
        self._rows = select
        self.tenant_id = tenant_id
        self.locked = list(locked)
        self._postgres = connection is not None
        self.run_ids: dict[str, str] = {}

    def _connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        if self._held is not None:
            return contextlib.nullcontext(self._held)
        return self._engine.connect()

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
        # Below the run's staged messages: a span is every chunk of its seqs, and the staged
        # series of those seqs are not chunks yet (staging moves them, spans and all).
        staged_below = (
            select(StagedMessage.seq)
            .where(StagedMessage.run_id == MetricChunk.run_id, StagedMessage.seq <= MetricChunk.seq)
            .exists()
        )
        mine = and_(MetricChunk.tenant_id == self.tenant_id, _SMALL, ~staged_below)
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
        for metric_id, seq, n, written_at in await self._rows(stmt):
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
        for metric_id, seq, n in await self._rows(stmt):
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
        for row in await self._rows(stmt):
            self.run_ids[row[0]] = row[1]
            found[row[0]].append(StoredChunk(*row[2:]))
        return found

    async def staged(self, settled_before: datetime) -> dict[str, list[tuple[str, StoredChunk]]]:
        """Each locked run's staged series as (metric id, chunk), by seq, up to the last
        message staged before ``settled_before`` (the runs with none are left out).
        """
        found: dict[str, list[tuple[str, StoredChunk]]] = {}
        if not self.locked:
            return found
        message = StagedMessage
        stmt = (
            select(message.run_id, message.seq, message.written_at, message.body)
            .where(message.tenant_id == self.tenant_id, message.run_id.in_(self.locked))
            .order_by(message.run_id, message.seq)
        )
        rows: dict[str, list[tuple[int, datetime, bytes]]] = {}
        for run_id, seq, written_at, body in await self._rows(stmt):
            rows.setdefault(run_id, []).append((seq, written_at, body))
        for run_id, messages in rows.items():
            settled = [i for i, (_, at, _) in enumerate(messages) if at <= settled_before]
            if not settled:
                continue
            names: dict[bytes, str] = {}
            found[run_id] = [
                series
                for seq, _, body in messages[: settled[-1] + 1]
                for series in unpack_chunks(seq, body, names)
            ]
            self.run_ids.update((metric_id, run_id) for metric_id in names.values())
        return found

    async def replace(
        self,
        spans: Mapping[str, tuple[int, int]],
        read: Mapping[str, Sequence[StoredChunk]],
        rows: Mapping[str, Sequence[CompactedChunk]],
        staged: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not spans:
            return
        # Delete first: the new rows reuse some of the old rows' seqs (the primary key).
        in_spans = self._spans(spans)
        key = (MetricChunk.metric_id, MetricChunk.seq, MetricChunk.n)
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
        expected = sorted((m, c.seq, c.n) for m, chunks in read.items() for c in chunks)
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
        async with self._connection() as connection:
            if not self._postgres:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            if staged:
                await self._unstage(connection, staged)
            deleted = sorted(tuple(row) for row in await connection.execute(stmt.returning(*key)))
            if deleted != expected:
                # A run was deleted meanwhile, or another process compacted a span: leave
                # everything as it was (the exception rolls the transaction back).
                raise FailedPrecondition(
                    f"compaction of {len(spans)} metric(s): {len(deleted)} chunks in their"
                    f" spans, not the {len(expected)} read"
                )
            if values:
                await connection.execute(insert(MetricChunk), values)
            if not self._postgres:
                await connection.commit()

    async def _unstage(
        self, connection: AsyncConnection, staged: Mapping[str, Sequence[int]]
    ) -> None:
        """Delete the staged messages read (their seqs, by run), or fail if any is gone."""
        spans = self._spans({run: (min(seqs), max(seqs)) for run, seqs in staged.items()})
        message = StagedMessage
        stmt = delete(message).where(
            tuple_(message.run_id, message.seq).in_(
                select(message.run_id, message.seq).select_from(
                    spans.join(
                        message,
                        and_(
                            message.run_id == spans.c.metric_id,
                            message.seq.between(spans.c.first_seq, spans.c.last_seq),
                        ),
                    )
                )
            )
        )
        deleted = sorted(
            tuple(row)
            for row in await connection.execute(stmt.returning(message.run_id, message.seq))
        )
        expected = sorted((run, seq) for run, seqs in staged.items() for seq in seqs)
        if deleted != expected:
            raise FailedPrecondition(
                f"staging of {len(staged)} run(s): {len(deleted)} staged messages, not the"
                f" {len(expected)} read"
            )


class SqlCompactionStore:
    """Compaction's transactions on the server's engine (the domain's ``CompactionStore``)."""

    def __init__(self, engine: AsyncEngine, reads: SqliteReadConnections | None = None) -> None:
        """``reads``: on SQLite, connections of compaction's own for its reads (the engine's
        one connection is the writer's; in WAL mode a reader neither waits for it nor holds
        it up). None: reads take the engine's connection (a database in memory).
        """
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._reads = reads

    async def _select(self, stmt: Select[*tuple[Any, ...]]) -> Sequence[Sequence[Any]]:
        """SQLite: a committed read, on compaction's own connection if it has one."""
        if self._reads is not None:
            return await self._reads.select(stmt, self.engine.dialect)
        async with self.engine.connect() as connection:
            return await _rows_on(connection, stmt)

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
        known: Container[str] = frozenset(),
    ) -> tuple[list[tuple[str, int]], str]:
        mine = and_(MetricChunk.tenant_id == tenant_id, _SMALL)
        written = MetricChunk.written_at
        before_arrivals = func.count(written) < func.count()  # rows from before they were kept
        stmt = (
            select(MetricChunk.metric_id, func.count())
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
        if rows is not None and not self._postgres:
            return await self._due_in_arrivals(stmt, mine, start, rows, limit, known)
        async with self.engine.connect() as connection:
            await self._use_tenant(connection, tenant_id)
            mine = and_(mine, MetricChunk.metric_id >= start)
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
                    mine = and_(mine, MetricChunk.metric_id < end)
            found = [(m, count) for m, count in await connection.execute(stmt.where(mine))]
        if len(found) >= limit:
            return found, found[-1][0]
        return found, end or ""

    async def _due_in_arrivals(
        self,
        due: Select[str, int],
        mine: ColumnElement[bool],
        start: str,
        rows: int,
        limit: int,
        known: Container[str],
    ) -> tuple[list[tuple[str, int]], str]:
        """SQLite: the due metrics among those of the next ``rows`` small chunks in arrival
        order (its small chunks' index), on from ``start`` (JSON: the last slice's last
        written_at and rowid; "": the first), but those ``known`` to the caller; each one's
        small chunks counted whole, down the primary key (a fleet's slice holds a few chunks
        of each of thousands of metrics, all of them known to this process's ledger). Where
        the next slice starts: this one again if the due metrics filled ``limit``, "" after
        the last.
        """
        written = MetricChunk.written_at
        rowid: ColumnElement[int] = literal_column("metric_chunks.rowid")
        in_slice = mine
        if start:
            at, after = json.loads(start)
            if at is None:  # rows from before arrivals were kept: first in the index
                in_slice = and_(in_slice, written.is_not(None) | (rowid > after))
            else:
                at = datetime.fromisoformat(at)
                in_slice = and_(in_slice, written >= at, (written > at) | (rowid > after))
        arrivals = select(MetricChunk.metric_id).where(in_slice).order_by(written, rowid)
        of_slice: Select[str] = (
            select(literal_column("metric_id"))
            .select_from(arrivals.limit(rows).subquery())
            .distinct()
        )
        unknown = [m for (m,) in await self._select(of_slice) if m not in known]
        counted: list[tuple[str, int]] = []
        if unknown:
            listed: Select[str] = select(literal_column("value")).select_from(
                func.json_each(json.dumps(unknown))
            )
            whole = due.where(mine, MetricChunk.metric_id.in_(listed))
            counted = [(m, count) for m, count in await self._select(whole)]
        if len(counted) >= limit:
            return counted, start
        position = arrivals.with_only_columns(written, rowid).offset(rows - 1).limit(1)
        last = await self._select(position)
        if not last:
            return counted, ""
        at, after = last[0]
        return counted, json.dumps([None if at is None else at.isoformat(), after])

    async def staged_runs(
        self, tenant_id: str, settled_before: datetime, idle_before: datetime, limit: int
    ) -> list[str]:
        message = StagedMessage
        stmt = (
            select(message.run_id)
            .where(message.tenant_id == tenant_id)
            .group_by(message.run_id)
            .having(
                (func.min(message.written_at) <= settled_before)
                & (
                    (func.sum(message.points) >= SMALL_CHUNK_POINTS * func.max(message.series))
                    | (func.max(message.written_at) <= idle_before)
                )
            )
            .limit(limit)
        )
        if not self._postgres:
            return [run_id for (run_id,) in await self._select(stmt)]
        async with self.engine.connect() as connection:
            await self._use_tenant(connection, tenant_id)
            return list((await connection.scalars(stmt)).all())

    def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AbstractAsyncContextManager[SqlBatchCompaction]:
        return self._batch(tenant_id, metric_ids, _LOCK_CLASS)

    def staging(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> AbstractAsyncContextManager[SqlBatchCompaction]:
        """As ``compacting``, locking runs (whose staged messages it moves into chunks)."""
        return self._batch(tenant_id, run_ids, _STAGED_LOCK_CLASS)

    @contextlib.asynccontextmanager
    async def _batch(
        self, tenant_id: str, ids: Sequence[str], lock_class: int
    ) -> AsyncIterator[SqlBatchCompaction]:
        if not self._postgres:  # no lock to take: the rewrite checks what it replaces
            yield SqlBatchCompaction(self.engine, None, tenant_id, ids, self._select)
            return
        async with self.engine.connect() as connection:
            # Row-level security's input, and no bitmap scans: on a table not analyzed yet,
            # the planner takes the tenant's index (all its rows) beside the primary key for
            # each metric's few rows. Both for this transaction only.
            await connection.execute(
                text(
                    "select set_config('app.tenant_id', :tenant, true), "
                    "set_config('enable_bitmapscan', 'off', true)"
                ),
                {"tenant": tenant_id},
            )
            # Each metric's (run's) lock tried once, in the batch's order; the ones taken kept.
            key = column("m", Text)
            wanted = func.unnest(bindparam("ids", list(ids), type_=ARRAY(Text)))
            stmt = (
                select(key)
                .select_from(wanted.alias("m"))
                .where(func.pg_try_advisory_xact_lock(lock_class, func.hashtext(key)))
            )
            locked = list((await connection.scalars(stmt)).all())
            read = functools.partial(_rows_on, connection)
            yield SqlBatchCompaction(self.engine, connection, tenant_id, locked, read)
            await connection.commit()
        # Leaving without commit (an exception) rolls back: the pool resets the connection.

    async def _use_tenant(self, connection: AsyncConnection, tenant_id: str) -> None:
        if self._postgres:  # row-level security's input, for this transaction only
            await connection.execute(
                text("select set_config('app.tenant_id', :tenant, true)"), {"tenant": tenant_id}
            )
