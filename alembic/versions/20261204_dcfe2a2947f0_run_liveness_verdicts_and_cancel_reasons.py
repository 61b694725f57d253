"""run liveness verdicts and cancel reasons.

A run failed by the liveness sweep is marked (vanished_at), so its worker's late data or
return can overrule the verdict; a cancel keeps its reason for every redelivery.

Revision ID: dcfe2a2947f0
Revises: de713ea7d47d
Create Date: 2026-12-04 07:38:13.011387

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "dcfe2a2947f0"
down_revision: str | Sequence[str] | None = "de713ea7d47d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cancel_reason", sa.Text(), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("vanished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revived_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("revived_at")
        batch_op.drop_column("vanished_at")
        batch_op.drop_column("cancel_reason")
