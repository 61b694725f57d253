"""A TCP relay that cuts a server's connections on purpose, mid-frame (``TcpProxy``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any


class TcpProxy:
    """A TCP relay in front of a server that cuts its connections on purpose.

    Connections get, from a seeded generator, a byte budget in one direction (toward the
    server: batches cut mid-send; toward the client: acks lost after the commit); once it is
    spent both sides are aborted (RST, no goodbye), in the middle of whatever frame was
    passing. A connection that closes before spending its budget (one the client opened
    and did not use, say) hands the next connection a budget of its own, until
    ``max_cuts`` cuts are made; later connections are relayed faithfully, so a test always
    finishes.
    """

    def __init__(
        self,
        upstream: str,
        seed: int = 0,
        max_cuts: int = 0,
        to_server_budget: tuple[int, int] = (5_000, 100_000),
        to_client_budget: tuple[int, int] = (60, 400),
    ) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.max_cuts = max_cuts
        self.to_server_budget = to_server_budget
        self.to_client_budget = to_client_budget
        self.armed = 0  # connections given a budget
        self.unspent = 0  # armed connections that closed before their budget was spent
        self.cuts = 0
        self.cuts_toward = {"server": 0, "client": 0}  # which way the cut data was going
        self.connections = 0
        self.address = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def close(self) -> None:
        """Stop accepting, drop every connection, and let the handlers finish."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await self._relay(client_r, client_w)
        finally:
            self._handlers.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, _, port = self.upstream.rpartition(":")
        try:
            server_r, server_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.transport.abort()
            return
        budgets: list[int | None] = [None, None]
        if self.armed - self.unspent < self.max_cuts:
            self.armed += 1
            direction = self.rng.randrange(2)
            low, high = self.to_server_budget if direction == 0 else self.to_client_budget
            budgets[direction] = self.rng.randint(low, high)
        writers = (client_w, server_w)
        self._writers.update(writers)

        spent = False

        def cut(toward: str) -> None:
            nonlocal spent
            spent = True
            self.cuts += 1
            self.cuts_toward[toward] += 1
            for writer in writers:
                writer.transport.abort()

        pipes = [
            asyncio.create_task(self._pipe(client_r, server_w, budgets[0], lambda: cut("server"))),
            asyncio.create_task(self._pipe(server_r, client_w, budgets[1], lambda: cut("client"))),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in writers:
                writer.transport.abort()
            self._writers.difference_update(writers)
            await asyncio.gather(*pipes, return_exceptions=True)
            if budgets != [None, None] and not spent:
                self.unspent += 1

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        budget: int | None,
        cut: Callable[[], None],
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                if budget is not None:
                    if len(data) >= budget:
                        sink.write(data[:budget])  # part of a frame: the worst moment
                        cut()
                        return
                    budget -= len(data)
                sink.write(data)
                await sink.drain()
