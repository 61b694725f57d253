"""Alembic environment: the models' metadata, the URL from simtrack's settings.

The URL comes from ``config.attributes["url"]`` when simtrack (or a test) runs Alembic itself,
else from ``-x url=...``, else from SIMTRACK_DATABASE_URL like the server.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from alembic import context
from simtrack.server.config import Settings
from simtrack.server.db.engine import async_url, create_engine
from simtrack.server.db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return str(url or Settings().database_url)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # New migrations spell our UTC type as the plain column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An index the models make on one database only (``ddl_if``) is compared there only."""
    if type_ == "index" and not reflected:
        made_if = getattr(obj, "_ddl_if", None)  # SQLAlchemy keeps ddl_if() there
        dialect = context.get_context().dialect
        if made_if is not None and made_if.dialect not in (None, dialect.name):
            return False
    return True


def run_migrations_offline() -> None:
    context.configure(
        url=async_url(database_url()).render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # Batch migrations copy tables; with foreign keys on, dropping the old copy would
        # cascade-delete child rows. Off for the migration only (it is per connection).
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # end the implicit transaction so Alembic's own one commits
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        render_item=render_item,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool, sqlite_foreign_keys=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
