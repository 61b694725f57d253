"""Engine creation: one async engine for both databases, with each database's settings."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

# A pooled PostgreSQL connection idle this long is pinged before it is handed out.
PING_IDLE_S = 1.0
_IDLE_SINCE = "simtrack_idle_since"
SQLITE_BUSY_TIMEOUT_S = 30  # how long a connection waits for a lock (the writer's, a checkpoint)
# The writer checkpoints itself only once the WAL holds this many pages (64 MiB of 4 KiB
# pages): the server checkpoints in the background (``sqlite_checkpoints``); this is for when
# those fall behind, or no server runs them (the CLI).
WRITER_AUTOCHECKPOINT_PAGES = 16384


def async_url(url: str | URL) -> URL:
    """Give plain ``postgresql://`` and ``sqlite://`` URLs the async drivers simtrack uses."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


def libpq_conninfo(url: str | URL) -> str:
    """The URL as psycopg takes it directly (no SQLAlchemy driver name, password kept)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> str | None:
    """The file of a SQLite URL; None for another database or one in memory (each
    connection to it would be a database of its own).
    """
    parsed = make_url(url)
    database = parsed.database or ""
    if not is_sqlite(parsed) or database in ("", ":memory:") or parsed.query:
        return None
    return database


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection of the server's own to the SQLite file at ``path`` beside the engine's
    (reads, checkpoints): autocommit, usable from the thread that runs it.
    """
    return sqlite3.connect(
        path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def create_engine(
    url: str | URL, *, sqlite_foreign_keys: bool = True, **kwargs: Any
) -> AsyncEngine:
    """An async engine for ``url`` (SQLite: foreign keys on, WAL, one shared connection).

    Migrations turn ``sqlite_foreign_keys`` off: SQLite's batch table copies would cascade.
    """
    target = async_url(url)
    if target.get_backend_name() != "sqlite":
        # Bounded waits: an unreachable database must turn into UNAVAILABLE, not a hung call.
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_timeout", 10)
        engine = create_async_engine(target, connect_args={"connect_timeout": 5}, **kwargs)
        _ping_idle_connections(engine)
        return engine
    # SQLite serialises writers anyway; one connection means no "database is locked" races
    # between our own transactions, and WAL lets other processes (the CLI) read meanwhile.
    if "poolclass" not in kwargs:
        kwargs.update(pool_size=1, max_overflow=0)
    engine = create_async_engine(target, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if sqlite_foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we say so, also on power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # LIKE (a filter's `*` wildcard) as PostgreSQL's: case-sensitive.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        # 32 MiB of page cache (the default is 2 MiB): a group commit of a fleet's small
        # chunks dirties more pages than that, and SQLite then spills them mid-transaction.
        cursor.execute("PRAGMA cache_size=-32768")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Ping a pooled connection on checkout only if it sat idle ``PING_IDLE_S`` or more.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip of four or five on a
    unary read. A connection used a moment ago is alive but for a database restarted within
    that moment; then the first statement fails (UNAVAILABLE, the caller may retry) and
    SQLAlchemy replaces every connection of the pool taken out before the failure.
    """
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)  # None: a new connection (info starts empty)
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                # The pool replaces this connection and every one older (as pre-ping does),
                # then retries.
                raise InvalidatePoolError(f"a pooled connection is gone: {exc}") from exc
            raise
