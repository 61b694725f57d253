"""tenants, api keys and tenant scoping.

Every owned row gets a tenant; rows that existed before move to the default tenant. On
PostgreSQL, row-level security (forced, so it binds the tables' owner too) keeps each
transaction to the tenant in ``app.tenant_id`` as a second wall behind the repositories.

Revision ID: 5415fdf8876f
Revises: 26280ff863b1
Create Date: 2026-11-23 05:10:40.251592

"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5415fdf8876f"
down_revision: str | Sequence[str] | None = "26280ff863b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000000"
OWNED_TABLES = ("agents", "templates", "experiments", "simulations", "runs", "run_participants")
# Names unique per tenant from now on (they were globally unique).
UNIQUE_NAMES = ("agents", "templates")
POLICY = "tenant_isolation"
TENANT_MATCHES = "tenant_id = current_setting('app.tenant_id', true)"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_index(op.f("ix_tenants_created_at"), "tenants", ["created_at"])
    op.create_table(
        "api_keys",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "reader",
                "writer",
                "admin",
                name="role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_created_at"), "api_keys", ["created_at"])
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    now = datetime.now(UTC)
    tenants = sa.table(
        "tenants",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", TIMESTAMP),
        sa.column("updated_at", TIMESTAMP),
    )
    op.bulk_insert(
        tenants,
        [{"id": DEFAULT_TENANT_ID, "name": "default", "created_at": now, "updated_at": now}],
    )

    for table in OWNED_TABLES:
        # Add nullable, move existing rows to the default tenant, then require it.
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("tenant_id", sa.String(length=36), nullable=True))
        op.execute(sa.text(f"UPDATE {table} SET tenant_id = :t").bindparams(t=DEFAULT_TENANT_ID))
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("tenant_id", existing_type=sa.String(36), nullable=False)
            batch_op.create_index(batch_op.f(f"ix_{table}_tenant_id"), ["tenant_id"])
            batch_op.create_foreign_key(
                batch_op.f(f"fk_{table}_tenant_id_tenants"),
                "tenants",
                ["tenant_id"],
                ["id"],
                ondelete="RESTRICT",
            )
            if table in UNIQUE_NAMES:
                batch_op.drop_constraint(batch_op.f(f"uq_{table}_name"), type_="unique")
                batch_op.create_unique_constraint(
                    batch_op.f(f"uq_{table}_tenant_id_name"), ["tenant_id", "name"]
                )

    if op.get_bind().dialect.name == "postgresql":
        for table in OWNED_TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY {POLICY} ON {table} "
                f"USING ({TENANT_MATCHES}) WITH CHECK ({TENANT_MATCHES})"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in OWNED_TABLES:
            op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in reversed(OWNED_TABLES):
        with op.batch_alter_table(table) as batch_op:
            if table in UNIQUE_NAMES:
                batch_op.drop_constraint(batch_op.f(f"uq_{table}_tenant_id_name"), type_="unique")
                batch_op.create_unique_constraint(batch_op.f(f"uq_{table}_name"), ["name"])
            batch_op.drop_constraint(
                batch_op.f(f"fk_{table}_tenant_id_tenants"), type_="foreignkey"
            )
            batch_op.drop_index(batch_op.f(f"ix_{table}_tenant_id"))
            batch_op.drop_column("tenant_id")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_index(op.f("ix_api_keys_created_at"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_tenants_created_at"), table_name="tenants")
    op.drop_table("tenants")
