"""durable pause and event times to the nanosecond.

Runs get a ``paused`` status (and ``paused_at``, which a pause's command id derives from).
Events keep their time as int64 nanoseconds since the epoch (``time_ns``) instead of a
timestamp, which held microseconds only: the same eight bytes on PostgreSQL, fewer than
SQLite's text. Existing times convert exactly; the few outside what int64 nanoseconds can
hold (before 1677-09-21 or after 2262-04-11) are clamped to its ends. Downgrading keeps the
microseconds, and runs that are paused are running again.

Revision ID: d4036f4b5131
Revises: dcfe2a2947f0
Create Date: 2026-12-04 07:44:21.468035

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d4036f4b5131"
down_revision: str | Sequence[str] | None = "dcfe2a2947f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_RUN_STATUSES = ("pending", "starting", "running", "completed", "failed", "stopped")
NEW_RUN_STATUSES = ("pending", "starting", "running", "paused", "completed", "failed", "stopped")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Whole seconds since the epoch (floored) and the microseconds after them, of ``time``.
SECONDS_AND_MICROS = {
    "postgresql": (
        "extract(epoch from date_trunc('second', time))::bigint",
        "extract(microseconds from time)::bigint % 1000000",
    ),
    # SQLAlchemy stores 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) on SQLite.
    "sqlite": (
        "CAST(strftime('%s', substr(time, 1, 19)) AS INTEGER)",
        "CAST(substr(time, 21, 6) AS INTEGER)",
    ),
}
# Of ``time_ns``: the floored seconds, and the microseconds after them.
NANOS_TO_TIME = {
    "postgresql": (
        "timestamptz '1970-01-01 00:00:00+00'"
        " + floor(time_ns::numeric / 1000000000) * interval '1 second'"
        " + floor((time_ns::numeric - floor(time_ns::numeric / 1000000000) * 1000000000) / 1000)"
        " * interval '1 microsecond'"
    ),
    "sqlite": (
        "strftime('%Y-%m-%d %H:%M:%S', (time_ns - ((time_ns % 1000000000) + 1000000000)"
        " % 1000000000) / 1000000000, 'unixepoch') || '.' || printf('%06d',"
        " (((time_ns % 1000000000) + 1000000000) % 1000000000) / 1000)"
    ),
}


def _status_check(statuses: Sequence[str]) -> str:
    return "status IN ({})".format(", ".join(f"'{s}'" for s in statuses))


def _row_security(table: str, force: bool) -> None:
    # Forced row-level security would hide every row from a non-superuser owner's UPDATE.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table} {'' if force else 'NO '}FORCE ROW LEVEL SECURITY")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(batch_op.f("ck_runs_run_status"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_runs_run_status"), _status_check(NEW_RUN_STATUSES)
        )

    op.add_column("events", sa.Column("time_ns", sa.BigInteger(), nullable=True))
    seconds, micros = SECONDS_AND_MICROS[dialect]
    _row_security("events", force=False)
    op.execute(
        f"UPDATE events SET time_ns = CASE WHEN {seconds} < -9223372036 THEN {INT64_MIN} "
        f"WHEN {seconds} >= 9223372036 THEN {INT64_MAX} "
        f"ELSE {seconds} * 1000000000 + {micros} * 1000 END"
    )
    _row_security("events", force=True)
    with op.batch_alter_table("events") as batch_op:
        batch_op.alter_column("time_ns", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column("time")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column("events", sa.Column("time", sa.DateTime(timezone=True), nullable=True))
    _row_security("events", force=False)
    op.execute(f"UPDATE events SET time = {NANOS_TO_TIME[dialect]}")
    _row_security("events", force=True)
    with op.batch_alter_table("events") as batch_op:
        batch_op.alter_column("time", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.drop_column("time_ns")

    _row_security("runs", force=False)
    op.execute("UPDATE runs SET status = 'running' WHERE status = 'paused'")
    _row_security("runs", force=True)
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_runs_run_status"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_runs_run_status"), _status_check(OLD_RUN_STATUSES)
        )
        batch_op.drop_column("paused_at")
