"""chunk view summaries: the timestamps of each chunk's min and max points.

``vmin_ts`` / ``vmax_ts``: set when every value of the chunk is finite. A downsampled view
then answers each chunk lying within one of its intervals from the row's summaries (min, max,
their steps and now their timestamps) without reading its columns: a 1,000-point view of a
1M-point series reads a thousand small rows instead of 16 MB.

Existing rows are backfilled, and so are the extreme steps of rows stored before
``7c1e5a9b2d40`` (which left them NULL): every chunk is read once, in key order, with the
decoder that reads every format chunks were ever stored in.

Revision ID: 3e8d1f6a9c54
Revises: 9b3f6c2e8a17
Create Date: 2026-12-12 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from simtrack.server.db.chunks import Extremes, extremes, unpack

# revision identifiers, used by Alembic.
revision: str = "3e8d1f6a9c54"
down_revision: str | Sequence[str] | None = "9b3f6c2e8a17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000  # chunks read and updated per statement

CHUNKS = sa.table(
    "metric_chunks",
    *(sa.column(name) for name in ("metric_id", "seq", "n", "first_step", "steps", "vals", "ts")),
    *(sa.column(name) for name in ("vmin", "vmax", "vmin_step", "vmax_step", "vmin_ts", "vmax_ts")),
)


def upgrade() -> None:
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vmin_ts", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("vmax_ts", sa.Float(), nullable=True))
    _backfill(op.get_bind())


def _backfill(connection: sa.Connection) -> None:
    c = CHUNKS.c
    read = sa.select(c.metric_id, c.seq, c.n, c.first_step, c.steps, c.vals, c.ts)
    update = (
        sa.update(CHUNKS)
        .where(c.metric_id == sa.bindparam("m"), c.seq == sa.bindparam("s"))
        .values({name: sa.bindparam(name) for name in Extremes._fields})
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
            steps, values, stamps = unpack(n, first_step, steps_col, vals_col, ts_col)
            found = extremes(steps, values, stamps)
            changes.append({"m": metric_id, "s": seq} | found._asdict())
        connection.execute(update, changes)
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.drop_column("vmax_ts")
        batch_op.drop_column("vmin_ts")
