"""The reads' own connections to a SQLite file, each on a thread of its own.

Through SQLAlchemy's engine a read on SQLite takes the server's one connection (the writer's
too) and five hops to aiosqlite's thread and back (cursor, statement, rows, close, rollback):
1.1 ms of server CPU per GetRun under 8 callers, twice PostgreSQL's. Here a read is one hop: its
statement and rows on a thread that keeps a connection of its own. Reads run beside each other
and beside the writer's transactions: in WAL mode a reader sees the last commit and never waits
for a writer. The connections are read-only (``query_only``) and autocommit: each statement is
its own snapshot, as each read is one statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import ExpandedState, SQLCompiler

from simtrack.errors import InvalidArgument, Unavailable
from simtrack.server.db.engine import sqlite_connection


def bound_values(compiled: SQLCompiler, state: ExpandedState) -> list[Any]:
    """A compiled statement's positional values, bound as SQLAlchemy's own execution binds
    them (UTC times as SQLite's text, JSON, enums; an expanded IN list's members have their
    processors in ``state``).
    """
    bind: dict[str, Any] = {**compiled._bind_processors, **state.processors}  # noqa: SLF001
    return [
        bind[name](state.parameters[name]) if name in bind else state.parameters[name]
        for name in state.positiontup or ()
    ]


class SqliteReadConnections:
    """At most ``size`` threads, each with its own read-only connection to ``path``, made when
    the thread first reads.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="simtrack-read")
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def rows(self, text: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The statement's rows (``values``: its positional parameters)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._read, text, values)
        except (OverflowError, sqlite3.DataError, sqlite3.InterfaceError) as exc:
            raise InvalidArgument.of("request", "a value the database cannot store") from exc
        except sqlite3.OperationalError as exc:  # busy past the timeout, the disk, ...
            raise Unavailable("the database could not be read; retry later") from exc

    async def select(self, stmt: Select[*tuple[Any, ...]], dialect: Dialect) -> list[list[Any]]:
        """``stmt``'s rows, its values bound and its columns converted as SQLAlchemy's own
        execution would; compiled at each call (for statements run a few times a second).
        """
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        state = compiled.construct_expanded_state(compiled.construct_params())
        rows = await self.rows(state.statement, bound_values(compiled, state))
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in stmt.selected_columns
        ]
        return [
            [value if p is None else p(value) for p, value in zip(processors, row, strict=True)]
            for row in rows
        ]

    def _read(self, text: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._connection().execute(text, values).fetchall()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite_connection(self.path)
            connection.execute("PRAGMA query_only=ON")
            # LIKE (a filter's `*` wildcard) as the engine's connections have it: case-sensitive.
            connection.execute("PRAGMA case_sensitive_like=ON")
            with self._lock:
                self._opened.append(connection)
            self._local.connection = connection
        return connection

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
