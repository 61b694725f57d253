"""Statements a database refuses as such are not "unavailable" (retrying cannot help), on
SQLite and PostgreSQL; an unreachable database is (tests/e2e/test_health.py).
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Executable, select, text
from sqlalchemy.exc import DBAPIError

from simtrack.server.db.models import Agent
from tests.support import Services


def too_many_parameters(backend: str) -> Executable:
    """A statement with one bound parameter more than the database takes."""
    if backend == "postgresql":
        limit = 65_535  # the protocol's (libpq refuses to send more)
    else:
        limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return select(Agent.id).where(Agent.name.in_([f"n{i}" for i in range(limit + 1)]))


async def test_statements_the_database_refuses_are_not_unavailable(services: Services) -> None:
    for statement in (too_many_parameters(services.backend), text("select * from no_such_table")):
        # The driver's error leaves the unit of work as it is: the server logs it and answers
        # INTERNAL with a reference, never UNAVAILABLE ("retry later").
        with pytest.raises(DBAPIError):
            async with services.uow() as uow:
                await uow.session.execute(statement)
