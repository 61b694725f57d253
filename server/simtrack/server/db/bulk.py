"""Bulk statements compiled once for a dialect and run straight on the DBAPI driver.

The ingest writer (``db/ingest_store.py``) issues the same handful of statements thousands of
times a second; going through a Session, or even Core's execute, costs more Python per batch
than gRPC does. So each statement is compiled once from the models — the SQL and the type
conversions stay SQLAlchemy's — and its rows' parameters are made by a function written for
it. PostgreSQL: a statement's rows travel as one JSON document (``json_to_recordset``), their
bytes beside it as binary arrays; SQLite: ``executemany``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ClauseElement,
    ColumnElement,
    LargeBinary,
    Text,
    bindparam,
    cast,
    column,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import ARRAY, TypeEngine

from simtrack.server.db.models import Base

_PYFORMAT = re.compile(r"(?<!%)%\((\w+)\)s")
ROWS = "rows"  # the parameter holding a statement's rows as one JSON document (PostgreSQL)
ORDINAL = "i"  # each JSON row's place, to line it up with its binary columns' arrays


def _json_value(value: Any) -> Any:
    """What orjson leaves out, as PostgreSQL reads it back: durations exactly (it writes times
    in RFC 3339 itself; bytes do not go in the document).
    """
    if isinstance(value, timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    raise TypeError(f"{type(value).__name__} has no JSON form here")


def rows_json(rows: Sequence[Mapping[str, Any]], binary: Sequence[str]) -> str:
    """The rows as one JSON array of objects. Their ``binary`` columns travel beside it as
    arrays, so each object then carries its place instead (``ORDINAL``, from 1) to meet them.
    Every float the writer stores is finite (the summaries skip NaN and the infinities), so
    orjson's NaN-as-null never applies.
    """
    if binary:
        skip = set(binary)
        rows = [
            {**{k: v for k, v in row.items() if k not in skip}, ORDINAL: i}
            for i, row in enumerate(rows, start=1)
        ]
    return orjson.dumps(rows, default=_json_value).decode()


def _converter(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """How a parameter of ``type_`` is converted for the driver (None: it is not)."""
    if isinstance(type_, ARRAY):  # convert the items; a list of plain values is sent as is
        if isinstance(type_.item_type, LargeBinary):
            return None
        convert = type_.item_type.dialect_impl(dialect).bind_processor(dialect)
        return None if convert is None else lambda values: [convert(v) for v in values]
    if isinstance(type_, LargeBinary):  # both drivers take bytes as they are
        return None
    return type_.dialect_impl(dialect).bind_processor(dialect)


# One row's parameters for a statement: (the row, the shared values converted).
_RowMaker = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[Any, ...] | dict[str, Any]]


class Compiled:
    """A statement compiled once for a dialect, with the bind/result conversions it needs."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        if dialect.driver == "psycopg":
            # %(name)b: psycopg sends the parameter in binary — bytea as is, not hex-escaped.
            self.sql = _PYFORMAT.sub(r"%(\1)b", self.sql)
        self.positional = compiled.positional
        binds = list(compiled.binds.values())
        if self.positional:  # the parameters in their placeholders' order
            order = {name: i for i, name in enumerate(compiled.positiontup or ())}
            binds.sort(key=lambda b: order[compiled.bind_names[b]])
        self._binds = [(b.key, compiled.bind_names[b], _converter(b.type, dialect)) for b in binds]
        # PostgreSQL: the columns sent as arrays beside the JSON rows (bytes, in binary).
        self.arrays = [b.key for b in binds if isinstance(b.type, ARRAY)]
        self._dialect = dialect
        self._makers: dict[frozenset[str], _RowMaker] = {}  # by shared columns
        self._columns = list(getattr(statement, "selected_columns", ()))
        self._results: list[Callable[[Any], Any] | None] | None = None

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """Parameters for one execution."""
        return self.params_many([values], {})[0]

    def params_many(
        self, rows: Sequence[Mapping[str, Any]], shared: Mapping[str, Any]
    ) -> list[tuple[Any, ...] | dict[str, Any]]:
        """Parameters for ``executemany``: each row's values, with ``shared`` (the same for
        every row) converted once.
        """
        once = {key: process(shared[key]) if process else shared[key]
                for key, _, process in self._binds if key in shared}  # fmt: skip
        make = self._row_maker(frozenset(once))
        return [make(row, once) for row in rows]

    def _row_maker(self, shared: frozenset[str]) -> _RowMaker:
        """A function making one row's parameters, written for this statement and these
        shared columns (as ``dataclasses`` writes ``__init__``): a fleet's commit binds some
        ten thousand rows of fifteen values a second, and the generic loop over each value
        was a fifth of the server's main thread under load.
        """
        maker = self._makers.get(shared)
        if maker is None:
            processors: dict[str, Callable[[Any], Any]] = {}
            values = []
            for i, (key, name, process) in enumerate(self._binds):
                if key in shared:
                    value = f"once[{key!r}]"
                elif process is not None:
                    processors[f"p{i}"] = process
                    value = f"p{i}(row[{key!r}])"
                else:
                    value = f"row[{key!r}]"
                values.append(value if self.positional else f"{name!r}: {value}")
            body = f"({', '.join(values)},)" if self.positional else f"{{{', '.join(values)}}}"
            made: _RowMaker = eval(f"lambda row, once: {body}", processors)  # noqa: S307
            maker = self._makers[shared] = made
        return maker

    def rows(
        self, type_codes: Sequence[Any] | None, raw: Iterable[Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """Result rows converted as the columns' types convert them (once the driver said
        what it returned: PostgreSQL's numeric conversions depend on the type code).
        """
        if self._results is None:
            codes = type_codes or [None] * len(self._columns)
            self._results = [
                column.type.dialect_impl(self._dialect).result_processor(self._dialect, code)
                for column, code in zip(self._columns, codes, strict=True)
            ]
        processors = self._results
        return [
            tuple(p(value) if p else value for p, value in zip(processors, row, strict=True))
            for row in raw
        ]


def row_source(
    model: type[Base], names: Sequence[str], postgres: bool, shared: Sequence[str] = ()
) -> tuple[dict[str, Any], ColumnElement[bool] | None]:
    """Where a bulk write's values come from, by column name; ``shared`` columns take one
    value for all rows (a parameter of their own). With them, the condition that lines the
    rows' parts up, if they come in two.

    SQLite: one parameter per column, the statement executed once per row (``executemany``:
    one call into aiosqlite's thread). PostgreSQL: the rows as one JSON document, read by
    ``json_to_recordset`` — the whole batch is one statement, so neither the server nor psycopg
    handles each value on its own (psycopg dumps a list parameter value by value, in Python:
    most of the writer's time when a fleet sends many small rows) — but for the binary columns:
    one array each (bytes in binary, where JSON would make the server parse them as text),
    unnested and met by each JSON row's number.
    """
    types = {name: getattr(model, name).type for name in names}
    source: dict[str, Any] = {name: bindparam(name, type_=types[name]) for name in shared}
    varying = [name for name in names if name not in shared]
    if not postgres:
        source.update({name: bindparam(name, type_=types[name]) for name in varying})
        return {name: source[name] for name in names}, None
    binary = [name for name in varying if isinstance(types[name], LargeBinary)]
    columns = [column(name, types[name]) for name in varying if name not in binary]
    if binary:
        columns.append(column(ORDINAL, BigInteger()))
    document = cast(bindparam(ROWS, type_=Text()), postgresql.JSON)
    rows = func.json_to_recordset(document).table_valued(*columns)
    json_rows = rows.render_derived("v", with_types=True)  # AS v(a TEXT, b BIGINT, ...)
    source.update({c.name: json_rows.c[c.name] for c in columns if c.name != ORDINAL})
    if not binary:
        return {name: source[name] for name in names}, None
    arrays = [bindparam(name, type_=postgresql.ARRAY(types[name])) for name in binary]
    unnested = func.unnest(*arrays).table_valued(*binary, with_ordinality=ORDINAL)
    blobs = unnested.render_derived("b")  # WITH ORDINALITY AS b(steps, ..., i)
    source.update({name: blobs.c[name] for name in binary})
    return {name: source[name] for name in names}, json_rows.c[ORDINAL] == blobs.c[ORDINAL]


def bulk_insert(
    model: type[Base], names: Sequence[str], postgres: bool, shared: Sequence[str] = ()
) -> Any:
    """INSERT of many rows (the dialect's insert, so an ON CONFLICT clause can follow)."""
    source, lined_up = row_source(model, names, postgres, shared)
    if postgres:
        rows = select(*source.values())
        if lined_up is not None:
            rows = rows.where(lined_up)
        return postgresql.insert(model).from_select(list(names), rows)
    return sqlite.insert(model).values(source)


def bulk_update(
    model: type[Base], names: Sequence[str], postgres: bool, shared: Sequence[str] = ()
) -> ClauseElement:
    """UPDATE of many rows by id: ``names`` are the id and the columns set (not binary)."""
    source, lined_up = row_source(model, ("id", *names), postgres, shared)
    assert lined_up is None, "an update of binary columns"
    primary: Any = model.id  # type: ignore[attr-defined]
    return update(model).where(primary == source["id"]).values({n: source[n] for n in names})
