"""The server's WAL checkpoints of a SQLite file, beside the writer (``db/sqlite_checkpoints``)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy import text

from simtrack.server.db.engine import WRITER_AUTOCHECKPOINT_PAGES, create_engine
from simtrack.server.db.sqlite_checkpoints import WalCheckpoints

ROWS = 40
ROW_BYTES = 50_000  # 2 MB in all: far below the writer's backstop, so only we checkpoint it


def _rows_in_main_file(database: Path, copy: Path) -> int:
    """The rows the database file holds by itself, without its WAL (a copy of the file alone
    opened: what is only in the WAL is not there).
    """
    shutil.copyfile(database, copy)
    connection = sqlite3.connect(copy)
    try:
        if not connection.execute("select 1 from sqlite_master where name = 'blobs'").fetchone():
            return 0  # not even the table
        return int(connection.execute("select count(*) from blobs").fetchone()[0])
    finally:
        connection.close()


async def test_the_writer_checkpoints_only_past_its_backstop(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        async with engine.connect() as connection:
            pages = await connection.scalar(text("PRAGMA wal_autocheckpoint"))
            mode = await connection.scalar(text("PRAGMA journal_mode"))
    finally:
        await engine.dispose()
    assert (mode, pages) == ("wal", WRITER_AUTOCHECKPOINT_PAGES)


async def test_checkpoints_move_commits_into_the_file_while_the_writer_writes(
    tmp_path: Path,
) -> None:
    database = tmp_path / "a.db"
    engine = create_engine(f"sqlite:///{database}")
    checkpoints = WalCheckpoints(str(database))
    stopping = asyncio.Event()
    try:
        async with engine.begin() as connection:
            await connection.execute(text("create table blobs (i integer primary key, b blob)"))
        async with engine.begin() as connection:
            await connection.execute(
                text("insert into blobs (b) values (randomblob(:n))"),
                [{"n": ROW_BYTES}] * (ROWS // 2),
            )
        # Committed, yet only in the WAL: the writer leaves checkpoints to the server.
        assert _rows_in_main_file(database, tmp_path / "before.db") == 0

        loop = asyncio.create_task(checkpoints.run(stopping, interval=0.01))
        for _ in range(ROWS // 2):  # commits beside the checkpoints
            async with engine.begin() as connection:
                await connection.execute(
                    text("insert into blobs (b) values (randomblob(:n))"), {"n": ROW_BYTES}
                )
        await asyncio.sleep(0.1)
        stopping.set()
        await asyncio.wait_for(loop, 5)
        assert _rows_in_main_file(database, tmp_path / "after.db") == ROWS
        async with engine.connect() as connection:
            assert await connection.scalar(text("select count(*) from blobs")) == ROWS
            assert await connection.scalar(text("PRAGMA integrity_check")) == "ok"
    finally:
        stopping.set()
        await engine.dispose()


async def test_a_checkpoint_that_fails_is_retried_and_the_loop_goes_on(tmp_path: Path) -> None:
    """A file that is not a database yet (or no longer): each round fails and logs; the loop
    keeps its interval and ends when told.
    """
    garbage = tmp_path / "not-a-database"
    garbage.write_bytes(b"\x00garbage" * 1000)
    checkpoints = WalCheckpoints(str(garbage))
    stopping = asyncio.Event()
    loop = asyncio.create_task(checkpoints.run(stopping, interval=0.01))
    await asyncio.sleep(0.1)
    assert not loop.done()
    stopping.set()
    await asyncio.wait_for(loop, 5)
    assert garbage.read_bytes() == b"\x00garbage" * 1000
