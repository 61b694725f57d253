"""Repositories: every query goes through here, so tenant scoping lives in one place.

Each read starts from ``_select()``, which keeps only the calling tenant's rows, and each new row
gets the caller's tenant in ``add()``. Repositories add, get, list and delete inside the caller's
unit of work; they never commit. (On PostgreSQL, row-level security enforces the same again.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import ColumnElement, Select, column, exists, select, table, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from simtrack.server.db import models
from simtrack.server.db.models import UTCDateTime
from simtrack.server.domain.listing import Condition, Cursor, PageRequest
from simtrack.server.domain.model import RunStatus
from simtrack.server.domain.tenancy import current_tenant

M = TypeVar("M", bound=models.TenantOwnedMixin)


def scoped(model: type[models.TenantOwnedMixin]) -> ColumnElement[bool]:
    """The condition that keeps only the calling tenant's rows of ``model``."""
    return model.tenant_id == current_tenant()


class Repository(Generic[M]):
    """Common operations of one tenant-owned table."""

    model: type[M]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _select(self) -> Select[M]:
        # The one place every read of this table starts from.
        return select(self.model).where(scoped(self.model))

    async def get(self, id: str, *, for_update: bool = False) -> M | None:
        stmt = self._select().where(self.model.id == id)
        if for_update:
            # Lock the row and refresh any copy this session already holds.
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def add(self, obj: M) -> M:
        obj.tenant_id = current_tenant()
        self.session.add(obj)
        await self.session.flush()
        return obj

    async def delete(self, obj: M) -> None:
        await self.session.delete(obj)
        await self.session.flush()

    async def flush(self) -> None:
        await self.session.flush()

    async def list(self, page: PageRequest, **parent: str) -> tuple[list[M], Cursor | None]:
        """One page in creation order, plus the cursor of the next page (None on the last).

        ``parent`` narrows to the children of one parent, e.g. ``run_id=...``.
        """
        stmt = self._select().filter_by(**parent)
        stmt = stmt.where(*(self._condition(c) for c in page.conditions))
        if page.after is not None:
            key = tuple_(self.model.created_at, self.model.id)
            stmt = stmt.where(key > tuple_(page.after.created_at, page.after.id))
        stmt = stmt.order_by(self.model.created_at, self.model.id).limit(page.size + 1)
        rows = list((await self.session.execute(stmt)).scalars())
        if len(rows) <= page.size:
            return rows, None
        last = rows[page.size - 1]
        return rows[: page.size], Cursor(last.created_at, last.id)

    def _condition(self, condition: Condition) -> ColumnElement[bool]:
        column: ColumnElement[Any] = getattr(self.model, condition.field)
        if condition.value is None:
            return column.is_(None) if condition.op == "=" else column.is_not(None)
        equal = column == condition.value
        return cast(ColumnElement[bool], equal if condition.op == "=" else ~equal)


class AgentRepository(Repository[models.Agent]):
    model = models.Agent

    async def name_taken(self, name: str, *, other_than: str | None = None) -> bool:
        stmt = self._select().where(models.Agent.name == name)
        if other_than is not None:
            stmt = stmt.where(models.Agent.id != other_than)
        return (await self.session.execute(stmt.limit(1))).first() is not None

    async def is_referenced(self, agent_id: str) -> bool:
        """Whether an experiment or a run participant refers to the agent."""
        used = select(
            exists().where(models.Experiment.agent_id == agent_id, scoped(models.Experiment))
            | exists().where(models.Participant.agent_id == agent_id, scoped(models.Participant))
        )
        return bool((await self.session.execute(used)).scalar())


class TemplateRepository(Repository[models.Template]):
    model = models.Template

    async def name_taken(self, name: str, *, other_than: str | None = None) -> bool:
        stmt = self._select().where(models.Template.name == name)
        if other_than is not None:
            stmt = stmt.where(models.Template.id != other_than)
        return (await self.session.execute(stmt.limit(1))).first() is not None


class ExperimentRepository(Repository[models.Experiment]):
    model = models.Experiment

    async def next_run_number(self, experiment_id: str) -> int:
        """Atomically hand out the experiment's next run number.

        The UPDATE takes the experiment row's lock until commit, so concurrent creates on
        PostgreSQL queue up instead of reading the same maximum; numbers are never reused.
        """
        stmt = (
            update(models.Experiment)
            .where(models.Experiment.id == experiment_id, scoped(models.Experiment))
            .values(last_run_number=models.Experiment.last_run_number + 1)
            .returning(models.Experiment.last_run_number)
            .execution_options(synchronize_session=False)
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def run_statuses(self, experiment_id: str) -> list[RunStatus]:
        stmt = (
            select(models.Run.status)
            .where(models.Run.experiment_id == experiment_id, scoped(models.Run))
            .distinct()
        )
        return list((await self.session.execute(stmt)).scalars())


class SimulationRepository(Repository[models.Simulation]):
    model = models.Simulation


class RunRepository(Repository[models.Run]):
    model = models.Run

    async def silent_since(self, cutoff: datetime) -> list[models.Run]:
        """Running runs whose worker has not been heard from since ``cutoff``."""
        stmt = self._select().where(
            models.Run.status == RunStatus.RUNNING,
            models.Run.last_seen_at < cutoff,
        )
        return list((await self.session.execute(stmt.with_for_update())).scalars())

    async def cancelled_before(self, cutoff: datetime) -> list[models.Run]:
        """Running runs whose cancel was requested before ``cutoff`` and never confirmed."""
        stmt = self._select().where(
            models.Run.status == RunStatus.RUNNING,
            models.Run.cancel_requested_at < cutoff,
        )
        return list((await self.session.execute(stmt.with_for_update())).scalars())


class ParticipantRepository(Repository[models.Participant]):
    model = models.Participant

    async def exists_for(self, run_id: str, agent_id: str) -> bool:
        stmt = self._select().where(
            models.Participant.run_id == run_id, models.Participant.agent_id == agent_id
        )
        return (await self.session.execute(stmt.limit(1))).first() is not None


class MetricRepository(Repository[models.Metric]):
    model = models.Metric

    async def for_run(self, run_id: str) -> list[models.Metric]:
        stmt = self._select().where(models.Metric.run_id == run_id).order_by(models.Metric.name)
        return list((await self.session.execute(stmt)).scalars())


class AccessRepository:
    """Tenants and API keys: the catalogue authentication reads before any tenant is known.

    Not tenant-scoped, so only the authenticator and the operators' commands use it.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, obj: models.Tenant | models.ApiKey) -> None:
        self.session.add(obj)
        await self.session.flush()

    async def tenant(self, id: str) -> models.Tenant | None:
        return await self.session.get(models.Tenant, id)

    async def tenant_named(self, name: str) -> models.Tenant | None:
        stmt = select(models.Tenant).where(models.Tenant.name == name)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def tenants(self) -> list[models.Tenant]:
        stmt = select(models.Tenant).order_by(models.Tenant.created_at, models.Tenant.id)
        return list((await self.session.execute(stmt)).scalars())

    async def key_by_prefix(self, prefix: str) -> models.ApiKey | None:
        stmt = select(models.ApiKey).where(models.ApiKey.prefix == prefix)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def keys(self, tenant_id: str | None = None) -> list[models.ApiKey]:
        stmt = select(models.ApiKey).order_by(models.ApiKey.created_at, models.ApiKey.id)
        if tenant_id is not None:
            stmt = stmt.where(models.ApiKey.tenant_id == tenant_id)
        return list((await self.session.execute(stmt)).scalars())

    async def touch_key(self, key_id: str, when: datetime) -> None:
        # A plain table, not the entity: a key's use is not an update of the key (no
        # updated_at), and the application role may only write last_used_at.
        keys = table("api_keys", column("id"), column("last_used_at", UTCDateTime()))
        await self.session.execute(
            update(keys).where(keys.c.id == key_id).values(last_used_at=when)
        )


async def ping(session: AsyncSession) -> None:
    """A trivial round trip, for health checks."""
    await session.execute(select(1))
