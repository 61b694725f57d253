"""Which database errors a caller is told to retry (UNAVAILABLE): only those that may pass."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from simtrack.server.db.unit_of_work import is_transient


def sqlite_error(message: str, name: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorname = name
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        # PostgreSQL: the server is going away, busy or out of resources; a statement timeout.
        (OperationalError("select 1", {}, psycopg.errors.AdminShutdown("terminating")), True),
        (OperationalError("select 1", {}, psycopg.errors.TooManyConnections("too many")), True),
        (OperationalError("select 1", {}, psycopg.errors.QueryCanceled("timeout")), True),
        (OperationalError("select 1", {}, psycopg.errors.DeadlockDetected("deadlock")), True),
        # Connecting failed: no statement was sent.
        (OperationalError(None, None, psycopg.OperationalError("connection failed")), True),
        # The connection broke under the statement.
        (
            OperationalError(
                "select 1", {}, psycopg.OperationalError("closed"), connection_invalidated=True
            ),
            True,
        ),
        # The statement itself: it fails the same on every retry.
        (
            OperationalError(
                "select ...",
                {},
                psycopg.OperationalError(
                    "sending query and params failed: number of parameters must be between "
                    "0 and 65535"
                ),
            ),
            False,
        ),
        (OperationalError("select 1", {}, psycopg.errors.ProgramLimitExceeded("too big")), False),
        (ProgrammingError("select x", {}, psycopg.errors.UndefinedColumn("no x")), False),
        # SQLite: locked or busy may pass; a program error may not.
        (OperationalError("insert", {}, sqlite_error("database is locked", "SQLITE_BUSY")), True),
        (OperationalError("insert", {}, sqlite_error("disk I/O", "SQLITE_IOERR_WRITE")), True),
        (
            OperationalError("select", {}, sqlite_error("too many SQL variables", "SQLITE_ERROR")),
            False,
        ),
        (OperationalError("select", {}, sqlite_error("no such table: x", "SQLITE_ERROR")), False),
    ],
)
def test_only_faults_that_may_pass_are_transient(error: DBAPIError, transient: bool) -> None:
    assert is_transient(error) is transient
