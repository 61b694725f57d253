"""Pages held for the call that asks for them (``db/read_ahead.py``): each taken once, only
while current, a few at most, not for long; a read that failed is read again by its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from simtrack.server.db.chunks import PageChunks
from simtrack.server.db.read_ahead import ReadAhead


def page(version: int) -> PageChunks:
    return PageChunks("metric", 10, [], settled=True, unread=False, version=version)


async def current(_: PageChunks) -> bool:
    return True


async def stale(_: PageChunks) -> bool:
    return False


async def test_a_page_is_taken_once_by_its_own_key_and_only_while_current() -> None:
    ahead = ReadAhead()
    reads = 0

    def reading(version: int) -> Callable[[], Awaitable[PageChunks]]:
        async def read() -> PageChunks:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)
            return page(version)

        return read

    await ahead.start("a", reading(1))
    await ahead.start("a", reading(3))  # being read: not read twice
    await ahead.start("b", reading(2))
    assert await ahead.take("c", current) is None
    found = await ahead.take("a", current)  # waits for its read
    assert found is not None and found.version == 1
    assert await ahead.take("a", current) is None  # taken
    assert await ahead.take("b", stale) is None  # read, but the metric changed since
    assert (reads, ahead.given, ahead.stale) == (2, 1, 1)


async def test_a_failed_read_is_none_and_its_error_is_retrieved() -> None:
    ahead = ReadAhead()

    async def fails() -> PageChunks:
        raise ConnectionError("the database went away")

    await ahead.start("a", fails)
    await ahead.start("b", fails)
    await ahead.wait()
    assert await ahead.take("a", current) is None
    # "b" is never taken: its error must not be reported as never retrieved (the tests turn
    # unraisable warnings into errors).


async def test_a_few_pages_are_held_and_not_for_long() -> None:
    ahead = ReadAhead(held=2, kept_s=0.05)

    async def read() -> PageChunks:
        return page(1)

    for key in ("a", "b", "c"):
        await ahead.start(key, read)
    await ahead.wait()
    # Full: "c" is not read (pushing "a" out would waste its read when a third reader pages).
    assert await ahead.take("c", current) is None
    assert await ahead.take("a", current) is not None  # taken: room for one
    await ahead.start("c", read)
    await ahead.wait()
    await asyncio.sleep(0.06)
    assert await ahead.take("b", current) is None  # held too long
    assert await ahead.take("c", current) is None


async def test_a_read_has_begun_when_start_returns() -> None:
    """Its first step (a statement sent) runs before the caller's next one: the caller goes
    on to send its own page, and the database must not wait for that.
    """
    ahead = ReadAhead()
    begun = asyncio.Event()

    async def read() -> PageChunks:
        begun.set()
        await asyncio.sleep(0.01)
        return page(1)

    await ahead.start("a", read)
    assert begun.is_set()
    assert await ahead.take("a", current) is not None
