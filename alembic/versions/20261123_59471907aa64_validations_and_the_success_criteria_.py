"""validations and the success-criteria check.

Revision ID: 59471907aa64
Revises: f0495bb2cdca
Create Date: 2026-11-23 12:00:52.283303

"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "59471907aa64"
down_revision: str | Sequence[str] | None = "f0495bb2cdca"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_OBJECT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
POLICY = "tenant_isolation"
TENANT_MATCHES = "tenant_id = current_setting('app.tenant_id', true)"


def upgrade() -> None:
    op.create_table(
        "validations",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("validator", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=200), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("details", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_validations_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_validations_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validations")),
        sa.UniqueConstraint(
            "run_id", "validator", "kind", name=op.f("uq_validations_run_id_validator_kind")
        ),
    )
    with op.batch_alter_table("validations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_validations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_validations_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_validations_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("criteria_checked_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Runs that completed before this revision are not checked after the fact: their
    # scenario may have changed since.
    op.execute(
        "UPDATE runs SET criteria_checked_at = completed_at"
        " WHERE status = 'completed' AND completed_at IS NOT NULL"
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE validations ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE validations FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {POLICY} ON validations "
            f"USING ({TENANT_MATCHES}) WITH CHECK ({TENANT_MATCHES})"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON validations")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("criteria_checked_at")

    with op.batch_alter_table("validations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_validations_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_validations_run_id"))
        batch_op.drop_index(batch_op.f("ix_validations_created_at"))

    op.drop_table("validations")
