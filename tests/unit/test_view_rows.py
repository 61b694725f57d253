"""What a view reads first (``db/view_rows.py``): PostgreSQL's packed summaries read as the
same rows as summaries one by one, NaN where a chunk's summaries do not stand for it; rows
merged with staged series keep (first_step, seq) order, each blocks column with its chunk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from simtrack.server.db.chunks import ChunkSummary, StoredChunk
from simtrack.server.db.view_rows import PACKED, ViewRows, rows_of_packed


def summaries() -> list[ChunkSummary]:
    """Chunks by (first_step, seq): valid ones, one holding a NaN (no ``vmin_ts``), one of
    only NaN (no summaries at all), compacted ones (blocks), one at the int64 extremes.
    """
    low, high = -(2**63), 2**63 - 1
    return [
        ChunkSummary(7, low, low + 9, 10, -1.5, 2.0, low + 3, low, 1.0, 2.0, None),
        ChunkSummary(1, 0, 1999, 2000, -4.0, 4.0, 5, 6, 1.0, 1.0, b"S-blocks-1"),
        ChunkSummary(3, 0, 999, 1000, -0.0, math.inf, 17, 999, 1.7e9, 1.7e9 + 1, None),
        ChunkSummary(9, 500, 600, 101, 1.0, 3.0, 550, 551, None, None, None),
        ChunkSummary(4, 1000, 1999, 1000, None, None, None, None, None, None, None),
        ChunkSummary(2, 2000, high, 50, -math.inf, 0.5, 2000, high, 3.0, 4.0, b"F-2"),
    ]  # fmt: skip


def packed(chunks: list[ChunkSummary]) -> bytes:
    """The chunks' summaries as ``packed_view``'s ``bytea`` (big-endian, NaN and 0 where
    ``vmin_ts`` is NULL).
    """
    records = np.zeros(len(chunks), dtype=PACKED)
    for i, c in enumerate(chunks):
        valid = c.vmin_ts is not None
        records[i] = (
            c.seq,
            c.first_step,
            c.last_step,
            c.n,
            c.vmin if valid else math.nan,
            c.vmax if valid else math.nan,
            c.vmin_step if valid else 0,
            c.vmax_step if valid else 0,
            c.vmin_ts if valid else math.nan,
            c.vmax_ts if valid else math.nan,
            version_of(c.seq),
        )
    return records.tobytes()


def version_of(seq: int) -> int:
    return 7_000 + seq  # a row version as the statement would give it


def columns_of(c: ChunkSummary) -> StoredChunk:
    return StoredChunk(c.seq, c.first_step, c.last_step, c.n, b"s%d" % c.seq, b"v", b"t")


def same(a: ViewRows, b: ViewRows) -> None:
    assert a.seqs.tolist() == b.seqs.tolist()
    assert a.counts.tolist() == b.counts.tolist()
    assert a.records.tobytes() == b.records.tobytes()  # NaN and -0.0 bit for bit
    assert a.blocked.tolist() == b.blocked.tolist()
    assert a.blocks == b.blocks
    assert a.read == b.read


@pytest.mark.parametrize("order", ["as read", "shuffled"])
def test_packed_summaries_read_as_the_rows_do(order: str) -> None:
    """In whatever order the database aggregated them (its aggregates are not ordered), the
    records and the arrays each in its own: the rows come by (first_step, seq), the two of
    first step 0 by seq.
    """
    chunks = summaries()
    sent = chunks if order == "as read" else [chunks[i] for i in (3, 2, 5, 0, 4, 1)]
    listed = [c for c in sent[::-1] if c.blocks or c.seq == 9]
    read = [columns_of(c) for c in listed if c.seq in (9, listed[0].seq)]  # not all with blocks
    assert len(read) == 2 and len(listed) == 3
    by_rows = ViewRows.of_summaries(chunks, read)
    # As the statement's row gives them: seqs and blocks of the chunks with blocks or read,
    # the columns of those read (else NULL).
    columns = {c.seq: c for c in read}
    row = (
        len(chunks),
        packed(sent),
        [c.seq for c in listed],
        [c.blocks for c in listed],
        *(
            [getattr(columns[c.seq], name) if c.seq in columns else None for c in listed]
            for name in ("steps", "vals", "ts")
        ),
    )
    by_packed = rows_of_packed(row)
    same(by_packed, by_rows)
    seqs = [c.seq for c in chunks]
    assert by_packed.versions_of(seqs) == {seq: version_of(seq) for seq in seqs}
    assert by_rows.versions_of(seqs) is None  # (SQLite's rows have none)
    assert by_rows.blocked.tolist() == [1, 5]
    assert by_rows.blocks == [b"S-blocks-1", b"F-2"]
    records = by_rows.records
    assert np.isnan(records["vmin"][[3, 4]]).all() and (records["vmin_step"][[3, 4]] == 0).all()
    assert records["vmin"][2].tobytes() == np.float64(-0.0).tobytes()
    assert records["first_step"][0] == -(2**63) and records["last_step"][5] == 2**63 - 1


def test_no_chunks_read_as_empty_rows() -> None:
    empty = rows_of_packed((0, None, None, None, None, None, None))
    same(empty, ViewRows.of_summaries([]))
    assert len(empty) == 0


def test_merged_rows_keep_history_order_and_each_blocks_column_with_its_chunk() -> None:
    chunks = summaries()
    stored, staged = chunks[::2], chunks[1::2]
    merged = ViewRows.of_summaries(stored, [columns_of(stored[0])]).merged(
        ViewRows.of_summaries(staged, [columns_of(staged[-1])])
    )
    same(merged, ViewRows.of_summaries(chunks, [columns_of(stored[0]), columns_of(staged[-1])]))
    assert ViewRows.of_summaries(chunks).merged(ViewRows.of_summaries([])).seqs.tolist() == [
        c.seq for c in chunks
    ]


def test_with_read_adds_columns_and_keeps_the_rest() -> None:
    chunks = summaries()
    rows = ViewRows.of_summaries(chunks, [columns_of(chunks[0])])
    more = rows.with_read([columns_of(chunks[3])])
    assert sorted(more.read) == [7, 9] and sorted(rows.read) == [7]
    assert more.records is rows.records
