"""The unit of work: one short transaction, its repositories, and database errors translated.

``async with uow_factory() as uow: ...; await uow.commit()`` — leaving the block without commit
rolls back. Database errors leave the block as simtrack errors, so no caller sees SQLAlchemy's.
It implements the domain's ``UnitOfWork`` protocol (``simtrack.server.domain.ports``), which is
all the domain services see of it; mypy checks the fit where app.py hands it to them.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from simtrack.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from simtrack.server.core.tenancy import current_principal_or_none
from simtrack.server.db.chunk_repository import ChunkRepository
from simtrack.server.db.repositories import (
    AccessRepository,
    AgentRepository,
    ArtifactRepository,
    EventRepository,
    ExperimentRepository,
    MetricRepository,
    ParticipantRepository,
    RunRepository,
    SimulationRepository,
    TemplateRepository,
    ValidationRepository,
)

# SQLSTATE classes (PostgreSQL) and message prefixes (SQLite) of constraint violations.
_UNIQUE = ("23505", "UNIQUE constraint failed")
_FOREIGN_KEY = ("23503", "FOREIGN KEY constraint failed")
_CHECK = ("23514", "CHECK constraint failed")
# Faults that pass by themselves: PostgreSQL SQLSTATE classes (connection exception,
# insufficient resources, operator intervention e.g. shutdown or statement timeout) and codes
# (serialization failure, deadlock, lock not available, I/O error); SQLite result codes
# (extended codes start with these).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = ("40001", "40P01", "55P03", "58030")
_TRANSIENT_SQLITE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
)


def is_transient(error: DBAPIError) -> bool:
    """Whether retrying later may succeed: the database was unreachable or busy, not the
    statement wrong. A statement the database refuses as such (too many parameters, a
    program error) fails the same way on every retry, so it is no reason to say "retry".
    """
    if error.connection_invalidated:
        return True  # the connection broke under the statement
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    if error.statement is None:
        return True  # raised while connecting: no statement had been sent
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return transient_sqlstate(sqlstate)
    sqlite_code = getattr(orig, "sqlite_errorname", None)
    return isinstance(sqlite_code, str) and sqlite_code.startswith(_TRANSIENT_SQLITE)


def transient_sqlstate(sqlstate: str) -> bool:
    """Whether PostgreSQL's SQLSTATE names a fault that passes by itself (see is_transient)."""
    return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES


def translate_integrity_error(error: IntegrityError) -> Exception:
    """Map a constraint violation the service layer did not catch first (a race) to our errors."""
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or ""
    text = str(orig)
    # PostgreSQL names the constraint; SQLite's message ends with it (or the column).
    constraint = (
        getattr(getattr(orig, "diag", None), "constraint_name", None) or (text.rsplit(": ", 1)[-1])
    )

    def matches(kind: tuple[str, str]) -> bool:
        return sqlstate == kind[0] or text.startswith(kind[1])

    if matches(_UNIQUE):
        return AlreadyExists(f"an object with the same unique key exists ({constraint})")
    if matches(_FOREIGN_KEY):
        return FailedPrecondition(f"the change would break a reference ({constraint})")
    if matches(_CHECK):
        return InvalidArgument.of(constraint, "value out of range")
    return FailedPrecondition("the change violates a database constraint")


def translate_error(exc: BaseException) -> Exception | None:
    """The simtrack error a database error leaves a unit of work (or a read) as; None: not a
    database error of the caller's doing or a transient one (it stays as it is).
    """
    if isinstance(exc, IntegrityError):
        return translate_integrity_error(exc)
    if isinstance(exc, DataError):
        # Values the service layer should have refused already; still the caller's doing.
        return InvalidArgument.of("request", "a value the database cannot store")
    if isinstance(exc, DBAPIError) and is_transient(exc):
        return unreachable()
    return None


def unreachable() -> Unavailable:
    return Unavailable("the database is unreachable; retry later")


class SqlUnitOfWork:
    """Repositories sharing one session and one transaction (the domain's ``UnitOfWork``)."""

    agents: AgentRepository
    templates: TemplateRepository
    experiments: ExperimentRepository
    simulations: SimulationRepository
    runs: RunRepository
    participants: ParticipantRepository
    metrics: MetricRepository

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def __aenter__(self) -> SqlUnitOfWork:
        self.session = self._sessions()
        self.access = AccessRepository(self.session)
        self.agents = AgentRepository(self.session)
        self.templates = TemplateRepository(self.session)
        self.experiments = ExperimentRepository(self.session)
        self.simulations = SimulationRepository(self.session)
        self.runs = RunRepository(self.session)
        self.participants = ParticipantRepository(self.session)
        self.metrics = MetricRepository(self.session)
        self.chunks = ChunkRepository(self.session)
        self.events = EventRepository(self.session)
        self.validations = ValidationRepository(self.session)
        self.artifacts = ArtifactRepository(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing hands the connection back to the pool, which rolls back whatever was not
        # committed; unlike rollback() it leaves loaded objects readable for the caller.
        # Shielded: a call cancelled again while it closes (a client that left) must still
        # return the connection, not leave it for the garbage collector to reset.
        await asyncio.shield(self.session.close())
        if exc is not None and (ours := translate_error(exc)) is not None:
            raise ours from exc

    async def commit(self) -> None:
        await self.session.commit()

    async def read_snapshot(self) -> None:
        """One snapshot for the whole unit of work (call before its first statement).

        PostgreSQL: REPEATABLE READ (at the default READ COMMITTED each statement sees what
        had committed when it started). SQLite: an explicit BEGIN; the driver would otherwise
        run each SELECT outside a transaction, each its own snapshot (with WAL, a read
        transaction keeps its snapshot while writers commit).
        """
        if self.session.get_bind().dialect.name == "postgresql":
            await self.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:
            connection = await self.session.connection()
            await connection.exec_driver_sql("BEGIN")


class TenantScopedSession(Session):
    """A session whose every transaction tells PostgreSQL the caller's tenant."""


@event.listens_for(TenantScopedSession, "after_begin")
def _tell_postgres_the_tenant(session: Session, _tx: Any, connection: Connection) -> None:
    # Row-level security's input, for this transaction only (set_config(..., true)).
    principal = current_principal_or_none()
    if principal is not None and connection.dialect.name == "postgresql":
        connection.execute(
            text("select set_config('app.tenant_id', :tenant, true)"),
            {"tenant": principal.tenant_id},
        )


def tenant_aware_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The session factory the server's units of work use."""
    return async_sessionmaker(
        engine, expire_on_commit=False, sync_session_class=TenantScopedSession
    )


class SqlUnitOfWorkFactory:
    """Makes units of work on one session factory; what the service layer is given."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.sessions)
