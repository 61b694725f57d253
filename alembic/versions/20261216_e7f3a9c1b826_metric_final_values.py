"""metric final values: an ended run's metric summaries, indexed for ordered lists.

ListRuns ordered by a metric (``metrics.total_profit desc``) joined every run to its metric's
row and sorted them all: 20 ms of PostgreSQL's time for a page among 10,000 runs, growing with
the runs. An index of the summaries would let it read a page's rows in order, but the writer
updates them at every commit, in place (HOT) only while no indexed column changes: an index of
``last_value`` cost a fleet 60% more of PostgreSQL's CPU (0.32 -> 0.52 cores, acks p99 246 ->
368 ms). So the summaries of a run that has ended, which rarely change again, are copied into
indexed columns (``final_*``) by whoever ends it, in the same transaction (the writer also
after a late write to an ended run; a revived run's are cleared). A list reads ended runs in
the index's order and sorts only the rest, found by the same index (a NULL copy). Existing
ended runs' metrics are copied here.

Revision ID: e7f3a9c1b826
Revises: d8e4b1c7a205
Create Date: 2026-12-16 08:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e7f3a9c1b826"
down_revision: str | Sequence[str] | None = "d8e4b1c7a205"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = ("final_last", "final_min", "final_max")


def upgrade() -> None:
    for name in FINAL:
        op.add_column("metrics", sa.Column(name, sa.Float(), nullable=True))
        op.create_index(f"ix_metrics_{name}", "metrics", ["tenant_id", "name", name])
    op.execute(
        "UPDATE metrics SET final_last = last_value, final_min = min_value,"
        " final_max = max_value WHERE run_id IN"
        " (SELECT id FROM runs WHERE status IN ('completed', 'failed', 'stopped'))"
    )


def downgrade() -> None:
    for name in FINAL:
        op.drop_index(f"ix_metrics_{name}", table_name="metrics")
    with op.batch_alter_table("metrics") as batch:  # SQLite copies the table: once
        for name in FINAL:
            batch.drop_column(name)
