"""Compaction's ledger of what the writer stored: the due rule of the database's query, and
entries taken by a batch, put back and corrected by what it read, never lost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from simtrack.server.db.chunks import SmallChunk
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.domain.pending_chunks import Pending, PendingChunks

NOW = datetime(2026, 12, 4, tzinfo=UTC)
T = "tenant"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def due(
    ledger: PendingChunks, settle: float = 5, idle: float = 30, limit: int = 100
) -> list[tuple[str, int]]:
    return ledger.due(T, ago(settle), ago(idle), limit)


def test_two_small_chunks_settled_are_due_once_they_hold_enough_points_or_go_idle() -> None:
    ledger = PendingChunks()
    ledger.stored(T, ago(10), [("growing", 500), ("idle", 5)])
    ledger.stored(T, ago(9), [("growing", 500), ("idle", 5)])
    ledger.stored(T, ago(1), [("fresh", 600), ("fresh", 600)])
    ledger.stored(T, ago(2), [("alone", 999)])
    assert due(ledger) == [("growing", 2)]  # 1,000 points; "idle" was written 9 s ago
    assert due(ledger, idle=8) == [("growing", 2), ("idle", 2)]
    # "fresh" holds enough points, but its oldest chunk has not settled yet.
    assert due(ledger, settle=0.5) == [("growing", 2), ("fresh", 2)]
    assert due(ledger, idle=8, limit=1) == [("growing", 2)]


def test_large_chunks_are_not_counted_and_a_lone_idle_chunk_is_forgotten() -> None:
    ledger = PendingChunks()
    ledger.stored(T, ago(60), [("big", SMALL_CHUNK_POINTS), ("big", 5), ("lone", 3)])
    assert ledger.take(T, ["big"]) == {"big": Pending(1, 5, ago(60), ago(60))}
    assert due(ledger, idle=61) == []
    ledger.stored(T, ago(60), [("lone", 3)])  # not idle yet: kept, and has company now
    assert due(ledger, idle=0) == [("lone", 2)]
    ledger.stored(T, ago(60), [("alone", 3)])
    assert due(ledger, idle=0) == [("lone", 2)]  # forgotten at the first round it was idle
    ledger.stored(T, ago(60), [("alone", 3)])
    assert due(ledger, idle=0) == [("lone", 2)]  # so its next chunk is alone again


def test_a_batchs_entries_come_back_with_what_was_stored_meanwhile() -> None:
    ledger = PendingChunks()
    ledger.stored(T, ago(20), [("m", 10), ("m", 10), ("other", 10), ("other", 10)])
    taken = ledger.take(T, ["m", "other"])
    assert due(ledger, idle=0) == []
    ledger.stored(T, ago(10), [("m", 10)])  # committed while the batch worked
    ledger.put_back(T, {"other": taken["other"]})  # another process held it
    # The batch read m's chunks and left its newest (stored 15 s ago) and one it wrote.
    ledger.left(T, "m", [SmallChunk(7, 4, ago(15)), SmallChunk(5, 900, NOW)])
    assert ledger.take(T, ["m", "other"]) == {
        "m": Pending(3, 914, ago(15), NOW),
        "other": Pending(2, 20, ago(20), ago(20)),
    }


def test_a_chunk_from_before_arrivals_were_recorded_counts_as_long_settled() -> None:
    ledger = PendingChunks()
    ledger.left(T, "m", [SmallChunk(1, 5, None), SmallChunk(2, 5, ago(1))])
    assert due(ledger, idle=0.5) == [("m", 2)]
    ledger.left(T, "empty", [])
    assert ledger.take(T, ["empty"]) == {}


@pytest.mark.parametrize("tenants", [["b", "a"], ["a"]])
def test_tenants_are_kept_apart(tenants: list[str]) -> None:
    ledger = PendingChunks()
    for tenant in tenants:
        ledger.stored(tenant, ago(60), [(f"{tenant}-m", 600), (f"{tenant}-m", 600)])
    for tenant in tenants:
        assert ledger.due(tenant, NOW, NOW, 10) == [(f"{tenant}-m", 2)]
