"""chunk compaction: extreme steps, arrival times and the small-chunk index.

``vmin_step`` / ``vmax_step``: the first step holding a chunk's min / max (NULL on rows stored
before, until compaction rewrites them: no backfill, which would read every chunk).
``written_at``: when a row was stored, so compaction lets small chunks settle (NULL: stored
before, long settled). ``ix_metric_chunks_small``: the small chunks compaction looks for.

Revision ID: 7c1e5a9b2d40
Revises: d4036f4b5131
Create Date: 2026-12-10 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7c1e5a9b2d40"
down_revision: str | Sequence[str] | None = "d4036f4b5131"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SMALL = sa.text("n < 1000")  # db/models.py SMALL_CHUNK_POINTS, as it was at this revision


def upgrade() -> None:
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vmin_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("vmax_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("written_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_metric_chunks_small",
        "metric_chunks",
        ["tenant_id", "metric_id"],
        unique=False,
        postgresql_where=SMALL,
        sqlite_where=SMALL,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_metric_chunks_small",
        table_name="metric_chunks",
        postgresql_where=SMALL,
        sqlite_where=SMALL,
    )
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.drop_column("written_at")
        batch_op.drop_column("vmax_step")
        batch_op.drop_column("vmin_step")
