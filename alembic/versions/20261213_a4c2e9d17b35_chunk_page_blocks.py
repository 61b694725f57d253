"""chunk page blocks: per-page summaries of large chunks, compressed columns paged.

``blocks``: for each block of a chunk whose points are in history order (every compacted
chunk), its step range and its min and max point (``db/blocks.py``).
A downsampled view answers a block lying within one of its intervals from its record, and
decodes only the pages holding blocks an interval cuts, which paged columns (``simtrack/codec.py``)
allow: a 1,000-point view of a 1M-point compacted series no longer decodes all of it.

Existing compacted rows (a compressed column) of more than a block are backfilled, and their
columns rewritten paged (bit for bit the same points): every such chunk is read once, in key
order, ``BATCH`` at a time. Rows as ingest wrote them (raw) keep their chunk summaries.

Revision ID: a4c2e9d17b35
Revises: 3e8d1f6a9c54
Create Date: 2026-12-13 09:00:00.000000

"""

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from alembic import op
from simtrack.codec import encode_chunk, is_paged, is_tagged
from simtrack.server.db.blocks import PAGE_POINTS, SHORT_POINTS, block_summaries
from simtrack.server.db.chunks import unpack

# revision identifiers, used by Alembic.
revision: str = "a4c2e9d17b35"
down_revision: str | Sequence[str] | None = "3e8d1f6a9c54"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 200  # chunks read and updated per statement (compacted ones: 16,384 points each)

CHUNKS = sa.table(
    "metric_chunks",
    *(sa.column(name) for name in ("metric_id", "seq", "n", "first_step", "steps", "vals", "ts")),
    sa.column("blocks"),
)


def upgrade() -> None:
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("blocks", sa.LargeBinary(), nullable=True))
    backfill(op.get_bind())


def backfill(connection: sa.Connection) -> int:
    """Give every compacted chunk of more than a block its blocks and paged columns; the
    number of chunks rewritten.
    """
    c = CHUNKS.c
    read = sa.select(c.metric_id, c.seq, c.n, c.first_step, c.steps, c.vals, c.ts).where(
        c.n > SHORT_POINTS, c.blocks.is_(None)
    )
    update = (
        sa.update(CHUNKS)
        .where(c.metric_id == sa.bindparam("m"), c.seq == sa.bindparam("s"))
        .values({name: sa.bindparam(f"new_{name}") for name in ("blocks", "steps", "vals", "ts")})
    )
    after: tuple[str, int] | None = None
    done = 0
    while True:
        stmt = read.order_by(c.metric_id, c.seq).limit(BATCH)
        if after is not None:
            stmt = stmt.where(sa.tuple_(c.metric_id, c.seq) > sa.tuple_(*after))
        rows = connection.execute(stmt).all()
        if not rows:
            return done
        changes = []
        for metric_id, seq, n, first_step, steps_col, vals_col, ts_col in rows:
            steps, values, stamps = unpack(n, first_step, steps_col, vals_col, ts_col)
            columns = (steps_col, vals_col, ts_col)
            if not any(is_tagged(col) for col in columns):
                continue  # as ingest wrote it: its chunk summaries serve
            if n > 1 and bool((steps[1:] < steps[:-1]).any()):
                continue  # not in history order (compaction's never are)
            columns = encode_chunk(
                np.ascontiguousarray(steps),
                np.ascontiguousarray(values),
                np.ascontiguousarray(stamps),
                page=PAGE_POINTS,
            )
            blocks = block_summaries(steps, values, stamps)
            changes.append(
                {"m": metric_id, "s": seq, "new_blocks": blocks}
                | dict(zip(("new_steps", "new_vals", "new_ts"), columns, strict=True))
            )
        if changes:
            connection.execute(update, changes)
            done += len(changes)
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    _unpage(op.get_bind())
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.drop_column("blocks")


def _unpage(connection: sa.Connection) -> None:
    """Rewrite paged columns unpaged: the code of the revisions below reads no pages."""
    c = CHUNKS.c
    read = sa.select(c.metric_id, c.seq, c.n, c.first_step, c.steps, c.vals, c.ts).where(
        c.blocks.is_not(None)
    )
    update = (
        sa.update(CHUNKS)
        .where(c.metric_id == sa.bindparam("m"), c.seq == sa.bindparam("s"))
        .values({name: sa.bindparam(f"new_{name}") for name in ("steps", "vals", "ts")})
    )
    after: tuple[str, int] | None = None
    while True:
        stmt = read.order_by(c.metric_id, c.seq).limit(BATCH)
        if after is not None:
            stmt = stmt.where(sa.tuple_(c.metric_id, c.seq) > sa.tuple_(*after))
        rows = connection.execute(stmt).all()
        if not rows:
            return
        changes = []
        for metric_id, seq, n, first_step, steps_col, vals_col, ts_col in rows:
            if any(is_paged(col) for col in (steps_col, vals_col, ts_col)):
                columns = encode_chunk(*unpack(n, first_step, steps_col, vals_col, ts_col))
                changes.append(
                    {"m": metric_id, "s": seq}
                    | dict(zip(("new_steps", "new_vals", "new_ts"), columns, strict=True))
                )
        if changes:
            connection.execute(update, changes)
        after = (rows[-1][0], rows[-1][1])
