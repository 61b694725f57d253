"""Notifications between streams, watchers and commands — across server processes on PostgreSQL.

Two kinds travel: "this run changed" (for WatchRun) and "deliver this command to the run's
worker" (for whichever process holds that worker's stream). On PostgreSQL they go through
LISTEN/NOTIFY on a dedicated autocommit connection, so every replica sees them; on SQLite,
which serves one process, they are dispatched in process. Both implement the domain's ``Bus``
(``simtrack.server.domain.ports``), which is all the domain services see of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import psycopg

from simtrack.errors import Unavailable
from simtrack.server.core.commands import CommandMessage
from simtrack.server.db.engine import libpq_conninfo

log = logging.getLogger(__name__)

RUNS_CHANNEL = "simtrack_runs"
COMMANDS_CHANNEL = "simtrack_commands"


CommandHandler = Callable[[CommandMessage], None]


class InProcessBus:
    """In-process delivery; the base of the PostgreSQL bus, which adds the network hop."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[None]]] = defaultdict(set)
        self.watching = 0  # open watches, kept apart: the metrics thread may not walk the dict
        self._command_handler: CommandHandler | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def on_command(self, handler: CommandHandler) -> None:
        self._command_handler = handler

    async def publish_runs(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            self._run_changed(run_id)

    async def publish_command(self, command: CommandMessage) -> None:
        self._deliver(command)

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Any:
        """A queue that gets an item whenever the run changes (coalesced: size 1)."""
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._watchers[run_id].add(queue)
        self.watching += 1
        try:
            yield queue
        finally:
            self.watching -= 1
            self._watchers[run_id].discard(queue)
            if not self._watchers[run_id]:
                del self._watchers[run_id]

    def _run_changed(self, run_id: str) -> None:
        for queue in self._watchers.get(run_id, ()):
            if queue.empty():
                queue.put_nowait(None)

    def _deliver(self, command: CommandMessage) -> None:
        if self._command_handler is not None:
            self._command_handler(command)


class PostgresBus(InProcessBus):
    """LISTEN/NOTIFY: what one replica publishes, every replica (itself included) receives."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._conninfo = libpq_conninfo(url)
        self._publisher: psycopg.AsyncConnection[Any] | None = None
        self._publish_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="simtrack-listen")
        await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._publisher is not None:
            await self._publisher.close()

    async def publish_runs(self, run_ids: Iterable[str]) -> None:
        await self._notify(RUNS_CHANNEL, list(run_ids))

    async def publish_command(self, command: CommandMessage) -> None:
        await self._notify(COMMANDS_CHANNEL, [json.dumps(asdict(command))])

    async def _notify(self, channel: str, payloads: list[str]) -> None:
        try:
            await self._notify_once_reconnecting(channel, payloads)
        except psycopg.OperationalError as exc:
            raise Unavailable("cannot reach the database to notify other replicas") from exc

    async def _notify_once_reconnecting(self, channel: str, payloads: list[str]) -> None:
        async with self._publish_lock:
            for attempt in range(2):  # one reconnect if the connection was lost
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                    await self._publisher.execute(  # one round trip for all of them
                        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (channel, payloads)
                    )
                    return
                except psycopg.OperationalError:
                    self._publisher = None
                    if attempt:
                        raise

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {RUNS_CHANNEL}")
                    await connection.execute(f"LISTEN {COMMANDS_CHANNEL}")
                    self._listening.set()
                    delay = 0.1
                    async for notice in connection.notifies():
                        self._dispatch(notice.channel, notice.payload)
            except psycopg.OperationalError as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == RUNS_CHANNEL:
            self._run_changed(payload)
        elif channel == COMMANDS_CHANNEL:
            try:
                self._deliver(CommandMessage(**json.loads(payload)))
            except (TypeError, ValueError):
                log.warning("ignoring a malformed command notification")
