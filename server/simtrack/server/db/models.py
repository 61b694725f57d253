"""SQLAlchemy models: the one source of truth for the schema on SQLite and PostgreSQL.

Alembic's env.py takes ``Base.metadata``; the naming convention gives every constraint a stable
name, which migrations rely on and which the unit of work uses to name the offending field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from simtrack.server.core.model import (
    ArtifactType,
    ExperimentStatus,
    Framework,
    MetricKind,
    RunStatus,
    SimulationStatus,
    utcnow,
)
from simtrack.server.core.tenancy import Role

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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


def row_version(model: type[Base]) -> ColumnElement[int]:
    """PostgreSQL: the version of a row of ``model``'s table as it is: the transaction that
    wrote it (its xmin; an xid converts to a number only through text).
    """
    return literal_column(f"{model.__tablename__}.xmin::text::bigint", BigInteger)


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


# Tables under row-level security on PostgreSQL (see the tenancy and telemetry migrations).
TENANT_OWNED_TABLES = (
    "agents",
    "templates",
    "experiments",
    "simulations",
    "runs",
    "run_participants",
    "metrics",
    "metric_chunks",
    "staged_messages",
    "events",
    "validations",
    "artifacts",
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
        {"postgresql_with": {"fillfactor": 50}},  # watermarks updated in place (see Metric)
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
    # The highest stream seq committed: written in the same transaction as the data it covers.
    committed_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the run's worker was last heard from (liveness).
    last_seen_at: Mapped[datetime | None]
    # When a cancel was requested; the worker is told on every (re)connect until it stops.
    cancel_requested_at: Mapped[datetime | None]
    # Why (CancelRun's reason), told with every redelivery of the cancel.
    cancel_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Set while the run stands failed only because the liveness sweep found its worker silent:
    # the worker's own account (late data, its final status, itself alive) may still overrule.
    vanished_at: Mapped[datetime | None]
    # The last time a vanished run's worker came back alive and the run returned to running.
    revived_at: Mapped[datetime | None]
    # When the run was last paused: the pause (and the resume after it) keep one command id
    # derived from it, so a worker told again on reconnect can tell it is the same.
    paused_at: Mapped[datetime | None]
    # When the scenario's success criteria were checked (once, after the run completed).
    criteria_checked_at: Mapped[datetime | None]


class Validation(TenantOwnedMixin, Base):
    """A verdict on a run: one per success criterion of its scenario when it completes
    (validator "scenario", kind = the metric), or recorded by an external validator.
    """

    __tablename__ = "validations"
    __table_args__ = (UniqueConstraint("run_id", "validator", "kind"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    validator: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(200))
    passed: Mapped[bool]
    score: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = _json_column()


class Artifact(TenantOwnedMixin, Base):
    """A file stored with a run. The row is written once every byte is in the artifact store
    (``simtrack.server.artifact_store``), so a listed artifact is always complete.
    """

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[ArtifactType] = mapped_column(_enum(ArtifactType, "artifact_type"))
    content_type: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Participant(TenantOwnedMixin, Base):
    __tablename__ = "run_participants"
    __table_args__ = (UniqueConstraint("run_id", "agent_id"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="RESTRICT"), index=True)
    role: Mapped[str] = mapped_column(String(100), default="")
    config_override: Mapped[dict[str, Any]] = _json_column()


class Metric(TenantOwnedMixin, Base):
    """One metric of a run, with its summary kept current by the ingest writer.

    The ``final_*`` columns copy the summary once the run has ended (whoever ends it copies
    them, ``repositories.finalize_metrics``): they are indexed for lists ordered by a metric,
    the summary itself is not.
    """

    __tablename__ = "metrics"
    # Half of each page free: the writer updates summaries in place at every commit, and
    # PostgreSQL can then keep the new version on the same page with no index entries (HOT),
    # as long as no indexed column changes: hence the copies, set once a run has ended (an
    # index of ``last_value`` itself cost a fleet 60% more of PostgreSQL's CPU).
    __table_args__ = (
        UniqueConstraint("run_id", "name"),
        Index("ix_metrics_final_last", "tenant_id", "name", "final_last"),
        Index("ix_metrics_final_min", "tenant_id", "name", "final_min"),
        Index("ix_metrics_final_max", "tenant_id", "name", "final_max"),
        {"postgresql_with": {"fillfactor": 50}},
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(50), default="")
    kind: Mapped[MetricKind] = mapped_column(_enum(MetricKind, "metric_kind"))
    labels: Mapped[dict[str, Any]] = _json_column()
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Float)
    min_value: Mapped[float | None] = mapped_column(Float)
    max_value: Mapped[float | None] = mapped_column(Float)
    # NULL while the run runs; once it has ended, equal to its summary (``finalize_metrics``
    # wherever a run ends or an ended run is written to, NULL again if it is revived).
    final_last: Mapped[float | None] = mapped_column(Float)
    final_min: Mapped[float | None] = mapped_column(Float)
    final_max: Mapped[float | None] = mapped_column(Float)


FINAL_COPIES = {"last_value": "final_last", "min_value": "final_min", "max_value": "final_max"}


# A chunk of fewer points is small: compaction merges it into large ones. A constant, not a
# setting: the partial index that finds small chunks is defined with it.
SMALL_CHUNK_POINTS = 1000


class MetricChunk(Base):
    """Up to a batch's worth of one metric's points, packed as little-endian columns.

    One row per (metric, stream seq) as ingest writes them; compaction later rewrites a
    metric's small chunks into large ones (``domain/compaction.py``), compressed. The chunk's
    step range, count and finite min/max (with the first step holding each) summarise it
    without its columns.
    """

    __tablename__ = "metric_chunks"
    # The small chunks, for compaction to find (few: they live seconds once it runs).
    # PostgreSQL: by metric, as compaction reads them. SQLite: in arrival order, so a commit's
    # entries go to the index's last page; by metric, each row of a fleet's commit dirtied a
    # page of its own, which SQLite writes in the server's process: commits of a 100,000
    # points/s fleet took twice as long (``alembic/versions/..._sqlite_small_chunks_...``).
    __table_args__ = (
        Index(
            "ix_metric_chunks_small",
            "tenant_id",
            "metric_id",
            postgresql_where=text(f"n < {SMALL_CHUNK_POINTS}"),
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_metric_chunks_small_arrivals",
            "written_at",
            sqlite_where=text(f"n < {SMALL_CHUNK_POINTS}"),
        ).ddl_if(dialect="sqlite"),
    )

    metric_id: Mapped[str] = mapped_column(
        ForeignKey("metrics.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The metric's tenant and run, copied (row-level security filters on the tenant). No
    # foreign keys or indexes of their own: the metric's key ties the chunk to both, deleting a
    # run deletes its chunks through its metrics, and they were half of a fleet's insert cost.
    tenant_id: Mapped[str] = mapped_column(String(36))
    run_id: Mapped[str] = mapped_column(String(36))
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(Integer)
    vmin: Mapped[float | None] = mapped_column(Float)
    vmax: Mapped[float | None] = mapped_column(Float)
    # The lowest step holding vmin / vmax (the first in history order); NULL when that is
    # NULL, or for rows stored before these columns that compaction has not rewritten.
    vmin_step: Mapped[int | None] = mapped_column(BigInteger)
    vmax_step: Mapped[int | None] = mapped_column(BigInteger)
    # The timestamps of those two points, set only when every value of the chunk is finite:
    # then the summaries stand for the chunk in a downsampled view (one interval holding the
    # whole chunk needs its min and max point, not its columns).
    vmin_ts: Mapped[float | None] = mapped_column(Float)
    vmax_ts: Mapped[float | None] = mapped_column(Float)
    # Compacted chunks: the summaries of each page of their paged columns (``db/blocks.py``),
    # for downsampled views to decode only the pages an interval cuts. NULL: not compacted.
    blocks: Mapped[bytes | None] = mapped_column(LargeBinary)
    # When the row was stored: compaction waits for small chunks to settle. NULL: before
    # this column existed (long settled).
    written_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    steps: Mapped[bytes] = mapped_column(LargeBinary)  # int64
    vals: Mapped[bytes] = mapped_column(LargeBinary)  # float64
    ts: Mapped[bytes] = mapped_column(LargeBinary)  # float64 unix seconds


class StagedMessage(Base):
    """A stream message's series, all in one row, until compaction's first step moves them
    into metric chunks (``domain/staging.py``): a fleet's message of ten metrics of two
    points each is one row and one primary-key entry, not ten. Only messages of fewer than
    ``SMALL_CHUNK_POINTS`` points are staged; readers read a metric's chunks and its series
    in its run's staged messages, in one snapshot.
    """

    __tablename__ = "staged_messages"
    # What the first step looks for, each run's arrivals and points, without reading a body.
    __table_args__ = (
        Index("ix_staged_messages_runs", "tenant_id", "run_id", "written_at", "points", "series"),
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # No foreign key of its own, as for chunks: the run's key ties the row to its tenant.
    tenant_id: Mapped[str] = mapped_column(String(36))
    written_at: Mapped[datetime] = mapped_column(UTCDateTime)
    points: Mapped[int] = mapped_column(Integer)
    series: Mapped[int] = mapped_column(Integer)  # metrics in the message
    body: Mapped[bytes] = mapped_column(LargeBinary)  # ``db/staged.py``


class Event(Base):
    """Something that happened in a run, in the order the worker sent it."""

    __tablename__ = "events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    step: Mapped[int] = mapped_column(BigInteger)
    # Nanoseconds since the Unix epoch, exactly as sent (a Timestamp has nanoseconds; a
    # datetime keeps microseconds). Eight bytes, as a timestamp column takes on PostgreSQL and
    # far fewer than SQLite's text; the range is 1677-09-21 to 2262-04-11.
    time_ns: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(100))
    # Not a foreign key: an event is history and outlives the agent it mentions.
    agent_id: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[dict[str, Any]] = _json_column()


class Ranked(NamedTuple):
    """A leaderboard row (a query's result, not a table): the run, its experiment's agent, the
    value it ranks by.
    """

    run: Run
    agent_id: str
    value: float
    last_step: int | None
