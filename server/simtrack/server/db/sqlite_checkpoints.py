"""WAL checkpoints of a SQLite file, off the writer's path.

By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages: that
commit copies the WAL's pages into the database file and syncs it before the writer can go
on. A fleet's group commit dirties pages all over the chunk indexes and the metrics'
summaries, so nearly every commit paid a checkpoint: at 100,000 points/s a commit took 40 ms
and the writer was busy 96% of the time (acks p50 0.4 s, p99 1.2 s over 60 s). Here the
writer's own checkpoint is a backstop (``engine.WRITER_AUTOCHECKPOINT_PAGES``) and a connection of
this module checkpoints in the background (PASSIVE: beside the writer and the readers,
waiting for neither), on a thread, where SQLite works without the GIL; a page written by
several commits in between is copied once. The same 60 s: 11 ms a commit, acks p50 0.11 s,
p99 0.52 s. Durability is unchanged: a commit is on disk once its WAL frames are synced
(``synchronous=FULL``), whoever checkpoints it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

from simtrack.server.db.engine import sqlite_connection

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 0.5


class WalCheckpoints:
    """Checkpoints of the SQLite file at ``path`` on a connection of their own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the WAL, frames checkpointed), SQLite's
        answer. Blocking: run it on a thread.
        """
        if self._connection is None:
            self._connection = sqlite_connection(self.path)
        busy, frames, done = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(frames), int(done)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def run(self, stopping: asyncio.Event, interval: float = CHECKPOINT_INTERVAL_S) -> None:
        """Checkpoint every ``interval`` seconds until ``stopping`` is set (with nothing new
        in the WAL, a checkpoint only reads its index).
        """
        try:
            while not stopping.is_set():
                try:
                    await asyncio.to_thread(self.checkpoint)
                except sqlite3.Error as exc:  # the writer's backstop checkpoints meanwhile
                    log.warning("WAL checkpoint failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stopping.wait()
        finally:
            await asyncio.to_thread(self.close)
