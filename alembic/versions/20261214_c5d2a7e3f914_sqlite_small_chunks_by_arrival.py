"""SQLite: the small chunks' index in arrival order.

On SQLite the index compaction finds small chunks by was ordered by (tenant, metric), like the
primary key: each chunk row a fleet's commit inserts went to a random page of it, and SQLite
writes every page a commit dirtied to its WAL, in the server's own process. Replayed offline
(1,000 runs x 10 metrics, a message of 10 points per run a second, 100 messages a commit;
``synchronous=FULL``, WAL, 32 MiB of cache), a second of the fleet took 489 ms to write after
60 s with it and 219 ms without; ordered by arrival (``written_at``), its entries go to
its last page and the second took 234-239 ms. PostgreSQL keeps its index by metric (its writes are
the database server's, and its compaction reads the small chunks metric by metric).

Revision ID: c5d2a7e3f914
Revises: a4c2e9d17b35
Create Date: 2026-12-14 08:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c5d2a7e3f914"
down_revision: str | Sequence[str] | None = "a4c2e9d17b35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SMALL = sa.text("n < 1000")  # db/models.py SMALL_CHUNK_POINTS, as it is at this revision


def _swap(old: str, new: str, columns: list[str]) -> None:
    """SQLite only: the small chunks' index ``old`` replaced by ``new`` on ``columns``."""
    if op.get_context().dialect.name != "sqlite":
        return
    op.drop_index(old, table_name="metric_chunks")
    op.create_index(new, "metric_chunks", columns, unique=False, sqlite_where=SMALL)


def upgrade() -> None:
    _swap("ix_metric_chunks_small", "ix_metric_chunks_small_arrivals", ["written_at"])


def downgrade() -> None:
    _swap("ix_metric_chunks_small_arrivals", "ix_metric_chunks_small", ["tenant_id", "metric_id"])
