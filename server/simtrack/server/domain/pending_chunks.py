"""Which metrics may be due for compaction, from what this process's writer stored.

A fleet keeps hundreds of thousands of small chunks waiting for their metrics to reach
``SMALL_CHUNK_POINTS`` points; finding the due metrics by scanning all of them every round
cost a third of SQLite's time in ``bench fleet`` (and grew with the backlog). The writer
tells this ledger each commit's small chunks; a round asks it which metrics are due, by the
rule of the database's query (``CompactionStore.due_metrics``); a compaction batch takes its
metrics' entries out and puts back what it left, as it read it under the metrics' lock.

The ledger is a hint, never the truth: a batch decides on the chunks it reads. It may count
a chunk twice (stored while a batch read it), which costs a batch that finds little to do;
it misses what other processes stored (another server, this one's previous life) and a
metric's single chunk it forgot (an idle metric's last chunk, so the ledger does not grow
with every metric ever written): compaction's rounds still scan the database, a slice each
(``compaction.SCAN_ROWS``), and find those within a pass.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from simtrack.server.db.chunks import SmallChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS

_LONG_AGO = datetime.min.replace(tzinfo=UTC)  # a chunk stored before arrivals were recorded


@dataclass(slots=True)
class Pending:
    """A metric's small chunks as far as the ledger knows: how many, their points, and the
    arrivals of the oldest and of the newest.
    """

    chunks: int
    points: int
    oldest: datetime
    newest: datetime

    def merge(self, other: Pending) -> None:
        self.chunks += other.chunks
        self.points += other.points
        self.oldest = min(self.oldest, other.oldest)
        self.newest = max(self.newest, other.newest)


class PendingChunks:
    """Small chunks stored by this process and not yet compacted, per tenant and metric."""

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, Pending]] = {}

    def stored(self, tenant_id: str, when: datetime, chunks: Iterable[tuple[str, int]]) -> None:
        """A commit stored these chunks (metric id, points) at ``when``."""
        entries = self._tenants.setdefault(tenant_id, {})
        for metric_id, points in chunks:
            if points >= SMALL_CHUNK_POINTS:
                continue
            entry = entries.get(metric_id)
            if entry is None:
                entries[metric_id] = Pending(1, points, when, when)
            else:
                entry.chunks += 1
                entry.points += points
                entry.newest = max(entry.newest, when)

    def due(
        self, tenant_id: str, settled_before: datetime, idle_before: datetime, limit: int
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` metrics (id, small chunks) due by ``due_metrics``'s rule: two small
        chunks or more, the oldest settled, and ``SMALL_CHUNK_POINTS`` points among them or
        none stored after ``idle_before``. A metric's lone chunk, idle, is forgotten.
        """
        entries = self._tenants.get(tenant_id, {})
        found: list[tuple[str, int]] = []
        for metric_id, entry in list(entries.items()):
            if entry.chunks < 2:
                if entry.newest <= idle_before:
                    del entries[metric_id]
                continue
            if entry.oldest <= settled_before and (
                entry.points >= SMALL_CHUNK_POINTS or entry.newest <= idle_before
            ):
                found.append((metric_id, entry.chunks))
                if len(found) >= limit:
                    break
        if not entries:
            self._tenants.pop(tenant_id, None)
        return found

    def known(self, tenant_id: str) -> Container[str]:
        """The tenant's metrics the ledger tracks now (a round's scan leaves them out)."""
        return self._tenants.get(tenant_id, {}).keys()

    def take(self, tenant_id: str, metric_ids: Iterable[str]) -> dict[str, Pending]:
        """The metrics' entries, out of the ledger (a batch is about to read their chunks)."""
        entries = self._tenants.get(tenant_id, {})
        return {m: entry for m in metric_ids if (entry := entries.pop(m, None)) is not None}

    def put_back(self, tenant_id: str, taken: Mapping[str, Pending]) -> None:
        """Entries taken by a batch that did not read them (it failed, or another process
        held the metric), merged with what was stored meanwhile.
        """
        entries = self._tenants.setdefault(tenant_id, {})
        for metric_id, entry in taken.items():
            self._merge(entries, metric_id, entry)

    def left(self, tenant_id: str, metric_id: str, chunks: Sequence[SmallChunk]) -> None:
        """The small chunks a batch left of a metric, as it read them (or wrote them)."""
        if not chunks:
            return
        stamps = [_LONG_AGO if c.written_at is None else c.written_at for c in chunks]
        entry = Pending(len(chunks), sum(c.n for c in chunks), min(stamps), max(stamps))
        self._merge(self._tenants.setdefault(tenant_id, {}), metric_id, entry)

    @staticmethod
    def _merge(entries: dict[str, Pending], metric_id: str, entry: Pending) -> None:
        known = entries.get(metric_id)
        if known is None:
            entries[metric_id] = entry
        else:
            known.merge(entry)
