"""initial schema.

Revision ID: 26280ff863b1
Revises:
Create Date: 2026-11-23 05:00:05.336759

"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "26280ff863b1"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations spell types out rather than import the models, which keep changing.
TIMESTAMP = sa.DateTime(timezone=True)
JSON_OBJECT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "agents",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "framework",
            sa.Enum(
                "baseline",
                "langchain",
                "crewai",
                "custom",
                name="framework",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("config", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agents_created_at"), ["created_at"], unique=False)

    op.create_table(
        "templates",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("config", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_templates_name")),
    )
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_templates_created_at"), ["created_at"], unique=False)

    op.create_table(
        "experiments",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("scenario_id", sa.String(length=100), nullable=False),
        sa.Column("params", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("hypothesis", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "draft",
                "running",
                "completed",
                "failed",
                name="experiment_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("results_summary", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("last_run_number", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_experiments_agent_id_agents"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiments_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_experiments_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_experiments_scenario_id"), ["scenario_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_experiments_status"), ["status"], unique=False)

    op.create_table(
        "runs",
        sa.Column("experiment_id", sa.String(length=36), nullable=False),
        sa.Column("run_number", sa.BigInteger(), nullable=False),
        sa.Column("scenario_id", sa.String(length=100), nullable=False),
        sa.Column("scenario_hash", sa.String(length=64), nullable=False),
        sa.Column("params", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "starting",
                "running",
                "completed",
                "failed",
                "stopped",
                name="run_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("current_tick", sa.BigInteger(), nullable=False),
        sa.Column("total_ticks", sa.BigInteger(), nullable=False),
        sa.Column("progress_percent", sa.Float(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.Column("duration", sa.Interval(), nullable=True),
        sa.Column("metrics_summary", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("results", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_details", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("current_tick >= 0 AND total_ticks >= 0", name=op.f("ck_runs_ticks")),
        sa.CheckConstraint(
            "progress_percent >= 0 AND progress_percent <= 100", name=op.f("ck_runs_progress")
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_runs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint(
            "experiment_id", "run_number", name=op.f("uq_runs_experiment_id_run_number")
        ),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_scenario_id"), ["scenario_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "simulations",
        sa.Column("experiment_id", sa.String(length=36), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "running",
                "stopped",
                "completed",
                "failed",
                name="simulation_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("parameters", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("metadata", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("results_summary", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_simulations_experiment_id_experiments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_simulations")),
    )
    with op.batch_alter_table("simulations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_simulations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_simulations_experiment_id"), ["experiment_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_simulations_status"), ["status"], unique=False)

    op.create_table(
        "run_participants",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=100), nullable=False),
        sa.Column("config_override", JSON_OBJECT, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_run_participants_agent_id_agents"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_run_participants_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_participants")),
        sa.UniqueConstraint("run_id", "agent_id", name=op.f("uq_run_participants_run_id_agent_id")),
    )
    with op.batch_alter_table("run_participants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_run_participants_agent_id"), ["agent_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_run_participants_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_run_participants_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run_participants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_participants_run_id"))
        batch_op.drop_index(batch_op.f("ix_run_participants_created_at"))
        batch_op.drop_index(batch_op.f("ix_run_participants_agent_id"))

    op.drop_table("run_participants")
    with op.batch_alter_table("simulations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_simulations_status"))
        batch_op.drop_index(batch_op.f("ix_simulations_experiment_id"))
        batch_op.drop_index(batch_op.f("ix_simulations_created_at"))

    op.drop_table("simulations")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_scenario_id"))
        batch_op.drop_index(batch_op.f("ix_runs_experiment_id"))
        batch_op.drop_index(batch_op.f("ix_runs_created_at"))

    op.drop_table("runs")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiments_status"))
        batch_op.drop_index(batch_op.f("ix_experiments_scenario_id"))
        batch_op.drop_index(batch_op.f("ix_experiments_created_at"))
        batch_op.drop_index(batch_op.f("ix_experiments_agent_id"))

    op.drop_table("experiments")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_templates_created_at"))

    op.drop_table("templates")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_created_at"))

    op.drop_table("agents")
