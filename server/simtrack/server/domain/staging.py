"""Staging: a run's staged messages moved into metric chunks, compaction's first step.

The writer stores a message of fewer than ``SMALL_CHUNK_POINTS`` points as one row holding
all its series (``db/staged.py``): a fleet's worker sends ten metrics of two points five times
a second, and a chunk row per metric and message made ten rows, ten primary-key entries at
random pages, for each. Once a run's messages have settled (staged ``settle`` seconds ago or
more) and hold ``SMALL_CHUNK_POINTS`` points together (or the run has staged nothing for
compaction's ``idle`` time: it ended or paused), one transaction moves them all into chunks:
per metric, the points of every message up to the last settled one (tens of messages), as one
chunk (or more, of up to ``target`` points), packed as ingest packs them (compressed if not
small). Compaction proper then merges the small ones into large compressed chunks as it does
any small chunk. Waiting for 1,000 points makes a move of a fleet's run write a tenth of a
row per message per metric or less, and keeps what readers take out of staged messages small
(1,000 points a run and what came since).

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
from simtrack.server.domain.rewrite import compact

STAGE_RUNS = 64  # runs per transaction at most
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
            seqs[run_id] = sorted({s.seq for s in found})
            span = (seqs[run_id][0], seqs[run_id][-1])
            for s in found:
                series[s.metric_id].append(s.stored())
                spans[s.metric_id] = span
        between = await batch.chunks(spans)  # the large messages' chunks within the spans
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
