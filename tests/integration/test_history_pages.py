"""A page read in one statement (``SqlReads.page``) equals the page read step by step
through a unit of work, on both databases: the whole series and ranges cutting chunks, every
page size, raw and compacted chunks, odd values, repeated steps, a batch that went back over
earlier steps, a fleet's small flushes (where the first chunks read do not settle the page,
and the unit of work reads it); and it answers for the caller's tenant only.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from simtrack.client import MetricHistory
from simtrack.errors import NotFound
from simtrack.server.api.packed import stored_history_response
from simtrack.server.api.telemetry import decode
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.core.tenancy import (
    LOCAL_PRINCIPAL,
    Principal,
    Role,
    reset_principal,
    set_principal,
)
from simtrack.server.db.chunks import PageChunks, StoredChunk
from simtrack.server.db.reads import SqlReads
from simtrack.server.db.view_rows import ViewRead
from simtrack.server.domain import history as history_module
from simtrack.server.domain.history import History, HistoryService
from simtrack.v1 import telemetry_pb2 as tpb
from tests.integration.test_history_views import STATES, written
from tests.support import Services, running_writer
from tests.support.compaction import stored_points


class CountedPages:
    """The reads' ``page``, counting what it settled and what it left to the unit of work."""

    def __init__(self, reads: SqlReads) -> None:
        self.reads = reads
        self.settled = self.unsettled = 0

    async def page(self, *args: Any) -> PageChunks | None:
        read = await self.reads.page(*args)
        if read is not None:
            if read.settled:
                self.settled += 1
            else:
                self.unsettled += 1
        return read

    async def view(self, *args: Any) -> ViewRead | None:
        return await self.reads.view(*args)

    async def chunks(self, *args: Any) -> list[StoredChunk] | None:
        return await self.reads.chunks(*args)

    async def read_ahead(self, *args: Any) -> None:
        await self.reads.read_ahead(*args)


async def every_page(
    history: HistoryService,
    run_id: str,
    size: int,
    lo: int | None = None,
    hi: int | None = None,
    *,
    values: bool = True,
) -> list[History]:
    pages, token = [], ""
    while True:
        page = await history.history(run_id, "x", lo, hi, 0, size, token, values=values)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def columns(pages: list[History]) -> tuple[bytes, bytes, bytes]:
    return tuple(  # type: ignore[return-value]
        b"".join(
            np.asarray(
                p.points.decoded() if name == "values" else getattr(p.points, name),
                dtype="<i8" if name == "steps" else "<f8",
            ).tobytes()
            for p in pages
        )
        for name in ("steps", "values", "timestamps")
    )


# "moved" (staged messages moved into chunks) leaves chunks of the shapes "raw" and
# "compacted" have; a staged run's every page goes by the unit of work either way, so fewer sizes.
PAGE_STATES = [state for state in STATES if state != "moved"]
PAGE_SIZES = {"staged": (97, 2500)}


@pytest.mark.parametrize("state", PAGE_STATES)
async def test_one_statement_pages_equal_the_unit_of_works(services: Services, state: str) -> None:
    run_id = await written(services, state)
    stored = await stored_points(services, run_id, "x")
    counted = CountedPages(services.reads)
    fast, stepwise = HistoryService(services.uow, counted), HistoryService(services.uow)
    for size in PAGE_SIZES.get(state, (61, 97, 1000, 2500, 100_000)):
        pages = await every_page(fast, run_id, size)
        expected = await every_page(stepwise, run_id, size)
        assert [p.next_page_token for p in pages] == [p.next_page_token for p in expected]
        assert [p.range_count for p in pages] == [p.range_count for p in expected]
        assert all(len(p.points) == size for p in pages[:-1]), size
        # Bit for bit, every stored point once, in history order.
        assert columns(pages) == columns(expected) == stored, size
    # Ranges cutting chunks (1,000-point batches, odd sizes, the batch that went back over
    # earlier steps, repeated steps, the small flushes); range_count counts the range's points.
    for lo, hi in (
        (1500, 9876),
        (2400, 4200),
        (13_000, None),
        (3000, 3000),
        (None, 10),
        (16_000, 16_999),
    ):
        for size in (97, 2500):
            pages = await every_page(fast, run_id, size, lo, hi)
            expected = await every_page(stepwise, run_id, size, lo, hi)
            assert [p.next_page_token for p in pages] == [p.next_page_token for p in expected]
            assert [p.range_count for p in pages] == [p.range_count for p in expected]
            assert pages[0].range_count == sum(len(p.points) for p in pages), (lo, hi)
            assert columns(pages) == columns(expected), (lo, hi, size)
    if state == "staged":  # a run with staged messages: every page by the unit of work
        assert counted.settled == 0 and counted.unsettled > 0
    else:
        assert counted.settled > 0
    if state == "raw":  # 150 small flushes: the first chunks read hold too few points
        assert counted.unsettled > 0


@pytest.mark.parametrize("max_points", [0, 100], ids=["page", "view"])
async def test_a_one_statement_read_names_what_is_missing_and_keeps_tenants_apart(
    services: Services, max_points: int
) -> None:
    run_id = await written(services, "raw")
    history = HistoryService(services.uow, services.reads)
    first = await history.history(run_id, "x", None, None, max_points, 10, "")
    assert 0 < len(first.points) <= (max_points or 10)
    assert (bool(first.next_page_token), first.downsampled) == (not max_points, bool(max_points))
    with pytest.raises(NotFound) as missing:
        await history.history(run_id, "y", None, None, max_points, 10, "")
    assert missing.value.field == "metric"
    with pytest.raises(NotFound) as unknown:
        await history.history(str(uuid.uuid4()), "x", None, None, max_points, 10, "")
    assert unknown.value.field == "run_id"
    token = set_principal(Principal("another-tenant", Role.ADMIN))
    try:
        with pytest.raises(NotFound) as other:
            await history.history(run_id, "x", None, None, max_points, 10, "")
        assert other.value.field == "run_id"
        if max_points:  # None: SQLite reads views through a unit of work
            view = await services.reads.view(run_id, "x", INT64_MIN, INT64_MAX)
            assert view is None or (not view.run_found and len(view.rows) == 0)
        else:
            page = await services.reads.page(run_id, "x", INT64_MIN, INT64_MAX, INT64_MIN, 10, 64)
            assert page is None
    finally:
        reset_principal(token)


async def test_a_chunk_starting_where_the_page_ends_is_read(services: Services) -> None:
    """Chunks of 100 steps, each sharing its first step with the previous one's last, sent in
    reverse: the later chunk's point sorts first at the shared step (a lower seq), so a page
    of 100 ending there needs the chunk starting at its last step.
    """
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        for seq, k in enumerate(reversed(range(20)), start=1):
            steps = list(range(99 * k, 99 * k + 100))
            values = [float(seq * 1000 + i) for i in range(100)]
            series = tpb.MetricSeries(name="x", steps=steps, values=values)
            message = tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(message))
    stored = await stored_points(services, run.id, "x")
    counted = CountedPages(services.reads)
    fast = HistoryService(services.uow, counted)
    for size in (100, 99, 50, 201):
        pages = await every_page(fast, run.id, size)
        assert columns(pages) == stored, size
        assert all(len(p.points) == size for p in pages[:-1]), size
    assert counted.settled and not counted.unsettled


async def test_a_page_read_ahead_holds_every_write_committed_before_its_call(
    services: Services, database_url: str
) -> None:
    """A reader paging through gets its next page read ahead (PostgreSQL); points written
    after that read (at the page's steps, repeated, and past the end) are in the page all
    the same, and in every page after, as the unit of work reads them.
    """
    run = await services.run((await services.experiment()).id)
    postgres = database_url.startswith("postgresql")

    def batch(seq: int, steps: list[int]) -> tpb.StreamRunRequest:
        series = tpb.MetricSeries(name="x", steps=steps, values=[seq + 0.5] * len(steps))
        return tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))

    reads = services.reads
    history, stepwise = HistoryService(services.uow, reads), HistoryService(services.uow)
    async with running_writer(services) as writer:
        for seq in range(1, 11):  # steps 0-9,999
            steps = list(range((seq - 1) * 1000, seq * 1000))
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(batch(seq, steps)))
        first = await history.history(run.id, "x", None, None, 0, 1000, "")
        second = await history.history(run.id, "x", None, None, 0, 1000, first.next_page_token)
        await reads.ahead.wait()  # the third page is read (PostgreSQL) before these writes
        other = set_principal(Principal("another-tenant", Role.ADMIN))
        try:  # another tenant with the token: not the page held for this one's next call
            with pytest.raises(NotFound):
                await history.history(run.id, "x", None, None, 0, 1000, second.next_page_token)
        finally:
            reset_principal(other)
        late = list(range(2000, 2100)) + [10_500]  # the third page's steps again, and past
        await writer.submit(LOCAL_PRINCIPAL, run.id, decode(batch(11, late)))
        token = second.next_page_token
        pages = [first, second]
        while token:
            pages.append(await history.history(run.id, "x", None, None, 0, 1000, token))
            token = pages[-1].next_page_token
    given = reads.ahead.given
    third = pages[2].points
    assert int(third.steps[0]) == 2000 and float(third.decoded()[1]) == 11.5  # the late point
    expected = await every_page(stepwise, run.id, 1000)
    assert columns(pages) == columns(expected) == await stored_points(services, run.id, "x")
    assert [p.range_count for p in pages] == [10_000] * 2 + [10_101] * (len(pages) - 2)
    # The third page was read ahead and read again (its metric had changed); the fourth on,
    # read ahead after the write, were given as read.
    assert (reads.ahead.stale, given) == ((1, len(pages) - 3) if postgres else (0, 0))


async def test_a_first_page_of_the_largest_size_gets_the_next_read_ahead(
    services: Services, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every point (the largest pages, as Client.metric_history does), the second
    page is read ahead of its call too (PostgreSQL); a smaller first page is left alone (a
    view of one page), its reader's next pages read ahead once it pages through.
    """
    monkeypatch.setattr(history_module, "HISTORY_PAGE_MAX", 1000)  # the largest page: 1,000
    run = await services.run((await services.experiment()).id)
    postgres = database_url.startswith("postgresql")
    async with running_writer(services) as writer:
        for seq in range(1, 6):  # steps 0-4,999
            steps = list(range((seq - 1) * 1000, seq * 1000))
            series = tpb.MetricSeries(name="x", steps=steps, values=[0.5] * len(steps))
            batch = tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))
            await writer.submit(LOCAL_PRINCIPAL, run.id, decode(batch))
    reads = services.reads
    history = HistoryService(services.uow, reads)
    stored = await stored_points(services, run.id, "x")
    for size in (1000, 999):
        given = reads.ahead.given
        pages = await every_page(history, run.id, size)
        assert columns(pages) == stored
        # Every page after the first read ahead; but the second, after a smaller first page.
        ahead = len(pages) - (1 if size == 1000 else 2)
        assert ahead >= 3 and reads.ahead.given - given == (ahead if postgres else 0), size


def decoded_columns(pages: list[History]) -> tuple[bytes, bytes, bytes]:
    """The pages as COLUMN_ENCODING_STORED sends them, decoded by the client."""
    read = [
        MetricHistory.of_page(
            stored_history_response(
                p.stored, p.points, p.next_page_token, p.range_count, p.downsampled
            ).message()
        )
        for p in pages
    ]
    return tuple(  # type: ignore[return-value]
        b"".join(getattr(r, name).tobytes() for r in read)
        for name in ("steps", "values", "timestamps")
    )


@pytest.mark.parametrize("state", PAGE_STATES)
async def test_pages_sent_as_stored_decode_to_the_same_points(
    services: Services, state: str
) -> None:
    """Pages asked for without their values (COLUMN_ENCODING_STORED), sent as parts of the
    chunks they come from where they are one run of them, decode to every point as the pages
    with values hold them: every page size, ranges cutting chunks (mid-page, mid-chunk,
    repeated steps, the batch that went back: those sent as raw columns).
    """
    run_id = await written(services, state)
    history = HistoryService(services.uow, services.reads)
    stored = await stored_points(services, run_id, "x")
    passed_through = undecoded = 0
    for lo, hi, size in (
        (None, None, 61),
        (None, None, 2500),
        (None, None, 100_000),
        (1500, 9876, 97),
        (13_000, None, 2500),
        (3000, 3000, 97),
    ):
        with_values = await every_page(history, run_id, size, lo, hi)
        without = await every_page(history, run_id, size, lo, hi, values=False)
        assert [p.next_page_token for p in without] == [p.next_page_token for p in with_values]
        assert decoded_columns(without) == columns(with_values), (lo, hi, size)
        if lo is None and hi is None:
            assert columns(with_values) == stored
        passed_through += sum(p.stored is not None for p in without)
        undecoded += sum(p.points.values is None for p in without)
    if state == "compacted":  # compressed chunks, in order: sent as they are, not decoded
        assert passed_through > 0 and undecoded > 0


async def test_a_page_read_ahead_without_values_is_given_with_them_when_asked(
    services: Services,
) -> None:
    """A reader paging without values (read ahead so), then asking with them: the page read
    ahead is decoded then; and the other way round.
    """
    run_id = await written(services, "compacted")
    history = HistoryService(services.uow, services.reads)
    expected = await every_page(history, run_id, 2500)
    for first, second in ((False, True), (True, False)):
        page = await history.history(run_id, "x", None, None, 0, 2500, "", values=first)
        after = await history.history(
            run_id, "x", None, None, 0, 2500, page.next_page_token, values=second
        )
        got = after.points if second else None
        if got is not None:
            assert got.decoded().tobytes() == expected[1].points.decoded().tobytes()
        else:
            assert decoded_columns([after]) == columns([expected[1]])
