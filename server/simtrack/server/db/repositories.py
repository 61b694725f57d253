"""Repositories: every query goes through here, so tenant scoping lives in one place.

Each read starts from ``_select()``, which keeps only the calling tenant's rows, and each new row
gets the caller's tenant in ``add()``. Repositories add, get, list and delete inside the caller's
unit of work; they never commit. (On PostgreSQL, row-level security enforces the same again.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    and_,
    bindparam,
    column,
    exists,
    func,
    or_,
    select,
    table,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from simtrack.server.core.filters import Filter
from simtrack.server.core.listing import Cursor, PageRequest
from simtrack.server.core.model import RUN_ATTACHED, MetricAggregate, RunStatus
from simtrack.server.core.tenancy import current_tenant
from simtrack.server.db import models
from simtrack.server.db.filter_sql import (
    SortKey,
    after_keys,
    matches,
    metric_sort_parts,
    same_tenant,
    sort_value,
)
from simtrack.server.db.models import UTCDateTime

M = TypeVar("M", bound=models.TenantOwnedMixin)


# Tables with a tenant column: the entities, and the telemetry rows that carry theirs.
Owned = (
    type[models.TenantOwnedMixin]
    | type[models.MetricChunk]
    | type[models.StagedMessage]
    | type[models.Event]
)


def scoped(model: Owned) -> ColumnElement[bool]:
    """The condition that keeps only the calling tenant's rows of ``model``."""
    return same_tenant(model.tenant_id)


IN_LIST_MAX = 500  # values per IN list: bounded statements whatever a caller asks


def in_parts(values: Sequence[str], size: int = IN_LIST_MAX) -> Iterator[Sequence[str]]:
    """``values`` in slices of at most ``size`` (at least one), for bounded IN lists."""
    size = max(size, 1)
    for start in range(0, len(values), size):
        yield values[start : start + size]


class Repository(Generic[M]):
    """Common operations of one tenant-owned table."""

    model: type[M]
    # The list's default order, which breaks ties of any other: a unique key of the rows listed.
    position: tuple[str, ...] = ("created_at", "id")

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
        """One page in the request's order (else creation order), plus the cursor of the next
        page (None on the last).

        ``parent`` narrows to the children of one parent, e.g. ``run_id=...``.
        """
        stmt = self._select().filter_by(**parent)
        return await list_page(self.session, stmt, self.model, self.position, page)


async def list_page(
    session: AsyncSession, stmt: Select[Any], model: Any, position: Sequence[str], page: PageRequest
) -> tuple[list[Any], Cursor | None]:
    """One page of ``stmt``'s rows of ``model`` matching ``page``'s filter, in its order and
    then by the ``position`` columns (a unique key), after its cursor: keyset paging, so a row
    inserted meanwhile is listed where it sorts and no other row moves.
    """
    rows = (await session.execute(page_statement(stmt, model, position, page))).all()
    return split_page([(row[0], tuple(row[1:])) for row in rows], position, page.size)


def page_statement(
    stmt: Select[Any],
    model: Any,
    position: Sequence[str],
    page: PageRequest,
    first_missing: bool = False,
    first: SortKey | None = None,
) -> Select[Any]:
    """``list_page``'s statement: one row more than the page (is there a next one?), each
    followed by its values of the page's sort keys (``key_0``, ...). ``first_missing``: only
    the rows without a value of the first key. ``first``: the first key, read from the row it
    is joined to (inner: every row has a value), in place of the order's own.
    """
    stmt = stmt.where(*(matches(model, c) for c in page.conditions))
    has_value = first is not None
    sort_keys = [sort_value(model, key.field) for key in page.order[has_value:]]
    if first is not None:
        sort_keys.insert(0, first)
        stmt = stmt.join(*first.joined or ())
    for sort_key in sort_keys[has_value:]:
        if sort_key.joined is not None:
            stmt = stmt.outerjoin(*sort_key.joined)
    values = [sort_key.value for sort_key in sort_keys]
    if first_missing:
        stmt = stmt.where(values[0].is_(None))
    columns = [getattr(model, name) for name in position]
    descending = [key.descending for key in page.order]
    if page.after is not None:
        after = tuple_(*columns) > tuple_(*page.after.position)
        stmt = stmt.where(after_keys(values, descending, page.after.keys, after, has_value))
    stmt = stmt.add_columns(*(v.label(f"key_{i}") for i, v in enumerate(values)))
    stmt = stmt.order_by(*_sort_order(values, descending, has_value), *columns)
    return stmt.limit(page.size + 1)


def bound_cursor(
    model: Any, position: Sequence[str], after: Cursor | None
) -> tuple[Cursor | None, dict[str, Any]]:
    """``after`` as bound parameters (a cursor of ``bindparam``s, and their values): a page's
    statement built from it serves every cursor of the same shape (the same keys unset).
    """
    if after is None:
        return None, {}
    values: dict[str, Any] = {}
    places = []
    for i, (name, value) in enumerate(zip(position, after.position, strict=True)):
        values[f"after_position_{i}"] = value
        places.append(bindparam(f"after_position_{i}", type_=getattr(model, name).type))
    keys: list[Any] = []
    for i, value in enumerate(after.keys):
        if value is None:  # a NULL key is the statement's shape, not a value
            keys.append(None)
            continue
        values[f"after_key_{i}"] = value
        keys.append(bindparam(f"after_key_{i}"))  # typed by what it is compared with
    return Cursor(tuple(places), tuple(keys)), values


def run_page_statements(
    columns: Sequence[ColumnElement[Any]], page: PageRequest
) -> list[Select[Any]]:
    """A page of runs (selected as ``columns``) as ``page_statement`` gives it, in statements
    read in turn until one row more than the page is found (the reads build them once for
    each shape of page, ``SqlReads._run_page_statements``).

    Ordered first by a metric, the runs with a value come first: a page of each of the two
    parts of ``filter_sql.metric_sort_parts`` (ended runs read in the order of an index of
    their values' copies, stopping after a page; the runs not ended, sorted), merged; then,
    only if those end within the page, the runs without a value. A page among 10,000 runs:
    about 1.4 ms of PostgreSQL's time, against 20 for joining and sorting them all.
    """
    run, position = models.Run, RunRepository.position
    base = select(*columns).where(scoped(run))
    first = page.order[0].field if page.order else ""
    if not first.startswith("metrics."):
        return [page_statement(base, run, position, page)]
    statements = []
    if page.after is None or page.after.keys[0] is not None:
        # Each part ordered and limited on its own: planned alone, the ended runs' part reads
        # the index in order (a union merged in order was sorted whole). The parts select the
        # runs' positions only, the page's rows joined after: a subquery of all the run's
        # columns cost more to build than the statement took PostgreSQL to run.
        located = select(*(getattr(run, name) for name in position)).where(scoped(run))
        parts = [
            select(
                *page_statement(located.where(where), run, position, page, first=key).subquery().c
            )
            for key, where in metric_sort_parts(run, first)
        ]
        merged = union_all(*parts).subquery("ranked")
        values = [merged.c[f"key_{i}"] for i in range(len(page.order))]
        descending = [key.descending for key in page.order]
        order = [*_sort_order(values, descending, True), *(merged.c[name] for name in position)]
        statements.append(
            base.add_columns(*values)
            .join(merged, run.id == merged.c.id)
            .order_by(*order)
            .limit(page.size + 1)
        )
    # Then (or at once, for a page that starts among them) the runs without a value.
    statements.append(page_statement(base, run, position, page, first_missing=True))
    return statements


def _sort_order(
    values: Sequence[ColumnElement[Any]], descending: Sequence[bool], first_has_value: bool
) -> list[Any]:
    """The sort keys' ORDER BY, NULLs last; the first as its index orders it when it has no
    NULLs (a NULLS LAST that PostgreSQL's index read backwards does not give would make it
    sort).
    """
    order = [v.desc() if down else v.asc() for v, down in zip(values, descending, strict=True)]
    return [o if first_has_value and i == 0 else o.nulls_last() for i, o in enumerate(order)]


def split_page(
    rows: Sequence[tuple[Any, tuple[Any, ...]]], position: Sequence[str], size: int
) -> tuple[list[Any], Cursor | None]:
    """The rows of ``page_statement`` (each an entity and its sort values) as the page and the
    cursor of the next one (None on the last).
    """
    if len(rows) <= size:
        return [entity for entity, _ in rows], None
    last, keys = rows[size - 1]
    cursor = Cursor(tuple(getattr(last, name) for name in position), keys)
    return [entity for entity, _ in rows[:size]], cursor


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
        """Running (or paused: a paused worker heartbeats) runs whose worker has not been
        heard from since ``cutoff``.
        """
        stmt = self._select().where(
            models.Run.status.in_(RUN_ATTACHED),
            models.Run.last_seen_at < cutoff,
        )
        return list((await self.session.execute(stmt.with_for_update())).scalars())

    async def cancelled_before(self, cutoff: datetime) -> list[models.Run]:
        """Running or paused runs whose cancel was requested before ``cutoff`` and never
        confirmed.
        """
        stmt = self._select().where(
            models.Run.status.in_(RUN_ATTACHED),
            models.Run.cancel_requested_at < cutoff,
        )
        return list((await self.session.execute(stmt.with_for_update())).scalars())

    async def ranked(
        self,
        scenario_id: str,
        metric: str,
        aggregate: MetricAggregate,
        lowest_first: bool,
        limit: int,
        *,
        experiment_id: str | None = None,
        completed_only: bool = True,
    ) -> tuple[list[models.Ranked], int]:
        """The scenario's runs with a value of ``metric``, best first (ties: the earlier
        finished), at most ``limit``; and how many runs have such a value.
        """
        run, m, experiment = models.Run, models.Metric, models.Experiment
        value = {
            MetricAggregate.LATEST: m.last_value,
            MetricAggregate.MIN: m.min_value,
            MetricAggregate.MAX: m.max_value,
        }[aggregate]
        conditions = [
            scoped(run),
            scoped(m),
            run.scenario_id == scenario_id,
            m.name == metric,
            value.is_not(None),
        ]
        if experiment_id is not None:
            conditions.append(run.experiment_id == experiment_id)
        if completed_only:
            conditions.append(run.status == RunStatus.COMPLETED)
        joined = select(run).join(m, m.run_id == run.id).where(*conditions)
        count = await self.session.scalar(joined.with_only_columns(func.count()).order_by(None))
        stmt = (
            joined.join(experiment, experiment.id == run.experiment_id)
            .add_columns(experiment.agent_id, value, m.last_step)
            .order_by(
                value.asc() if lowest_first else value.desc(),
                run.completed_at.is_(None),
                run.completed_at,
                run.id,
            )
            .limit(limit)
        )
        rows = [models.Ranked(*row) for row in await self.session.execute(stmt)]
        return rows, int(count or 0)

    async def status_counts(self, conditions: tuple[Filter, ...]) -> dict[RunStatus, int]:
        """How many of the runs matching ``conditions`` are in each status."""
        run = models.Run
        stmt = (
            select(run.status, func.count())
            .where(scoped(run), *(matches(run, c) for c in conditions))
            .group_by(run.status)
        )
        return {status: count for status, count in await self.session.execute(stmt)}

    async def durations(self, conditions: tuple[Filter, ...]) -> list[timedelta]:
        """The durations of the runs matching ``conditions`` that ended after starting."""
        run = models.Run
        stmt = select(run.duration).where(
            scoped(run), run.duration.is_not(None), *(matches(run, c) for c in conditions)
        )
        return [d for d in (await self.session.execute(stmt)).scalars() if d is not None]

    async def existing(self, run_ids: list[str]) -> set[str]:
        """Which of ``run_ids`` exist (for the caller's tenant)."""
        found: set[str] = set()
        for part in in_parts(run_ids):
            stmt = select(models.Run.id).where(scoped(models.Run), models.Run.id.in_(part))
            found.update((await self.session.execute(stmt)).scalars())
        return found

    async def many(self, run_ids: Sequence[str]) -> list[models.Run]:
        """Those of ``run_ids`` that exist (for the caller's tenant), in no particular order."""
        found: list[models.Run] = []
        for part in in_parts(run_ids):
            stmt = self._select().where(models.Run.id.in_(part))
            found += (await self.session.execute(stmt)).scalars()
        return found

    async def unchecked_completed(self) -> list[str]:
        """Completed runs whose success criteria were not checked yet."""
        run = models.Run
        stmt = select(run.id).where(
            scoped(run), run.status == RunStatus.COMPLETED, run.criteria_checked_at.is_(None)
        )
        return list((await self.session.execute(stmt)).scalars())


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

    position = ("name",)  # a run's metrics by name (unique in the run: lists are of one run)

    async def named(self, run_id: str, name: str) -> tuple[bool, str | None, int]:
        run, metric = models.Run, models.Metric
        stmt = (
            select(run.id, metric.id, metric.count)
            .select_from(run)
            .outerjoin(metric, and_(metric.run_id == run.id, metric.name == name, scoped(metric)))
            .where(scoped(run), run.id == run_id)
        )
        row = (await self.session.execute(stmt)).first()
        return (False, None, 0) if row is None else (True, row[1], row[2] or 0)

    async def named_in(self, run_ids: Sequence[str], names: Sequence[str]) -> list[models.Metric]:
        """The metrics named ``names`` of the runs ``run_ids``, in no particular order."""
        metric = models.Metric
        found: list[models.Metric] = []
        for part in in_parts(run_ids, IN_LIST_MAX // max(len(names), 1)):
            stmt = self._select().where(metric.run_id.in_(part), metric.name.in_(names))
            found += (await self.session.execute(stmt)).scalars()
        return found

    async def finalize(self, run_ids: Sequence[str]) -> None:
        for part in in_parts(run_ids):
            await self.session.execute(
                finalize_metrics().where(models.Metric.run_id.in_(part), scoped(models.Metric))
            )

    async def unfinalize(self, run_ids: Sequence[str]) -> None:
        metric = models.Metric
        copies = [getattr(metric, copy) for copy in models.FINAL_COPIES.values()]
        for part in in_parts(run_ids):
            stmt = (
                update(metric)
                .where(
                    metric.run_id.in_(part), scoped(metric), or_(*(c.is_not(None) for c in copies))
                )
                .values(dict.fromkeys(copies))
                .values(updated_at=metric.updated_at)
                .execution_options(synchronize_session=False)
            )
            await self.session.execute(stmt)


def finalize_metrics() -> Update:
    """The ``final_*`` copies of the summaries of the metrics the caller's condition picks
    (of ended runs) made equal to them, where they are not (new, or written late).
    """
    metric = models.Metric
    pairs = [(getattr(metric, c), getattr(metric, s)) for s, c in models.FINAL_COPIES.items()]
    return (
        update(metric)
        .where(or_(*(copy.is_distinct_from(value) for copy, value in pairs)))
        .values(dict(pairs))
        .values(updated_at=metric.updated_at)  # the summary's time, not the copy's
        .execution_options(synchronize_session=False)
    )


class ValidationRepository(Repository[models.Validation]):
    model = models.Validation

    async def exists_for(self, run_id: str, validator: str, kind: str) -> bool:
        stmt = self._select().where(
            models.Validation.run_id == run_id,
            models.Validation.validator == validator,
            models.Validation.kind == kind,
        )
        return (await self.session.execute(stmt.limit(1))).first() is not None


class ArtifactRepository(Repository[models.Artifact]):
    model = models.Artifact

    async def named(self, run_id: str, name: str) -> bool:
        stmt = self._select().where(models.Artifact.run_id == run_id, models.Artifact.name == name)
        return (await self.session.execute(stmt.limit(1))).first() is not None


class EventRepository:
    """A run's events in the order they were sent: by (seq, position)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(
        self, page: PageRequest, run_id: str
    ) -> tuple[list[models.Event], Cursor | None]:
        """One page of the run's events in the request's order (else as sent)."""
        event = models.Event
        stmt = select(event).where(scoped(event), event.run_id == run_id)
        return await list_page(self.session, stmt, event, ("seq", "position"), page)


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
