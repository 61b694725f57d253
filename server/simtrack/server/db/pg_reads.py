"""The reads' own PostgreSQL connections (``reads.py``): autocommit, each used by one read at a
time, each session holding the tenant row-level security reads.

Two kinds, kept in pools alike (``ReadConnections``):

* ``ReadConnection``: any statement, through a psycopg cursor (SQLAlchemy's statements, rows
  loaded by psycopg, processed as SQLAlchemy would);
* ``PreparedConnection``: a few fixed statements, prepared when the connection opens, run
  through libpq's own calls (``psycopg.pq``), the socket keeping its reader: runs' versions,
  which GetRun asks at every call (``run_answers.py``), and pages of a metric's history. Through
  a cursor a version took 120 µs of the server's CPU (adapting the values, prepared statements'
  bookkeeping, a reader added to the event loop and removed at each wait), here 50; a page of
  100,000 points (2.4 MB from the database) 3.1 ms, here 2: a cursor's wait adds and removes
  its reader, a timer and a future at each of the hundred times the socket has more of it.
  Nothing else uses such a connection: psycopg's own waits would take the reader over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.pq.abc import PGresult
from sqlalchemy import Select
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from simtrack.errors import Unavailable
from simtrack.server.db.unit_of_work import unreachable

READ_CONNECTIONS = 8  # at most, per pool and server process
CHECKOUT_TIMEOUT_S = 10  # as the engine's pool_timeout
CONNECT_TIMEOUT_S = 5  # as the engine's
_TELL_TENANT = "select set_config('app.tenant_id', %s, false)"  # the session's: see rows()
_TELL_TENANT_NUMBERED = b"select set_config('app.tenant_id', $1, false)"


class _Connection(Protocol):
    @property
    def broken(self) -> bool: ...

    async def close(self) -> None: ...


C = TypeVar("C", bound=_Connection)


async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.OperationalError as exc:
        raise unreachable() from exc


class ReadConnections(Generic[C]):
    """At most ``size`` connections made by ``connect(conninfo)``, each used by one read at a
    time; made when first needed, kept while they work. A broken one (a restart) drops every
    idle one: they went with it.
    """

    def __init__(
        self,
        conninfo: str,
        connect: Callable[[str], Awaitable[C]],
        size: int = READ_CONNECTIONS,
    ) -> None:
        self.conninfo = conninfo
        self._connect = connect
        self._idle: list[C] = []
        self._free = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[C]:
        if self._free.locked():  # timed only when it has to wait (a timer costs a GetRun 5%)
            try:
                async with asyncio.timeout(CHECKOUT_TIMEOUT_S):
                    await self._free.acquire()
            except TimeoutError:
                raise Unavailable("the database's connections are all busy; retry later") from None
        else:
            await self._free.acquire()
        try:
            connection = self._idle.pop() if self._idle else await self._connect(self.conninfo)
            try:
                yield connection
            finally:
                if connection.broken:
                    await connection.close()
                    await self.close()
                else:
                    self._idle.append(connection)
        finally:
            self._free.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()


class ReadConnection:
    """A connection of the reads, and the tenant its session was last told (None: unknown)."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.tenant: str | None = None

    @classmethod
    async def connect(cls, conninfo: str) -> ReadConnection:
        return cls(await _connect(conninfo))

    @property
    def broken(self) -> bool:
        return self.connection.broken or self.connection.closed

    async def close(self) -> None:
        await self.connection.close()

    async def rows(
        self, tenant: str, text: str, values: Mapping[str, Any] | None
    ) -> tuple[list[tuple[Any, ...]], tuple[int, ...]]:
        """The statement's rows as ``tenant`` (row-level security's input), and the type of
        each column; one round trip.

        The tenant is the session's (``set_config(..., false)``): no one but the reads uses
        this connection, and each read tells its tenant first, so a read after another of the
        same tenant is the statement alone. Told in a pipeline with the statement, in the same
        implicit transaction: if the statement fails, the setting is rolled back with it.
        """
        connection = self.connection
        if self.tenant == tenant:
            cursor = connection.cursor(binary=True)
            await cursor.execute(text, values)
        else:
            self.tenant = None
            async with connection.pipeline():
                await connection.cursor().execute(_TELL_TENANT, (tenant,))
                cursor = connection.cursor(binary=True)
                await cursor.execute(text, values)
            self.tenant = tenant
        rows = await cursor.fetchall()
        # The result's own type codes: ``cursor.description`` builds an object per column
        # each call, a tenth of a GetRun's server time.
        result = cursor.pgresult
        types = () if result is None else tuple(result.ftype(i) for i in range(result.nfields))
        return rows, types


_NUMBERED = psycopg_dialect.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


class Numbered(NamedTuple):
    """A statement as PostgreSQL's own text (``$1``, ``$2``: what libpq prepares) and its
    values' names in their order, with the values SQLAlchemy bound itself (its literals).
    """

    sql: bytes
    names: list[str]
    bound: dict[str, Any]

    def values(self, given: Mapping[str, Any]) -> list[bytes | None]:
        """The statement's values as text, in order: ``given``'s, else its own."""
        found = (given[name] if name in given else self.bound[name] for name in self.names)
        return [None if value is None else str(value).encode() for value in found]


def numbered(stmt: Select[Any]) -> Numbered:
    compiled = stmt.compile(dialect=_NUMBERED)
    return Numbered(str(compiled).encode(), list(compiled.positiontup or ()), compiled.params)


class PreparedConnection:
    """A connection running the statements it prepared when it opened (``statements``: name
    -> numbered SQL, ``numbered``) through libpq's own calls, one at a time, as a tenant.
    """

    _TELL = b"tell"

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.tenant: str | None = None
        self._pgconn = connection.pgconn
        self._loop = asyncio.get_running_loop()
        self._socket = self._pgconn.socket
        self._waiter: asyncio.Future[None] | None = None
        self._error: psycopg.Error | None = None  # set: the connection is lost to us
        self._pgconn.nonblocking = 1
        self._loop.add_reader(self._socket, self._readable)
        self._loader = Transformer(connection)

    @classmethod
    def opener(
        cls, statements: Mapping[bytes, bytes]
    ) -> Callable[[str], Awaitable[PreparedConnection]]:
        """``connect(conninfo)``: a new connection, its statements prepared."""

        async def connect(conninfo: str) -> PreparedConnection:
            opened = cls(await _connect(conninfo))
            try:
                await opened._prepare(cls._TELL, _TELL_TENANT_NUMBERED)
                for name, sql in statements.items():
                    await opened._prepare(name, sql)
            except BaseException:
                await opened.close()
                raise
            return opened

        return connect

    async def execute(
        self, tenant: str, name: bytes, values: list[bytes | None], binary: bool = False
    ) -> PGresult:
        """Statement ``name``'s result as ``tenant`` (row-level security's input), its values
        as text, its columns as text or ``binary``: the session is told its tenant first when
        it holds another.
        """
        await self._tell(tenant)
        form = pq.Format.BINARY if binary else pq.Format.TEXT
        self._send(lambda: self._pgconn.send_query_prepared(name, values, result_format=form))
        return await self._result(pq.ExecStatus.TUPLES_OK)

    async def rows(
        self, tenant: str, name: bytes, values: list[bytes | None]
    ) -> list[tuple[Any, ...]]:
        """Statement ``name``'s rows as ``tenant``, its columns binary and loaded as psycopg
        loads a cursor's (numbers, bytes: no text to parse).
        """
        result = await self.execute(tenant, name, values, binary=True)
        self._loader.set_pgresult(result, format=pq.Format.BINARY)
        return self._loader.load_rows(0, result.ntuples, tuple)

    async def _tell(self, tenant: str) -> None:
        """The session's tenant (``ReadConnection.rows``: no one else uses the connection)."""
        if self.tenant != tenant:
            self.tenant = None
            self._send(lambda: self._pgconn.send_query_prepared(self._TELL, [tenant.encode()]))
            await self._result(pq.ExecStatus.TUPLES_OK)
            self.tenant = tenant

    @property
    def broken(self) -> bool:
        return self._error is not None or self.connection.broken or self.connection.closed

    async def close(self) -> None:
        self._lose(psycopg.OperationalError("the connection is closed"))
        await self.connection.close()

    async def _prepare(self, name: bytes, sql: bytes) -> None:
        self._send(lambda: self._pgconn.send_prepare(name, sql))
        await self._result(pq.ExecStatus.COMMAND_OK)

    def _send(self, send: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        try:
            send()
        except psycopg.Error as exc:
            self._lose(exc)
            raise

    async def _result(self, expected: pq.ExecStatus) -> PGresult:
        """The statement's one result, once all of it has come (``expected``, or its error
        raised). Cancelled half-way, the connection is given up: its answer is still coming.
        """
        pgconn = self._pgconn
        found: PGresult | None = None
        try:
            while pgconn.flush():  # what the socket did not take yet (a long list of ids)
                await self._writable()
            while True:
                while pgconn.is_busy():
                    self._waiter = self._loop.create_future()
                    await self._waiter
                result = pgconn.get_result()
                if result is None:
                    break
                if found is None:
                    found = result
        except psycopg.Error as exc:
            self._lose(exc)
            raise
        except BaseException:
            self._lose(psycopg.OperationalError("a statement was cancelled half-way"))
            raise
        if found is None or found.status != expected:
            if found is not None and found.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(found, encoding="utf-8")
            self._lose(psycopg.OperationalError("an unexpected answer from the database"))
            raise self._error  # type: ignore[misc]  # set by _lose
        return found

    async def _writable(self) -> None:
        ready = self._loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._socket, writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._socket)

    def _readable(self) -> None:
        try:
            self._pgconn.consume_input()
        except psycopg.Error as exc:  # the connection is gone (a restart)
            self._lose(exc)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self._pgconn.is_busy():
            waiter.set_result(None)

    def _lose(self, error: psycopg.Error) -> None:
        """Nothing more on this connection: its reader goes (a closed socket is always
        readable), whoever waits gets ``error``.
        """
        if self._error is None:
            self._error = error
            self._loop.remove_reader(self._socket)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
