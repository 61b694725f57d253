"""Staging: a run's staged messages moved into metric chunks, compaction's first step.

The writer stores a message of fewer than ``SMALL_CHUNK_POINTS`` points as one row holding
all its series (``db/staged.py``): a fleet's worker sends ten metrics of ten points a second,
and a chunk row per metric and message made ten rows, ten primary-key entries at random
pages, for each. Once a run's messages have settled (staged ``settle`` seconds ago or more)
and hold ``SMALL_CHUNK_POINTS`` points a metric (their points over the most series a message
holds), or the run has staged nothing for compaction's ``idle`` time (it ended or paused),
one transaction moves them all into chunks: per metric, the points of every message up to the
last settled one, as one chunk (or more, of up to ``target`` points), compressed unless small
(then compaction proper merges it later, as any small chunk); with the metric's unfilled
chunks just below when together they fill one (compaction's ``fill_from``), so a series ends
up in full chunks, each point rewritten a bounded number of times. Waiting for 1,000 points a
metric makes a fleet's points land in compressed chunks in one move, a hundred messages at a
time; readers take at most that much out of a run's staged messages, and what came since.

Exactly once, in history order, as compaction (``domain/compaction.py``):

* each metric's span is the seqs [a, S] of its run's messages moved: the run's every message
  in it is staged but the large ones (1,000 points or more), whose chunks in the span are read
  and rewritten with the staged series; the outputs take the span's highest seqs, so the
  order of every point among all others, ties included, is what it was;
* compaction never takes a chunk at or above its run's lowest staged seq (the store's small
  chunks leave them out), so the two never rewrite the same seqs;
* one transaction deletes the staged messages and the span's chunks and inserts the new ones:
  a reader (one snapshot, ``db/chunk_repository.py``) sees the series staged or in chunks,
  never both or neither. PostgreSQL: each run under an advisory lock (a busy run is
  skipped); SQLite: the rewrite checks that every message read is still there, else changes
  nothing;
* the run's ``committed_seq`` is not touched: resends of acked batches are still recognised.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from simtrack.server.db.chunks import CompactedChunk, StoredChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.domain.ports import CompactionStore
from simtrack.server.domain.rewrite import compact, fill_from

# Runs per transaction at most: a fleet's runs reach their 1,000 points a metric together
# (10,000 points a run), and 64 of them a transaction held SQLite's one connection, and the
# GIL, for long enough to put acks p99 over 700 ms.
STAGE_RUNS = 8
STAGED_PER_ROUND = 1000  # runs found per query; a full answer is taken up again at once


@dataclass(frozen=True)
class StagedBatch:
    """What one staging transaction did."""

    messages: int
    points: int
    chunks: list[tuple[str, CompactedChunk]]  # (metric id, chunk) written
    busy: int  # runs another process was staging


async def stage_batch(
    store: CompactionStore,
    tenant_id: str,
    run_ids: list[str],
    settled_before: datetime,
    target: int,
) -> StagedBatch:
    """Move the settled staged messages of those of the runs no other process holds into
    chunks, in one transaction.
    """
    async with store.staging(tenant_id, run_ids) as batch:
        busy = len(run_ids) - len(batch.locked)
        staged = await batch.staged(settled_before)
        if not staged:
            return StagedBatch(0, 0, [], busy)
        series: dict[str, list[StoredChunk]] = defaultdict(list)
        spans: dict[str, tuple[int, int]] = {}
        seqs: dict[str, list[int]] = {}
        for run_id, found in staged.items():
            seqs[run_id] = sorted({chunk.seq for _, chunk in found})
            span = (seqs[run_id][0], seqs[run_id][-1])
            for metric_id, chunk in found:
                series[metric_id].append(chunk)
            spans.update(dict.fromkeys({metric_id for metric_id, _ in found}, span))
        # Unfilled chunks just below join a span once they fill a chunk with it, as in
        # compaction: a fleet's series ends up in full chunks, their blocks aligned.
        below = await batch.sizes_below(
            {m: first for m, (first, _) in spans.items()}, target // SMALL_CHUNK_POINTS + 1
        )
        spans = {
            m: (fill_from(first, sum(c.n for c in series[m]), below[m], target), last)
            for m, (first, last) in spans.items()
        }
        # The chunks within the spans: the large messages', and those unfilled ones.
        between = await batch.chunks(spans)
        outputs = await asyncio.to_thread(
            lambda: {
                m: compact(
                    sorted([*series[m], *between[m]], key=lambda c: c.seq),
                    target,
                    compress_from=SMALL_CHUNK_POINTS,  # a small chunk is compacted later
                )
                for m in spans
            }
        )
        await batch.replace(spans, between, outputs, seqs)
    return StagedBatch(
        sum(len(s) for s in seqs.values()),
        sum(c.n for found in series.values() for c in found),
        [(m, c) for m, made in outputs.items() for c in made],
        busy,
    )
