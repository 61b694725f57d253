"""Reading telemetry back: a run's metrics, one metric's history, a run's events.

A metric's points live in packed chunks (``db/chunks.py``), one per stream message, each with
its step range. History is served in step order (points of equal step in the order they were
sent: by seq, then place in the batch), either

* page by page: the chunks a page needs are chosen from their summaries in order of their
  first step (until no further chunk can hold a point of the page), then read at once; the
  page token is the last point's (step, rank among the points of that step), which
  compaction preserves. A page is read in one statement where the first chunks read settle
  it (``HistoryReads.page``: all but a fleet's uncompacted series); or
* downsampled to at most ``max_points`` (``domain/views.py``): in one statement, and one
  more for the chunks an interval boundary cuts (``HistoryReads.view`` and ``.chunks``,
  PostgreSQL: all but ranges cutting most of their plain chunks, and runs with staged
  messages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import (
    optional_str,
    ordered_text,
    parse_int,
    parse_number,
    parse_time,
)
from simtrack.server.core.listing import (
    Listing,
    Page,
    decode_position,
    encode_position,
    enum_parser,
    page_size,
)
from simtrack.server.core.model import (
    INT64_MAX,
    INT64_MIN,
    MetricKind,
    require_id,
    require_name,
)
from simtrack.server.db.chunks import ChunkSummary, StoredChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS, Event, Metric
from simtrack.server.domain.ports import ChunkRows, HistoryReads, UnitOfWorkFactory
from simtrack.server.domain.runs import load_run
from simtrack.server.domain.series import (
    Key,
    Merged,
    Points,
    StoredPart,
    merge,
    range_count,
    stored_parts,
)
from simtrack.server.domain.views import Grid, View, read_view, view_of

HISTORY_PAGE_DEFAULT = 10_000
HISTORY_PAGE_MAX = 100_000
MAX_POINTS_MAX = 100_000
CHUNKS_PER_READ = 64  # chunk summaries a page reads at first (doubling after)

METRIC_LISTING = Listing(
    "metrics",
    {
        "name": ordered_text,
        "kind": enum_parser(MetricKind),
        "count": parse_int,
        "last_step": parse_int,
        "last_value": parse_number,
        "min": parse_number,
        "max": parse_number,
        "create_time": parse_time,
        "update_time": parse_time,
    },
    position=(str,),  # by name
)
EVENT_LISTING = Listing(
    "events",
    {"type": ordered_text, "agent_id": optional_str, "step": parse_int},
    position=(int, int),  # as sent: (seq, position)
)


@dataclass(frozen=True)
class History:
    points: Points
    range_count: int  # stored points in the requested step range, all pages together
    downsampled: bool
    next_page_token: str
    grid: Grid | None = None  # the intervals of a downsampled view
    stored: list[StoredPart] | None = None  # the points as parts of stored chunks, if known


def first_read(size: int) -> int:
    """How many chunk summaries a page of ``size`` reads at first: enough for a series sent in
    1,000-point batches, or compacted.
    """
    return max(CHUNKS_PER_READ, size // SMALL_CHUNK_POINTS + 2)


async def read_page(
    chunks: ChunkRows, metric_id: str, lo: int, hi: int, after: Key | None, size: int
) -> tuple[Merged, bool]:
    """Up to ``size`` points after ``after`` in [lo, hi], and whether more may follow.

    The chunks to read are chosen from their summaries first: in (first_step, seq) order,
    those starting after the page's first step hold at least ``size`` points from some chunk
    on, all at or below the highest last step L read so far; the page ends at or below L, so
    the chunks starting at or below L are all it needs. Then only those chunks' columns are
    read, in one statement.
    """
    start = lo if after is None else max(lo, after[0])
    chosen: list[ChunkSummary] = []
    held, counted_top = 0, INT64_MIN  # points of, and highest step in, chunks past ``start``
    bound: int | None = None  # L, once known
    limit = first_read(size)
    unread = False  # chunks starting past the page are left
    while True:
        cursor = (chosen[-1].first_step, chosen[-1].seq) if chosen else None
        batch = await chunks.summaries(metric_id, start, hi, cursor, limit)
        for chunk in batch:
            if bound is not None and chunk.first_step > bound:
                unread = True  # this chunk and all after it start past the page
                break
            chosen.append(chunk)
            if chunk.first_step > start:  # every point of it is past the page's first step
                held += chunk.n
                counted_top = max(counted_top, chunk.last_step)
                if bound is None and held >= size:
                    bound = counted_top
        if unread or len(batch) < limit:
            break
        limit *= 2  # a fleet's small chunks: fewer, larger reads
    read = await chunks.overlapping(metric_id, start, hi, None, len(chosen))
    merged = merge(read, start, hi, after)
    return merged, unread or len(merged) > size


def _found(run_found: bool, metric_id: str | None, run_id: str, metric: str) -> str:
    """The metric's id; NotFound naming what is missing, the run or its metric."""
    if not run_found:
        raise NotFound("run", run_id, "run_id")
    if metric_id is None:
        raise NotFound("metric", metric, "metric")
    return metric_id


def _viewed(view: View) -> History:
    """A downsampled view as the history's answer (one page: no token)."""
    return History(view.points, view.range_count, view.downsampled, "", view.grid)


def _page(
    merged: Merged,
    more: bool,
    size: int,
    count: int,
    scope: str,
    chunks: Sequence[StoredChunk] = (),
) -> History:
    """The first ``size`` points of ``merged``, with a token for the next page if ``more``;
    given the ``chunks`` merged (in the order read: a page to send as stored), as their stored
    parts where they can be.
    """
    shown_count = min(size, len(merged.points))
    next_token = ""
    if more and shown_count:
        next_token = encode_position(merged.key(shown_count - 1), scope)
    points = merged.points.take(slice(0, shown_count))
    stored = stored_parts(chunks, points) if chunks else None
    return History(points, count, False, next_token, stored=stored)


class HistoryService:
    def __init__(self, uow: UnitOfWorkFactory, pages: HistoryReads | None = None) -> None:
        self.uow = uow
        self.pages = pages  # None: every page through a unit of work

    async def list_metrics(
        self, run_id: str, size: int, token: str, filter_text: str, order_by: str = ""
    ) -> Page[Metric]:
        """A run's metrics in ``order_by`` order, else by name."""
        run_id = require_id("run_id", run_id)
        page = METRIC_LISTING.request(size, token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.metrics.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def history(
        self,
        run_id: str,
        metric: str,
        start_step: int | None,
        end_step: int | None,
        max_points: int,
        size: int,
        token: str,
        *,
        values: bool = True,
    ) -> History:
        """A page (``max_points`` 0) or a downsampled view of the metric's points in [start_step,
        end_step]. Without ``values`` (the caller sends the page as the chunks store it), a page
        that is one run of its chunks' points is given as their parts (``History.stored``), its
        values left undecoded.
        """
        run_id = require_id("run_id", run_id)
        metric = require_name("metric", metric)
        lo = INT64_MIN if start_step is None else start_step
        hi = INT64_MAX if end_step is None else end_step
        if lo > hi:
            raise InvalidArgument.of("end_step", f"must be >= start_step ({lo}), got {hi}")
        if max_points and not 2 <= max_points <= MAX_POINTS_MAX:
            raise InvalidArgument.of(
                "max_points", f"must be 0 or between 2 and {MAX_POINTS_MAX}, got {max_points}"
            )
        if max_points and token:
            raise InvalidArgument.of("page_token", "a downsampled history has only one page")
        size = page_size(size, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)
        scope = f"history/{run_id}/{metric}/{lo}/{hi}"
        after: Key | None = None
        if token:
            step, rank = decode_position(token, scope, (int, int))
            after = (step, rank)
        if self.pages is not None:
            if max_points:
                found = await self._one_statement_view(run_id, metric, lo, hi, max_points)
            else:
                found = await self._one_statement_page(
                    run_id, metric, lo, hi, after, size, scope, values
                )
            if found is not None:
                return found
        async with self.uow() as uow:
            # One snapshot for all statements below: a compaction committing between two of
            # them must not show a point twice (old rows, then the new) or not at all.
            await uow.read_snapshot()
            run_found, found_id, stored = await uow.metrics.named(run_id, metric)
            metric_id = _found(run_found, found_id, run_id, metric)
            if max_points:
                return _viewed(await read_view(uow.chunks, metric_id, lo, hi, max_points))
            if lo == INT64_MIN and hi == INT64_MAX:
                count = stored  # the whole series: its summary counts every point
            else:
                # The chunks lying within the range count their points; those it cuts, their
                # steps in it.
                edges = await uow.chunks.edge_steps([metric_id], lo, hi)
                count = await uow.chunks.points_within(metric_id, lo, hi) + range_count(
                    [(n, first, steps) for _, n, first, steps in edges], lo, hi
                )
            merged, more = await read_page(uow.chunks, metric_id, lo, hi, after, size)
        return _page(merged, more, size, count, scope)

    async def _one_statement_page(
        self,
        run_id: str,
        metric: str,
        lo: int,
        hi: int,
        after: Key | None,
        size: int,
        scope: str,
        values: bool,
    ) -> History | None:
        """The page in one statement; None where its first chunks do not settle it."""
        assert self.pages is not None
        start = lo if after is None else max(lo, after[0])
        read = await self.pages.page(run_id, metric, lo, hi, start, size, first_read(size))
        if read is None:
            raise NotFound("run", run_id, "run_id")
        _found(True, read.metric_id, run_id, metric)
        if not read.settled:
            return None
        count = read.points  # the whole series: its summary counts every point
        if read.within is not None:
            count = read.within + range_count(read.edges, lo, hi)
        merged = merge(read.chunks, start, hi, after, read.columns, values)
        more = read.unread or len(merged) > size
        found = _page(merged, more, size, count, scope, () if values else read.chunks)
        if found.next_page_token and (after is not None or size == HISTORY_PAGE_MAX):
            # Paging through (a token), or reading every point (the largest pages, as
            # Client.metric_history does): the page after this one is likely next. Its start
            # is this page's last step (or lo), as the token's decoding makes it.
            last_step = int(found.points.steps[-1])
            await self.pages.read_ahead(
                run_id, metric, lo, hi, max(lo, last_step), size, first_read(size), values
            )
        return found

    async def _one_statement_view(
        self, run_id: str, metric: str, lo: int, hi: int, max_points: int
    ) -> History | None:
        """The view from one statement, and one more for the chunks whose columns it needs
        (those interval boundaries cut); None where it needs every chunk read, or staged
        series, or a chunk it asked for is not the row the first statement saw (compacted
        meanwhile: the view is read in one snapshot instead), or this database has no such
        read.
        """
        assert self.pages is not None
        read = await self.pages.view(run_id, metric, lo, hi)
        if read is None:
            return None
        metric_id = _found(read.run_found, read.metric_id, run_id, metric)
        if read.staged:
            return None
        rows = read.rows
        while not isinstance(view := view_of(rows, lo, hi, max_points), View):
            if view.everything:
                return None
            versions = rows.versions_of(view.seqs)
            chunks = None if versions is None else await self.pages.chunks(metric_id, versions)
            if chunks is None or len(chunks) < len(view.seqs):
                return None
            rows = rows.with_read(chunks)
        return _viewed(view)

    async def list_events(
        self, run_id: str, size: int, token: str, filter_text: str, order_by: str = ""
    ) -> Page[Event]:
        """A run's events in ``order_by`` order, else in the order sent: by (seq, position)."""
        run_id = require_id("run_id", run_id)
        page = EVENT_LISTING.request(size, token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.events.list(page, run_id)
        return Page(rows, page.next_token(cursor))
