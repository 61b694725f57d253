"""Staged messages: a fleet's small stream messages, one row each until compaction.

A worker of a fleet sends ten metrics of a few points each, five times a second: one chunk row
per metric and message made ten rows, ten primary-key entries at random pages, per message.
A message of fewer than 1,000 points is now one row (all its series in ``body``) until
compaction's first step moves a run's staged messages into metric chunks, a chunk per metric
for many messages (``domain/staging.py``), once they hold 1,000 points a metric or the run is
idle: the index holds what that needs (arrivals, points and series by run) beside the key.
Row-level security as every tenant's table.

Revision ID: d8e4b1c7a205
Revises: c5d2a7e3f914
Create Date: 2026-12-15 08:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d8e4b1c7a205"
down_revision: str | Sequence[str] | None = "c5d2a7e3f914"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"
TENANT_MATCHES = "tenant_id = current_setting('app.tenant_id', true)"


def upgrade() -> None:
    op.create_table(
        "staged_messages",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("series", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_staged_messages_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_staged_messages")),
    )
    op.create_index(
        "ix_staged_messages_runs",
        "staged_messages",
        ["tenant_id", "run_id", "written_at", "points", "series"],
        unique=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        # The body's packed floats do not compress (see the telemetry migration).
        op.execute("ALTER TABLE staged_messages ALTER COLUMN body SET STORAGE EXTERNAL")
        op.execute("ALTER TABLE staged_messages ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE staged_messages FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {POLICY} ON staged_messages "
            f"USING ({TENANT_MATCHES}) WITH CHECK ({TENANT_MATCHES})"
        )


def downgrade() -> None:
    # Staged points are moved into chunks first (a server's compaction does it, within
    # seconds): dropping the table with rows in it would lose them.
    rows = op.get_bind().execute(sa.text("SELECT count(*) FROM staged_messages")).scalar()
    if rows:
        raise RuntimeError(
            f"{rows} staged message(s) not yet compacted: run the server with compaction "
            "until staged_messages is empty, then downgrade"
        )
    op.drop_index("ix_staged_messages_runs", table_name="staged_messages")
    op.drop_table("staged_messages")
