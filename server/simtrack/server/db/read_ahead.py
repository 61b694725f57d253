"""Pages of a metric's history read before they are asked for (PostgreSQL's ``SqlReads``).

A reader paging through a series asks for page k + 1 once page k has reached it and been
parsed; until then the database would wait, and after it the server waits on the database.
Reading every point of a 1M-point series in pages of 100,000, the database's share of each
page (4 of its 10-12 ms) was one link of a chain where nothing overlapped. So once a reader
has asked for a next page (a page token: it is paging through), or for a first page of the
largest size (reading every point), the page after the one it gets is read at once and held
here, a few seconds at most, for the request that will come.

A held page is given only when the metric's row is still the version the read saw (its xmin,
read by the page's own statement): every write of a metric's points updates that row in the
same transaction (the ingest writer's summaries, staged or written as chunks), and what
rewrites chunks without it (compaction, staging's move) keeps the points as they were. So a
write committed before a request is always in its answer, as without reading ahead.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from simtrack.server.db.chunks import PageChunks

HELD = 8  # pages held (or being read) at most, each up to ~2.4 MB: as many as read connections
KEPT_S = 5.0  # a held page not asked for within this long is dropped


class ReadAhead:
    """Pages being read or read, by what asks for them (tenant, run, metric, range, start,
    size), each taken once.
    """

    def __init__(self, held: int = HELD, kept_s: float = KEPT_S) -> None:
        self._held = held
        self._kept_s = kept_s
        self._reads: OrderedDict[Hashable, tuple[float, asyncio.Task[PageChunks | None]]] = (
            OrderedDict()
        )
        self.given = self.stale = 0  # pages taken: given, or read again (not current)

    async def start(self, key: Hashable, read: Callable[[], Awaitable[PageChunks | None]]) -> None:
        """Read the page of ``key`` now (``read``), unless it is being read already or as
        many pages as are held already: more readers paging at once than that would each
        push out another's page before it is asked for, and every page would be read twice.

        Returns once the read has run up to its first wait (its statement sent): a task only
        starts when the loop comes round to it, which was after the caller had packed and
        sent its own page (a millisecond of the loop's time for 100,000 points) and the
        database waited meanwhile. Started at once, reading every point of a 1M-point series
        took 76 ms where it took 85.
        """
        self._drop_stale()
        if key in self._reads or len(self._reads) >= self._held:
            return
        task = asyncio.ensure_future(read())
        task.add_done_callback(_retrieved)
        self._reads[key] = (time.monotonic(), task)
        await asyncio.sleep(0)  # the task's first step comes before this one's next

    async def take(
        self, key: Hashable, current: Callable[[PageChunks], Awaitable[bool]]
    ) -> PageChunks | None:
        """The page of ``key`` read ahead (waiting for its read to end) if it is still
        ``current``; None: none is held, its read failed (the caller reads the page itself and
        meets the error, if any), or it is not current.
        """
        self._drop_stale()
        held = self._reads.pop(key, None)
        if held is None:
            return None
        try:
            page = await asyncio.shield(held[1])
        except Exception:
            return None
        if page is None or not await current(page):
            self.stale += 1
            return None
        self.given += 1
        return page

    async def wait(self) -> None:
        """Until every read held has ended."""
        await asyncio.gather(*(task for _, task in self._reads.values()), return_exceptions=True)

    def _drop_stale(self) -> None:
        oldest = time.monotonic() - self._kept_s
        while self._reads:
            key, (started, _) = next(iter(self._reads.items()))
            if started >= oldest:
                break
            del self._reads[key]  # (never cancelled half-way: its connection would go)


def _retrieved(task: asyncio.Task[PageChunks | None]) -> None:
    """A read no one takes may fail (the database restarting): its error is not logged as
    never retrieved.
    """
    if not task.cancelled():
        task.exception()
