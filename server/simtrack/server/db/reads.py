"""Unary reads of one statement, outside any unit of work: a run, a page of runs.

A read that is one statement needs no transaction beyond the one the database gives the
statement, and each sees one snapshot. Through a unit of work the same read on PostgreSQL took
five round trips (the pool's ping, BEGIN, the tenant's set_config, the statement, ROLLBACK) and
an ORM session's bookkeeping: 1.4 ms of server CPU per GetRun under 8 callers, five times what
gRPC's own share of a call costs. Here it is one round trip: the reads keep a few autocommit
connections of their own (``pg_reads.py``; checking one out of SQLAlchemy's pool and back
costs 65 µs, most of what the statement costs), no one else's statement ever runs on them, and
each connection's session holds the tenant row-level security reads (``ReadConnection.rows``).
GetRun's version statement and the pages of a metric's history have connections of their own,
their statements prepared (``PreparedConnection``).
The statement is SQLAlchemy's, scoped by tenant as the repositories scope theirs, compiled once
where its shape is fixed; SQLAlchemy's result processors apply to its rows as its own execution
would; rows become entities as the ORM's loader fills them (``Entity.loaded``: attached to no
session, for reading). On SQLite the statement runs on a read-only connection of the reads' own,
on a thread of its own (``sqlite_reads.py``); a database in memory is read through the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import psycopg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    any_,
    bindparam,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import class_mapper
from sqlalchemy.sql.compiler import Compiled, ExpandedState, SQLCompiler
from sqlalchemy.util import LRUCache

from simtrack.errors import InvalidArgument
from simtrack.server.core.listing import Cursor, PageRequest
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.core.tenancy import current_tenant
from simtrack.server.db import models
from simtrack.server.db.chunk_repository import page_read
from simtrack.server.db.chunks import PageChunks, StoredChunk, unpack_many
from simtrack.server.db.engine import libpq_conninfo, sqlite_file
from simtrack.server.db.pg_reads import (
    READ_CONNECTIONS,
    C,
    PreparedConnection,
    ReadConnection,
    ReadConnections,
    numbered,
)
from simtrack.server.db.read_ahead import ReadAhead
from simtrack.server.db.repositories import (
    RunRepository,
    bound_cursor,
    run_page_statements,
    split_page,
)
from simtrack.server.db.run_answers import RunAnswers
from simtrack.server.db.sqlite_reads import SqliteReadConnections, bound_values
from simtrack.server.db.unit_of_work import transient_sqlstate, translate_error, unreachable
from simtrack.server.db.view_rows import (
    CHUNK_VERSION,
    READ_WHOLE_POINTS,
    ViewRead,
    read_view_row,
    view_read,
)

Processor = Callable[[Any], Any]
T = TypeVar("T")
_Compiled = tuple[Compiled, str]
R = TypeVar("R")


class Entity:
    """A model's columns as a statement selects them, and rows of them as entities."""

    def __init__(self, model: type[Any]) -> None:
        self.model = model
        mapper = class_mapper(model)
        self.columns: list[ColumnElement[Any]] = list(model.__table__.columns)
        self.keys = [mapper.get_property_by_column(c).key for c in self.columns]
        self._new = mapper.class_manager.new_instance

    def loaded(self, values: Sequence[Any]) -> Any:
        """An instance holding ``values`` (of ``columns``, in order), as the ORM's loader
        fills one: its attributes read like a loaded row's; it belongs to no session.
        """
        entity = self._new()
        entity.__dict__.update(zip(self.keys, values, strict=True))
        return entity


RUN = Entity(models.Run)
_BY_ID = (models.Run.tenant_id == bindparam("tenant"), models.Run.id == bindparam("id"))
_RUN_BY_ID = select(*RUN.columns).where(*_BY_ID)
_PAGE_READS = {ranged: page_read(ranged) for ranged in (False, True)}
_VIEW_READ = view_read()
# PostgreSQL: a run's version (``RunAnswers``).
_VERSION = models.row_version(models.Run)
_VERSIONED: list[ColumnElement[Any]] = [*RUN.columns, _VERSION]
_RUN_VERSIONED = select(*_VERSIONED).where(*_BY_ID)
_ID_VERSION: list[ColumnElement[Any]] = [models.Run.__table__.c.id, _VERSION]
_VERSIONS = numbered(
    select(*_ID_VERSION).where(
        models.Run.tenant_id == bindparam("tenant"),
        models.Run.id == any_(bindparam("ids", type_=ARRAY(String))),
    )
)
assert _VERSIONS.names == ["tenant", "ids"], "as versions() gives them"
# One run's: PostgreSQL plans the array's statement again at each run (its custom plans: 96 µs
# of its CPU, where this one's generic plan takes 50), and most GetRun calls ask one run.
_VERSION_OF = numbered(select(*_ID_VERSION).where(*_BY_ID))
assert _VERSION_OF.names == ["tenant", "id"], "as versions() gives them"
# A metric's version, as a run's (a page read ahead is given while it holds: read_ahead.py).
_METRIC_VERSION = models.row_version(models.Metric)
_METRIC_VERSION_OF = numbered(
    select(_METRIC_VERSION)
    .select_from(models.Metric)
    .where(
        models.Metric.tenant_id == bindparam("tenant"),
        models.Metric.run_id == bindparam("run"),
        models.Metric.name == bindparam("name"),
    )
)
# A metric's chunks by seq, with their row versions: what a downsampled view reads after its
# first statement.
_CHUNK_FIELDS = [getattr(models.MetricChunk, name) for name in StoredChunk._fields]
_CHUNKS_BY_SEQ = numbered(
    select(*_CHUNK_FIELDS, CHUNK_VERSION).where(
        models.MetricChunk.tenant_id == bindparam("tenant"),
        models.MetricChunk.metric_id == bindparam("metric"),
        models.MetricChunk.seq == any_(bindparam("seqs", type_=ARRAY(BigInteger))),
    )
)
assert _CHUNKS_BY_SEQ.names == ["tenant", "metric", "seqs"], "as chunks() gives them"
# The statements of PreparedConnection, by name: runs' versions, a metric's, a page of history
# (of a step range or not), chunks by seq.
_PAGES = {
    ranged: (name, numbered(page_read(ranged, _METRIC_VERSION)))
    for ranged, name in ((False, b"page"), (True, b"page_ranged"))
}
PREPARED = {
    b"versions": _VERSIONS.sql,
    b"version": _VERSION_OF.sql,
    b"metric_version": _METRIC_VERSION_OF.sql,
    b"chunks": _CHUNKS_BY_SEQ.sql,
} | {name: page.sql for name, page in _PAGES.values()}


async def versions(
    connection: PreparedConnection, tenant: str, run_ids: list[str]
) -> dict[str, int]:
    """The tenant's runs among ``run_ids`` (canonical UUIDs), each with its version."""
    if len(run_ids) == 1:
        result = await connection.execute(
            tenant, b"version", [tenant.encode(), run_ids[0].encode()]
        )
    else:
        ids = ("{" + ",".join(run_ids) + "}").encode()  # UUIDs need no quoting in an array
        result = await connection.execute(tenant, b"versions", [tenant.encode(), ids])
    value = result.get_value
    return {
        bytes(value(row, 0) or b"").decode(): int(value(row, 1) or 0)
        for row in range(result.ntuples)
    }


class _PageAt(NamedTuple):
    """A page of history as ``HistoryReads.page`` is asked for it, by a tenant."""

    tenant: str
    run_id: str
    metric: str
    lo: int
    hi: int
    start: int
    size: int
    limit: int


class SqlReads:
    """Runs, and pages of a metric's history, read one statement at a time (the domain's
    ``RunReads`` and ``HistoryReads``).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        postgres = self.dialect.name == "postgresql"
        conninfo = libpq_conninfo(engine.url)
        self.connections = ReadConnections(conninfo, ReadConnection.connect) if postgres else None
        self.prepared = (
            ReadConnections(conninfo, PreparedConnection.opener(PREPARED)) if postgres else None
        )
        file = sqlite_file(engine.url)
        self.sqlite = None if file is None else SqliteReadConnections(file, READ_CONNECTIONS)
        self._run_by_id = self._compile(_RUN_BY_ID)
        self.answers: RunAnswers | None = None
        if self.connections is not None:
            self._run_versioned = self._compile(_RUN_VERSIONED)
            self._view_read = self._compile(_VIEW_READ)
            self.answers = RunAnswers(self._versions, self._versioned_run)
        # Elsewhere than PostgreSQL (which runs them prepared, _PAGES): SQLAlchemy's own.
        self._page_reads = {
            ranged: (stmt, self._compile(stmt))
            for ranged, stmt in _PAGE_READS.items()
            if self.prepared is None
        }
        self._compiled_cache: LRUCache[Any, Compiled] = LRUCache(500)
        self.ahead = ReadAhead()  # pages read before they are asked for
        self._run_pages: LRUCache[Any, list[tuple[Select[Any], _Compiled]]] = LRUCache(256)
        self._processor_cache: dict[tuple[str, tuple[int | None, ...]], list[Processor | None]] = {}

    async def close(self) -> None:
        if self.connections is not None:
            await self.connections.close()
        await self.ahead.wait()
        if self.prepared is not None:
            await self.prepared.close()
        if self.sqlite is not None:
            await self.sqlite.close()

    async def run(self, run_id: str) -> models.Run | None:
        params = {"tenant": current_tenant(), "id": run_id}
        rows = await self._rows(_RUN_BY_ID, params, self._run_by_id)
        return RUN.loaded(rows[0]) if rows else None

    async def rendered(self, run_id: str, render: Callable[[models.Run], T]) -> T | None:
        """``render(run)``; on PostgreSQL kept while the run's row is unchanged
        (``RunAnswers``). None: the caller's tenant has no such run.
        """
        if self.answers is not None:
            return await self.answers.get(current_tenant(), run_id, render)
        run = await self.run(run_id)
        return None if run is None else render(run)

    async def _versions(self, tenant: str, run_ids: list[str]) -> dict[str, int]:
        assert self.prepared is not None
        return await _on(self.prepared, lambda found: versions(found, tenant, run_ids))

    async def _versioned_run(self, tenant: str, run_id: str) -> tuple[models.Run, int] | None:
        params = {"tenant": tenant, "id": run_id}
        rows = await self._rows(_RUN_VERSIONED, params, self._run_versioned)
        if not rows:
            return None
        *values, version = rows[0]
        return RUN.loaded(values), version

    async def runs(self, page: PageRequest) -> tuple[list[models.Run], Cursor | None]:
        width = len(RUN.columns)
        statements, values = self._run_page_statements(page)
        loaded: list[tuple[models.Run, tuple[Any, ...]]] = []
        for statement, compiled in statements:
            rows = await self._rows(statement, values, compiled)
            loaded += [(RUN.loaded(r[:width]), tuple(r[width:])) for r in rows]
            if len(loaded) > page.size:
                break
        return split_page(loaded, RunRepository.position, page.size)

    def _run_page_statements(
        self, page: PageRequest
    ) -> tuple[list[tuple[Select[Any], _Compiled]], dict[str, Any]]:
        """``run_page_statements`` of ``page``, built and compiled once per shape of page (the
        tenant, the filter and order, the size, which of the cursor's keys are set), and the
        cursor's values to bind: building them cost more of a ListRuns call (5 ms of 13) than
        PostgreSQL took to run them.
        """
        after, values = bound_cursor(models.Run, RunRepository.position, page.after)
        unset = None if page.after is None else tuple(key is None for key in page.after.keys)
        shape = (current_tenant(), page.scope, page.size, unset)
        statements = self._run_pages.get(shape)
        if statements is None:
            shaped = dataclasses.replace(page, after=after)
            statements = [(s, self._compile(s)) for s in run_page_statements(RUN.columns, shaped)]
            self._run_pages[shape] = statements
        return statements, values

    async def page(
        self, run_id: str, metric: str, lo: int, hi: int, start: int, size: int, limit: int
    ) -> PageChunks | None:
        at = _PageAt(current_tenant(), run_id, metric, lo, hi, start, size, limit)

        async def current(page: PageChunks) -> bool:
            return page.version is not None and page.version == await self._metric_version(at)

        if (ahead := await self.ahead.take(at, current)) is not None:
            return ahead
        return await self._page(at)

    async def read_ahead(
        self,
        run_id: str,
        metric: str,
        lo: int,
        hi: int,
        start: int,
        size: int,
        limit: int,
        values: bool = True,
    ) -> None:
        """PostgreSQL (whose pages carry their metric's version): `page` of these read now,
        held for the call that asks for it (``read_ahead.py``); returns once its statement
        is sent.
        """
        if self.prepared is None:
            return
        at = _PageAt(current_tenant(), run_id, metric, lo, hi, start, size, limit)

        async def read() -> PageChunks | None:
            page = await self._page(at)
            if page is None or not page.settled:
                return page
            # Unpacked now too, while the reader takes in the page before: decoding a
            # compacted chunk's columns is most of what a page costs the server.
            return page._replace(columns=unpack_many(page.chunks, values))

        await self.ahead.start(at, read)

    async def _metric_version(self, at: _PageAt) -> int | None:
        assert self.prepared is not None
        values = _METRIC_VERSION_OF.values(
            {"tenant": at.tenant, "run": at.run_id, "name": at.metric}
        )
        result = await _on(
            self.prepared, lambda read: read.execute(at.tenant, b"metric_version", values)
        )
        found = result.get_value(0, 0) if result.ntuples else None
        return None if found is None else int(found)

    async def _page(self, at: _PageAt) -> PageChunks | None:
        ranged = at.lo != INT64_MIN or at.hi != INT64_MAX
        params = {
            "tenant": at.tenant,
            "run": at.run_id,
            "name": at.metric,
            "start": at.start,
            "hi": at.hi,
            "size": at.size,
            "limit": at.limit,
        }
        if ranged:
            params["lo"] = at.lo
        rows = await self._page_rows(ranged, params)
        if not rows:
            return None
        _, metric_id, count, head, bound, within, staged, version = rows[0][:8]
        chunks, edges = [], []
        for row in rows:
            seq, first_step, last_step, n, steps, vals, ts, kind = row[8:]
            if kind == 0:
                chunks.append(StoredChunk(seq, first_step, last_step, n, steps, vals, ts))
            elif kind == 1:
                edges.append((n, first_step, steps))
        return PageChunks(
            metric_id,
            count or 0,
            chunks,
            settled=not staged and (bound is not None or head < at.limit),
            unread=head > len(chunks),
            within=within,
            edges=edges,
            version=version,
        )

    async def _page_rows(self, ranged: bool, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """`page_read`'s rows: numbers and bytes as the driver loads them (nothing for
        SQLAlchemy to process); on PostgreSQL a prepared statement.
        """
        if self.prepared is None:
            stmt, compiled = self._page_reads[ranged]
            return await self._rows(stmt, params, compiled)
        name, page = _PAGES[ranged]
        values, tenant = page.values(params), params["tenant"]
        return await _on(self.prepared, lambda read: read.rows(tenant, name, values))

    async def view(self, run_id: str, metric: str, lo: int, hi: int) -> ViewRead | None:
        """PostgreSQL: `view_read` (its summaries packed by the database); None elsewhere."""
        if self.connections is None:
            return None
        params = {
            "tenant": current_tenant(),
            "run": run_id,
            "name": metric,
            "lo": lo,
            "hi": hi,
            "whole_points": READ_WHOLE_POINTS,
        }
        rows = await self._rows(_VIEW_READ, params, self._view_read)
        return read_view_row(rows[0] if rows else None)

    async def chunks(self, metric_id: str, versions: Mapping[int, int]) -> list[StoredChunk] | None:
        """PostgreSQL: the metric's chunks of ``versions``' seqs still at those row versions, in
        any order; None elsewhere.
        """
        if self.prepared is None:
            return None
        tenant = current_tenant()
        listed = ("{" + ",".join(str(int(seq)) for seq in versions) + "}").encode()
        values: list[bytes | None] = [tenant.encode(), metric_id.encode(), listed]
        rows = await _on(self.prepared, lambda read: read.rows(tenant, b"chunks", values))
        return [StoredChunk(*row[:-1]) for row in rows if versions.get(row[0]) == row[-1]]

    async def _rows(
        self,
        stmt: Select[Any],
        params: dict[str, Any] | None = None,
        compiled_stmt: _Compiled | None = None,
    ) -> Sequence[Sequence[Any]]:
        if self.sqlite is not None:
            return await self._sqlite_rows(stmt, params, compiled_stmt)
        if self.connections is None:
            return await self._sqlalchemy_rows(stmt, params)
        if compiled_stmt is not None:
            compiled, text = compiled_stmt
            values = compiled.construct_params(params)
        else:
            text, values = self._cached(stmt)
        tenant = current_tenant()
        rows, types = await _on(self.connections, lambda read: read.rows(tenant, text, values))
        return self._processed(stmt, text, types, rows)

    async def _sqlite_rows(
        self, stmt: Select[Any], params: dict[str, Any] | None, compiled_stmt: _Compiled | None
    ) -> Sequence[Sequence[Any]]:
        """The statement on a read connection of its own, its values bound as SQLAlchemy's
        own execution binds them (UTC times as SQLite's text, JSON, enums).
        """
        assert self.sqlite is not None
        if compiled_stmt is not None:
            sql = cast(SQLCompiler, compiled_stmt[0])
            state = sql.construct_expanded_state(sql.construct_params(params))
        else:
            sql, state = self._expanded(stmt)
        # (A tuple IN's processors, a sequence, never reach the reads' statements.)
        rows = await self.sqlite.rows(state.statement, bound_values(sql, state))
        return self._processed(stmt, state.statement, (None,) * len(stmt.selected_columns), rows)

    def _processed(
        self,
        stmt: Select[Any],
        text: str,
        types: tuple[int | None, ...],
        rows: Sequence[Sequence[Any]],
    ) -> Sequence[Sequence[Any]]:
        processors = self._processors(stmt, text, types)
        if not any(processors):  # a page's chunks: numbers and bytes as the driver gave them
            return rows
        return [
            [value if p is None else p(value) for p, value in zip(processors, row, strict=True)]
            for row in rows
        ]

    def _compile(self, stmt: Select[Any]) -> _Compiled:
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
        return compiled, str(compiled)

    def _cached(self, stmt: Select[Any]) -> tuple[str, dict[str, Any]]:
        """``stmt``'s SQL and values, compiled once per shape (as SQLAlchemy's own execution
        caches compilations: by the statement's cache key, its values taken out): compiling a
        listing's statement cost more than a third of a ListRuns call's own time.
        """
        _, state = self._expanded(stmt)
        return state.statement, dict(state.parameters)

    def _expanded(self, stmt: Select[Any]) -> tuple[SQLCompiler, ExpandedState]:
        compiled, extracted, _, _ = stmt._compile_w_cache(  # noqa: SLF001 - as execute() does
            self.dialect, compiled_cache=self._compiled_cache, column_keys=[]
        )
        sql = cast(SQLCompiler, compiled)
        values = sql.construct_params(extracted_parameters=extracted)
        return sql, sql.construct_expanded_state(values)  # IN lists rendered for these values

    def _processors(
        self, stmt: Select[Any], text: str, types: tuple[int | None, ...]
    ) -> list[Processor | None]:
        """Each column's result processor, as SQLAlchemy's own execution would apply them
        (enums, UTC datetimes), for the types the database answered with.
        """
        key = (text, types)
        found = self._processor_cache.get(key)
        if found is None:
            if len(self._processor_cache) > 256:  # listings vary: a bounded memory
                self._processor_cache.clear()
            found = [
                c.type.dialect_impl(self.dialect).result_processor(self.dialect, code)
                for c, code in zip(stmt.selected_columns, types, strict=True)
            ]
            self._processor_cache[key] = found
        return found

    async def _sqlalchemy_rows(
        self, stmt: Select[Any], params: dict[str, Any] | None
    ) -> Sequence[Sequence[Any]]:
        try:
            async with self.engine.connect() as connection:
                return list((await connection.execute(stmt, params)).all())
        except DBAPIError as exc:
            if (ours := translate_error(exc)) is not None:
                raise ours from exc
            raise


async def _on(pool: ReadConnections[C], read: Callable[[C], Awaitable[R]]) -> R:
    """``read(connection)`` on a connection of ``pool``. A connection the database dropped (a
    restart) fails the statement: once more on a new one. A read may run twice.
    """
    for attempt in range(2):
        async with pool.connection() as connection:
            try:
                return await read(connection)
            except psycopg.Error as exc:
                broken = connection.broken
                if broken and attempt == 0:
                    continue
                if (ours := _translated(exc, broken)) is not None:
                    raise ours from exc
                raise
    raise AssertionError("unreachable: the second attempt returns or raises")


def _translated(exc: psycopg.Error, broken: bool) -> Exception | None:
    """A driver error as the unit of work would leave it (``translate_error``); None: as it
    is.
    """
    if isinstance(exc, psycopg.DataError):
        return InvalidArgument.of("request", "a value the database cannot store")
    sqlstate = exc.sqlstate
    if broken or (isinstance(exc, psycopg.OperationalError) and transient_sqlstate(sqlstate or "")):
        return unreachable()
    return None
