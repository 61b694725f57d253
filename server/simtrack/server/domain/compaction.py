"""Compaction: a metric's small chunks rewritten into large compressed ones, exactly once.

Ingest stores one chunk per metric per stream message; a fleet of workers flushing every
second makes chunks of ten points, which cost a row each to store and to read. Once a
metric's small chunks (fewer than ``SMALL_CHUNK_POINTS``) have settled (stored ``settle``
seconds ago or more) and hold ``SMALL_CHUNK_POINTS`` points together (or the metric has had
no new chunk for ``idle`` seconds: it ended or paused), a transaction replaces a span of them
with chunks of up to ``target`` points in history order, compressed (``simtrack/codec.py``). The
wait for 1,000 points keeps compaction's work linear: compacting a growing series' every few
new points would make a small chunk again, rewritten with the next ones round after round.

* the span is every chunk of the metric with seq in [a, S]: ``a`` the lowest seq of its small
  chunks, ``S`` the highest seq of a settled one. The chunks above ``S`` came later and stay;
  the chunks below ``a`` are large and stay, unless the unfilled ones just below (fewer than
  ``target`` points each) and the span hold ``target`` points together: then ``a`` moves down
  over them, so the series ends up in full ``target``-point chunks (the best compression)
  while each point is rewritten a bounded number of times (a small tail grows to
  ``SMALL_CHUNK_POINTS`` and stays until ``target`` points can be filled);
* the output is full chunks of ``target`` points and one of the rest (too many for the span's
  seqs, the span's batches being that large: near-equal ones, one per input row);
* the output chunks take the span's highest seqs, in increasing order (free once the inputs
  are deleted). History order is (step, seq, place in chunk): each output chunk has a higher
  seq than every chunk kept below ``a`` and a lower one than every chunk above ``S``, and the
  points are laid out in history order over outputs of increasing seq, so the order of every
  point among all others, ties of equal steps included, is what it was. Page tokens (step,
  rank) stay valid (``domain/history.py``);
* the run's ``committed_seq`` (the exactly-once watermark) is not touched: a resend of an
  acked batch is still recognised, and ingest only ever writes seqs above it, never into a
  span;
* two servers never both rewrite a metric: PostgreSQL's transaction holds the metric's
  advisory lock (released by commit, rollback or a lost connection); on SQLite the reads take
  no lock and the rewrite, under the write lock, changes nothing unless the spans still hold
  exactly the chunks read (then the batch counts as busy). The rewrite is one transaction: a
  reader sees the old rows or the new ones (history reads one snapshot), never both or
  neither.

Each round first moves the tenant's due staged messages into chunks (``domain/staging.py``);
compaction never takes a chunk at or above its run's lowest staged message.

One transaction compacts a batch of a tenant's metrics (up to ``BATCH_METRICS``), each step
one statement for the whole batch; the spans are chosen per metric as above. A batch that
fails is rolled back whole and its metrics compacted one per transaction, so one metric's
failure holds up none of the others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from simtrack.errors import FailedPrecondition
from simtrack.server.core.model import utcnow
from simtrack.server.db.chunks import SmallChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.domain.pending_chunks import PendingChunks
from simtrack.server.domain.ports import CompactionStore
from simtrack.server.domain.rewrite import compact, fill_from
from simtrack.server.domain.staging import STAGE_RUNS, STAGED_PER_ROUND, stage_batch

log = logging.getLogger(__name__)

DEFAULT_TARGET_POINTS = 16_384  # simtrack/codec.py's recommended chunk size
# The smallest target: a full chunk must not be small (else compacted forever).
MIN_TARGET_POINTS = SMALL_CHUNK_POINTS
# Small-chunk points rewritten in one transaction at most (it may overshoot by a chunk): a
# metric with a long backlog (a database upgraded with millions of small chunks) is compacted
# over several transactions, none holding locks or memory for long (SQLite's one connection
# is the rewrite's for its delete and insert).
MAX_SPAN_POINTS = 4 * DEFAULT_TARGET_POINTS
DUE_PER_ROUND = 1000  # metrics per tenant and query; a full answer starts another round
# Beside the writer's ledger (``domain/pending_chunks.py``), each round scans this many of a
# tenant's small chunks for due metrics, on from where the last round stopped: what the ledger
# misses (other processes' writes) is found within a pass, and no round holds SQLite's one
# connection for long (a scan of a fleet's million small chunks takes a second or more).
SCAN_ROWS = 20_000
# Metrics per transaction at most: each step of a batch is one statement whatever its size
# (the per-statement cost dominated one metric's compaction of a fleet's few small chunks),
# and a batch's points stay within ``MAX_SPAN_POINTS`` (one metric's span, if more).
BATCH_METRICS = 128
# Given ``ingest_waiting`` (one event loop for ingest and compaction; SQLite: one connection),
# a batch lets the writer's queued batches commit first, waiting this long at most: under a
# load that leaves compaction less than it needs, acks stay prompt and compaction catches up
# once the load eases, yet it keeps going at a batch a second whatever the load.
YIELD_MAX_S = 1.0
YIELD_POLL_S = 0.005


@dataclass(frozen=True)
class Span:
    """The seqs a compaction rewrites, and the arrival of its oldest small chunk."""

    first_seq: int
    last_seq: int
    points: int  # in its small chunks
    oldest: datetime | None  # None: stored before arrivals were recorded
    cut: bool = False  # stopped at the most points a transaction takes: settled ones remain


def choose_span(
    small: Sequence[SmallChunk],
    settled_before: datetime,
    max_points: int = MAX_SPAN_POINTS,
    idle_before: datetime | None = None,
) -> Span | None:
    """The span to compact given a metric's small chunks (by seq); None: nothing worth it.

    From the lowest small chunk to the highest settled one, cut after ``max_points`` points;
    at least two small chunks, else the rewrite gains nothing. A span of fewer than
    ``SMALL_CHUNK_POINTS`` points waits while the metric is still written to (a small chunk
    stored after ``idle_before``): compacted now, its output would be small too, and be
    rewritten with the next ones, round after round (a fleet's series, growing by a few
    points a second, would be rewritten hundreds of times over).
    """
    settled = [c.seq for c in small if c.written_at is None or c.written_at <= settled_before]
    if not settled:
        return None
    last, total, chosen = max(settled), 0, 0
    for chunk in small:
        if chunk.seq > last or (chosen >= 2 and total >= max_points):
            break
        last_taken, total, chosen = chunk.seq, total + chunk.n, chosen + 1
    if chosen < 2:
        return None
    if total < SMALL_CHUNK_POINTS and idle_before is not None:
        if any(c.written_at is not None and c.written_at > idle_before for c in small):
            return None
    stamps = [c.written_at for c in small[:chosen]]
    oldest = None if any(s is None for s in stamps) else min(s for s in stamps if s is not None)
    return Span(small[0].seq, last_taken, total, oldest, cut=last_taken < last)


@dataclass(frozen=True)
class Compacted:
    """What one metric's compaction did."""

    metric_id: str
    chunks_in: int
    chunks_out: int
    points: int
    lag: timedelta | None  # from the oldest small chunk's arrival to the commit
    more: bool = False  # the span was cut: the metric has more settled small chunks


@dataclass
class RoundReport:
    compacted: list[Compacted]
    busy: int  # metrics (runs, staging) skipped: another process was compacting them
    failed: int  # metrics (runs) whose compaction failed (rolled back; tried next round)
    full: bool  # a query returned its limit: more may be due now
    staged_messages: int = 0  # staged messages moved into chunks (``domain/staging.py``)
    staged_points: int = 0


@dataclass
class BatchReport:
    """What one batch's transaction did."""

    compacted: list[Compacted]  # the metrics it rewrote (none of no chunks)
    busy: list[str]
    again: list[tuple[str, int]]  # (metric, small chunks left): for a later batch
    # The small chunks each metric it locked has left, as read (and written): the ledger's.
    left: dict[str, list[SmallChunk]] = field(default_factory=dict)


class CompactionService:
    """Finds due metrics across tenants and compacts them, a batch of a tenant's metrics per
    transaction (a constant number of statements for the batch: ``db/compaction_store.py``).
    """

    def __init__(
        self,
        store: CompactionStore,
        settle: timedelta,
        target: int = DEFAULT_TARGET_POINTS,
        max_span_points: int = MAX_SPAN_POINTS,
        batch_metrics: int = BATCH_METRICS,
        idle: timedelta = timedelta(0),
        pending: PendingChunks | None = None,
        scan_rows: int = SCAN_ROWS,
        ingest_waiting: Callable[[], bool] | None = None,
        yield_max_s: float = YIELD_MAX_S,
    ) -> None:
        if target < MIN_TARGET_POINTS:
            raise ValueError(f"a compaction target of {target} points is below {MIN_TARGET_POINTS}")
        if batch_metrics < 1:
            raise ValueError(f"a compaction batch of {batch_metrics} metrics")
        self.store = store
        self.settle = settle
        self.target = target
        self.max_span_points = max_span_points
        self.batch_metrics = batch_metrics
        self.idle = idle  # how long a growing series' few small points wait (`choose_span`)
        # The writer's ledger of what it stored (None: every round scans every small chunk).
        self.pending = pending
        self.scan_rows = scan_rows
        self.ingest_waiting = ingest_waiting  # whether the writer has batches queued
        self.yield_max_s = yield_max_s
        self._scan_from: dict[str, str] = {}  # per tenant: where the next slice starts

    async def run_round(self, stopping: Callable[[], bool] = lambda: False) -> RoundReport:
        """Compact every metric due now, tenant by tenant (row-level security sees one), in
        batches; ``stopping`` is asked between batches (a round with a backlog may take a
        while). A metric with more than a transaction takes goes back in the queue.
        """
        report = RoundReport([], 0, 0, False)
        for tenant_id in await self.store.tenants():
            await self._stage(tenant_id, report, stopping)
            if stopping():
                return report
            due = await self._due(tenant_id, report)
            queue = collections.deque(due)
            while queue:
                await self._after_ingest(stopping)
                if stopping():
                    return report
                batch = self._take(queue)
                for done in await self._compact_or_each(tenant_id, batch, report):
                    report.compacted.extend(done.compacted)
                    report.busy += len(done.busy)
                    queue.extend(done.again)
        return report

    async def _stage(
        self, tenant_id: str, report: RoundReport, stopping: Callable[[], bool]
    ) -> None:
        """Move the tenant's settled staged messages into chunks, a batch of runs at a time
        (``domain/staging.py``), before the round looks for small chunks to compact.
        """
        now = utcnow()
        runs = await self.store.staged_runs(
            tenant_id, now - self.settle, now - self.idle, STAGED_PER_ROUND
        )
        report.full |= len(runs) >= STAGED_PER_ROUND
        for start in range(0, len(runs), STAGE_RUNS):
            await self._after_ingest(stopping)
            if stopping():
                return
            await self._stage_or_each(tenant_id, runs[start : start + STAGE_RUNS], report)

    async def _stage_or_each(self, tenant_id: str, run_ids: list[str], report: RoundReport) -> None:
        """The runs in one transaction; if that fails, each in one of its own."""
        settled_before = utcnow() - self.settle
        try:
            done = await stage_batch(self.store, tenant_id, run_ids, settled_before, self.target)
        except FailedPrecondition as exc:  # another process staged them: nothing written
            log.info("staging of %d run(s) overtaken: %s", len(run_ids), exc)
            report.busy += len(run_ids)
            return
        except Exception:  # noqa: BLE001 - one run's failure must not stop the rest
            if len(run_ids) == 1:
                log.warning("staging of run %s failed", run_ids[0], exc_info=True)
                report.failed += 1
                return
            log.warning("staging of %d runs failed; each alone", len(run_ids), exc_info=True)
            for run_id in run_ids:
                await self._stage_or_each(tenant_id, [run_id], report)
            return
        report.busy += done.busy
        report.staged_messages += done.messages
        report.staged_points += done.points
        if self.pending is not None:  # the chunks written, for compaction to find
            self.pending.stored(tenant_id, utcnow(), [(m, c.n) for m, c in done.chunks])

    async def _after_ingest(self, stopping: Callable[[], bool]) -> None:
        """Wait while the writer has batches queued (``yield_max_s`` at most)."""
        if self.ingest_waiting is None:
            return
        deadline = time.monotonic() + self.yield_max_s
        while self.ingest_waiting() and time.monotonic() < deadline and not stopping():
            await asyncio.sleep(YIELD_POLL_S)

    async def _due(self, tenant_id: str, report: RoundReport) -> list[tuple[str, int]]:
        """The tenant's due metrics (id, small chunks): all of them (no ledger), or the
        ledger's and those of the next slice of the database's small chunks.
        """
        now = utcnow()
        settled_before, idle_before = now - self.settle, now - self.idle
        if self.pending is None:
            due, _ = await self.store.due_metrics(
                tenant_id, settled_before, idle_before, DUE_PER_ROUND
            )
            report.full |= len(due) >= DUE_PER_ROUND
            return due
        told = self.pending.due(tenant_id, settled_before, idle_before, DUE_PER_ROUND)
        found, self._scan_from[tenant_id] = await self.store.due_metrics(
            tenant_id,
            settled_before,
            idle_before,
            DUE_PER_ROUND,
            self._scan_from.get(tenant_id, ""),
            self.scan_rows,
            self.pending.known(tenant_id),
        )
        report.full |= max(len(told), len(found)) >= DUE_PER_ROUND
        return list((dict(found) | dict(told)).items())

    def _take(self, queue: collections.deque[tuple[str, int]]) -> list[str]:
        """The next batch: up to ``batch_metrics`` metrics, their small chunks (a point each at
        least) within a transaction's points, one metric at least.
        """
        batch: list[str] = []
        rows = 0
        while queue and len(batch) < self.batch_metrics:
            metric_id, small = queue[0]
            if batch and rows + small > self.max_span_points:
                break
            queue.popleft()
            batch.append(metric_id)
            rows += small
        return batch

    async def _compact_or_each(
        self, tenant_id: str, metric_ids: list[str], report: RoundReport
    ) -> list[BatchReport]:
        """The batch in one transaction; if that fails, each metric in one of its own (so one
        metric's failure stops none of the others), the ones failing again counted.
        """
        pending = self.pending
        taken = {} if pending is None else pending.take(tenant_id, metric_ids)
        try:
            done = await self.compact_batch(tenant_id, metric_ids)
        except FailedPrecondition as exc:
            # The spans changed between the batch's reads and its rewrite (another process
            # compacted them, or a run was deleted): nothing was written. Busy, as a locked
            # metric is; a later round reads them afresh.
            log.info("compaction of %d metric(s) overtaken: %s", len(metric_ids), exc)
            if pending is not None:
                pending.put_back(tenant_id, taken)
            report.busy += len(metric_ids)
            return []
        except Exception:  # noqa: BLE001 - one metric's failure must not stop the rest
            if pending is not None:
                pending.put_back(tenant_id, taken)
            if len(metric_ids) == 1:
                log.warning("compaction of metric %s failed", metric_ids[0], exc_info=True)
                report.failed += 1
                return []
            log.warning(
                "compaction of a batch of %d metrics failed; compacting each alone",
                len(metric_ids),
                exc_info=True,
            )
            each = []
            for metric_id in metric_ids:
                each.extend(await self._compact_or_each(tenant_id, [metric_id], report))
            return each
        if pending is not None:
            pending.put_back(tenant_id, {m: taken[m] for m in done.busy if m in taken})
            for metric_id, chunks in done.left.items():
                pending.left(tenant_id, metric_id, chunks)
        return [done]

    async def compact_batch(self, tenant_id: str, metric_ids: Sequence[str]) -> BatchReport:
        """Compact the settled small chunks of those of the metrics no other process holds, in
        one transaction. A metric whose span would take the transaction over
        ``max_span_points`` points (never the first) is left for a later batch.
        """
        async with self.store.compacting(tenant_id, metric_ids) as batch:
            locked = set(batch.locked)
            report = BatchReport([], [m for m in metric_ids if m not in locked], [])
            small = await batch.small_chunks()
            report.left = dict(small)  # until a span is chosen below
            now = utcnow()
            settled_before, idle_before = now - self.settle, now - self.idle
            spans: dict[str, Span] = {}
            points = 0
            for metric_id in batch.locked:
                span = choose_span(
                    small[metric_id], settled_before, self.max_span_points, idle_before
                )
                if span is None:
                    continue
                if spans and points + span.points > self.max_span_points:
                    report.again.append((metric_id, len(small[metric_id])))
                    continue
                spans[metric_id] = span
                points += span.points
            if not spans:
                return report
            # Chunks below a span are not small: this many reach the target, if any do.
            below = await batch.sizes_below(
                {m: span.first_seq for m, span in spans.items()},
                self.target // SMALL_CHUNK_POINTS + 1,
            )
            ranges = {
                m: (fill_from(span.first_seq, span.points, below[m], self.target), span.last_seq)
                for m, span in spans.items()
            }
            inputs = await batch.chunks(ranges)
            # Off the event loop: decoding and encoding a batch takes a fraction of a second,
            # which every stream's acks and every read would otherwise wait for.
            outputs = await asyncio.to_thread(
                lambda: {m: compact(inputs[m], self.target) for m in ranges}
            )
            await batch.replace(ranges, inputs, outputs)
        now = utcnow()
        for metric_id, span in spans.items():
            report.left[metric_id] = [
                *(c for c in small[metric_id] if c.seq > span.last_seq),
                *(
                    SmallChunk(c.seq, c.n, now)
                    for c in outputs[metric_id]
                    if c.n < SMALL_CHUNK_POINTS
                ),
            ]
            chunks = inputs[metric_id]
            lag = None if span.oldest is None else now - span.oldest
            points = sum(c.n for c in chunks)
            report.compacted.append(
                Compacted(metric_id, len(chunks), len(outputs[metric_id]), points, lag, span.cut)
            )
            if span.cut:  # the small chunks after the span's; a count for batching only
                left = sum(1 for c in small[metric_id] if c.seq > span.last_seq)
                report.again.append((metric_id, left))
        return report
