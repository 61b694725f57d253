"""SQLAlchemy models: the one source of truth for the schema on SQLite and PostgreSQL.

Alembic's env.py takes ``Base.metadata``; the naming convention gives every constraint a stable
name, which migrations rely on and which the unit of work uses to name the offending field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Interval,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from simtrack.server.domain.model import (
    ExperimentStatus,
    Framework,
    RunStatus,
    SimulationStatus,
)
from simtrack.server.domain.tenancy import Role

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONObject = JSON().with_variant(JSONB(), "postgresql")


def _enum(cls: type[StrEnum], name: str) -> Enum:
    # Stored as short strings with a CHECK constraint: portable and easy to extend by migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONObject}


def _json_column() -> Mapped[dict[str, Any]]:
    return mapped_column(default=dict, server_default=text("'{}'"))


class TimestampedMixin:
    """Surrogate UUID key plus automatically maintained creation and update times."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Tenant(TimestampedMixin, Base):
    """An isolated customer: every owned row carries its tenant."""

    __tablename__ = "tenants"
    __table_args__ = (UniqueConstraint("name"),)

    name: Mapped[str] = mapped_column(String(200))


class ApiKey(TimestampedMixin, Base):
    """A tenant's API key; only a hash of the token is kept, found by its public prefix."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("prefix"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class TenantOwnedMixin(TimestampedMixin):
    """Rows that belong to a tenant; repositories scope every query by it."""

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )


# Tables under row-level security on PostgreSQL (see the tenancy migration).
TENANT_OWNED_TABLES = (
    "agents",
    "templates",
    "experiments",
    "simulations",
    "runs",
    "run_participants",
)


class Agent(TenantOwnedMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200))
    framework: Mapped[Framework] = mapped_column(_enum(Framework, "framework"))
    config: Mapped[dict[str, Any]] = _json_column()


class Template(TenantOwnedMixin, Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict[str, Any]] = _json_column()


class Experiment(TenantOwnedMixin, Base):
    __tablename__ = "experiments"

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="RESTRICT"), index=True)
    scenario_id: Mapped[str] = mapped_column(String(100), index=True)
    params: Mapped[dict[str, Any]] = _json_column()
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[ExperimentStatus] = mapped_column(
        _enum(ExperimentStatus, "experiment_status"), default=ExperimentStatus.DRAFT, index=True
    )
    results_summary: Mapped[dict[str, Any]] = _json_column()
    # The last run_number handed out; incremented atomically so numbers are never reused.
    last_run_number: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Simulation(TenantOwnedMixin, Base):
    __tablename__ = "simulations"

    experiment_id: Mapped[str | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[SimulationStatus] = mapped_column(
        _enum(SimulationStatus, "simulation_status"), default=SimulationStatus.PENDING, index=True
    )
    parameters: Mapped[dict[str, Any]] = _json_column()
    # "metadata" is reserved by SQLAlchemy's declarative base.
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", default=dict, server_default=text("'{}'")
    )
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    results_summary: Mapped[dict[str, Any]] = _json_column()


class Run(TenantOwnedMixin, Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "run_number"),
        CheckConstraint("progress_percent >= 0 AND progress_percent <= 100", name="progress"),
        CheckConstraint("current_tick >= 0 AND total_ticks >= 0", name="ticks"),
    )

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    run_number: Mapped[int] = mapped_column(BigInteger)
    scenario_id: Mapped[str] = mapped_column(String(100), index=True)
    scenario_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = _json_column()
    status: Mapped[RunStatus] = mapped_column(
        _enum(RunStatus, "run_status"), default=RunStatus.PENDING, index=True
    )
    current_tick: Mapped[int] = mapped_column(BigInteger, default=0)
    total_ticks: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_percent: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    duration: Mapped[timedelta | None] = mapped_column(Interval)
    metrics_summary: Mapped[dict[str, Any]] = _json_column()
    results: Mapped[dict[str, Any]] = _json_column()
    error_message: Mapped[str] = mapped_column(Text, default="")
    error_details: Mapped[dict[str, Any]] = _json_column()
    worker_id: Mapped[str] = mapped_column(String(200), default="")


class Participant(TenantOwnedMixin, Base):
    __tablename__ = "run_participants"
    __table_args__ = (UniqueConstraint("run_id", "agent_id"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="RESTRICT"), index=True)
    role: Mapped[str] = mapped_column(String(100), default="")
    config_override: Mapped[dict[str, Any]] = _json_column()
