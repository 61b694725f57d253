"""What the domain services ask of the world, as protocols the domain owns.

The adapters implement them: ``db/unit_of_work.py`` the unit of work and its repositories (on
SQLAlchemy), ``ingest/bus.py`` the bus (in process, or LISTEN/NOTIFY on PostgreSQL); ``app.py``
hands them in. So no domain module imports a session, an engine or a driver, and a unit test hands a
service its fakes as they are (no casts): a fake implements what its test exercises.

Each repository lists what the domain calls on it; rows are the ORM entities of ``db/models.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self, TypeVar

from simtrack.server.core.commands import CommandMessage
from simtrack.server.core.filters import Filter
from simtrack.server.core.listing import Cursor, PageRequest
from simtrack.server.core.model import MetricAggregate, RunStatus
from simtrack.server.db.chunks import (
    ChunkSummary,
    CompactedChunk,
    PageChunks,
    SmallChunk,
    StoredChunk,
)
from simtrack.server.db.models import (
    Agent,
    ApiKey,
    Artifact,
    Event,
    Experiment,
    Metric,
    Participant,
    Ranked,
    Run,
    Simulation,
    Template,
    Tenant,
    Validation,
)
from simtrack.server.db.view_rows import ViewRead, ViewRows

Row = TypeVar("Row")
T = TypeVar("T")


class Bus(Protocol):
    """Tells other server processes (and this one) what changed: a run, or a worker's command."""

    async def publish_runs(self, run_ids: Iterable[str]) -> None:
        """Wake the watchers of these runs."""
        ...

    async def publish_command(self, command: CommandMessage) -> None:
        """Deliver ``command`` to its run's worker, wherever its stream is held."""
        ...


class Rows(Protocol[Row]):
    """One tenant-owned table: the caller's tenant's rows only; nothing here commits."""

    async def get(self, id: str, *, for_update: bool = False) -> Row | None: ...

    async def add(self, obj: Row) -> Row: ...

    async def delete(self, obj: Row) -> None: ...

    async def flush(self) -> None: ...

    async def list(self, page: PageRequest, **parent: str) -> tuple[list[Row], Cursor | None]:
        """One page in the request's order (else the default: creation order, a run's metrics
        by name) and the cursor of the next (None on the last).
        """
        ...


class AgentRows(Rows[Agent], Protocol):
    async def name_taken(self, name: str, *, other_than: str | None = None) -> bool: ...

    async def is_referenced(self, agent_id: str) -> bool: ...


class TemplateRows(Rows[Template], Protocol):
    async def name_taken(self, name: str, *, other_than: str | None = None) -> bool: ...


class ExperimentRows(Rows[Experiment], Protocol):
    async def next_run_number(self, experiment_id: str) -> int: ...

    async def run_statuses(self, experiment_id: str) -> list[RunStatus]: ...


class RunRows(Rows[Run], Protocol):
    async def silent_since(self, cutoff: datetime) -> list[Run]: ...

    async def cancelled_before(self, cutoff: datetime) -> list[Run]: ...

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
    ) -> tuple[list[Ranked], int]: ...

    async def status_counts(self, conditions: tuple[Filter, ...]) -> dict[RunStatus, int]: ...

    async def durations(self, conditions: tuple[Filter, ...]) -> list[timedelta]: ...

    async def existing(self, run_ids: list[str]) -> set[str]: ...

    async def many(self, run_ids: Sequence[str]) -> list[Run]: ...

    async def unchecked_completed(self) -> list[str]: ...


class ParticipantRows(Rows[Participant], Protocol):
    async def exists_for(self, run_id: str, agent_id: str) -> bool: ...


class MetricRows(Rows[Metric], Protocol):
    async def for_run(self, run_id: str) -> list[Metric]: ...

    async def named(self, run_id: str, name: str) -> tuple[bool, str | None, int]:
        """Whether the run exists, the id of its metric ``name`` (None: it has none) and how
        many points that metric holds (its summary's count), in one statement.
        """
        ...

    async def named_in(self, run_ids: Sequence[str], names: Sequence[str]) -> list[Metric]: ...

    async def finalize(self, run_ids: Sequence[str]) -> None:
        """Copy the summaries of the ended runs' metrics into their ``final_*`` columns
        (``db/models.Metric``): whoever ends a run, in the same transaction.
        """
        ...

    async def unfinalize(self, run_ids: Sequence[str]) -> None:
        """Clear those copies of the runs running again (revived)."""
        ...


class ValidationRows(Rows[Validation], Protocol):
    async def exists_for(self, run_id: str, validator: str, kind: str) -> bool: ...


class ArtifactRows(Rows[Artifact], Protocol):
    async def named(self, run_id: str, name: str) -> bool: ...


class ChunkRows(Protocol):
    """A metric's packed chunks (``db/chunks.py``), read by step range."""

    async def points_within(self, metric_id: str, lo: int, hi: int) -> int:
        """How many points the metric's chunks lying wholly in [lo, hi] hold."""
        ...

    async def overlapping(
        self, metric_id: str, lo: int, hi: int, after: tuple[int, int] | None, limit: int | None
    ) -> list[StoredChunk]: ...

    async def summaries(
        self,
        metric_id: str,
        lo: int,
        hi: int,
        after: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[ChunkSummary]:
        """`overlapping` without the chunks' columns."""
        ...

    async def with_seqs(self, metric_id: str, seqs: Sequence[int]) -> list[StoredChunk]:
        """The metric's chunks of these seqs, by (first_step, seq)."""
        ...

    async def view_rows(self, metric_id: str, lo: int, hi: int) -> ViewRows:
        """The chunks reaching into [lo, hi] as a downsampled view reads them first, in one
        statement.
        """
        ...

    async def inner_spans(
        self, metric_ids: Sequence[str], lo: int, hi: int
    ) -> dict[str, tuple[int, int]]:
        """(lowest first_step, highest last_step) of each metric's chunks lying wholly in
        [lo, hi], for the metrics that have any.
        """
        ...

    async def edge_steps(
        self, metric_ids: Sequence[str], lo: int, hi: int
    ) -> list[tuple[str, int, int, bytes]]:
        """(metric_id, n, first_step, steps) of the chunks reaching into [lo, hi] across lo
        or hi.
        """
        ...


class BatchCompaction(Protocol):
    """Several metrics' compaction, holding the compaction lock of each metric of ``locked``
    (the batch's others are busy: another process compacts them): one transaction, or (where
    no such lock is taken) committed reads and a rewrite that checks them.

    Each call is one statement for the whole batch; mappings are keyed by metric id.
    """

    @property
    def locked(self) -> Sequence[str]:
        """The batch's metrics this transaction holds the lock of, in the batch's order."""
        ...

    async def small_chunks(self) -> dict[str, list[SmallChunk]]:
        """The small chunks (``SMALL_CHUNK_POINTS``) of each locked metric, by seq, as
        committed now (a metric with none: an empty list).
        """
        ...

    async def sizes_below(
        self, seqs: Mapping[str, int], limit: int
    ) -> dict[str, list[tuple[int, int]]]:
        """(seq, n) of up to ``limit`` of each metric's chunks with a seq below ``seqs[metric]``,
        highest first.
        """
        ...

    async def chunks(self, spans: Mapping[str, tuple[int, int]]) -> dict[str, list[StoredChunk]]:
        """Every chunk of each metric with first_seq <= seq <= last_seq (``spans[metric]``), by
        seq.
        """
        ...

    async def staged(self, settled_before: datetime) -> dict[str, list[tuple[str, StoredChunk]]]:
        """Staging (``locked`` holds runs): each run's staged series as (metric id, chunk
        row), by seq, of its messages
        up to the last one staged before ``settled_before`` (runs with none left out).
        """
        ...

    async def replace(
        self,
        spans: Mapping[str, tuple[int, int]],
        read: Mapping[str, Sequence[StoredChunk]],
        rows: Mapping[str, Sequence[CompactedChunk]],
        staged: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """Delete the chunks of the spans (and the ``staged`` messages: seqs by run) and
        insert each metric's ``rows``, atomically.

        Raises (and changes nothing) unless the spans hold exactly the chunks ``read`` (by
        seq and size) and the staged messages are all there when deleted.
        """
        ...


class CompactionStore(Protocol):
    """Compaction's access to the chunks, across tenants, a batch of metrics per transaction."""

    async def tenants(self) -> list[str]: ...

    async def due_metrics(
        self,
        tenant_id: str,
        settled_before: datetime,
        idle_before: datetime,
        limit: int,
        start: str = "",
        rows: int | None = None,
        known: Container[str] = frozenset(),
    ) -> tuple[list[tuple[str, int]], str]:
        """Up to ``limit`` metrics of the tenant with two or more small chunks, one of them
        stored before ``settled_before``, and either ``SMALL_CHUNK_POINTS`` points among them
        or none stored after ``idle_before``: (metric id, its small chunks), by id. With
        ``rows`` (None: all), among the metrics of a slice of about ``rows`` small chunks, on
        from ``start`` (where the last slice said the next starts; "": the first), each
        metric's small chunks counted whole; with where the next slice starts ("": the scan
        reached the end). PostgreSQL slices by metric id, SQLite in arrival order (each
        database's index of small chunks); SQLite leaves out the metrics of ``known`` (the
        caller's ledger tracks them), as a slice in arrival order holds chunks of every metric
        a fleet writes.
        """
        ...

    def compacting(
        self, tenant_id: str, metric_ids: Sequence[str]
    ) -> AbstractAsyncContextManager[BatchCompaction]:
        """A compaction of those of the tenant's metrics whose compaction lock no other process
        holds (``locked``), committed when the block ends (nothing of it if it raises).
        """
        ...

    async def staged_runs(
        self, tenant_id: str, settled_before: datetime, idle_before: datetime, limit: int
    ) -> list[str]:
        """Up to ``limit`` of the tenant's runs with a message staged before ``settled_before``
        and either ``SMALL_CHUNK_POINTS`` points staged for each metric of its messages (their
        points over the most series a message holds) or none staged after ``idle_before``.
        """
        ...

    def staging(
        self, tenant_id: str, run_ids: Sequence[str]
    ) -> AbstractAsyncContextManager[BatchCompaction]:
        """As ``compacting``, for the staged messages of those of the runs no other process
        stages (``locked`` holds runs).
        """
        ...


class EventRows(Protocol):
    async def list(self, page: PageRequest, run_id: str) -> tuple[list[Event], Cursor | None]:
        """One page of the run's events in the request's order (else as sent)."""
        ...


class AccessRows(Protocol):
    """Tenants and API keys, across tenants (authentication reads them before one is known)."""

    async def add(self, obj: Tenant | ApiKey) -> None: ...

    async def tenant(self, id: str) -> Tenant | None: ...

    async def tenant_named(self, name: str) -> Tenant | None: ...

    async def tenants(self) -> list[Tenant]: ...

    async def key_by_prefix(self, prefix: str) -> ApiKey | None: ...

    async def keys(self, tenant_id: str | None = None) -> list[ApiKey]: ...

    async def touch_key(self, key_id: str, when: datetime) -> None: ...


class RunReads(Protocol):
    """Reads of runs that are one statement each, outside any unit of work (the caller's
    tenant's rows only): each sees one snapshot; cheaper than a unit of work.
    """

    async def run(self, run_id: str) -> Run | None: ...

    async def rendered(self, run_id: str, render: Callable[[Run], T]) -> T | None:
        """``render(run)``, which the reads may keep while the run is unchanged (each call
        still sees every write committed before it). None: no such run.
        """
        ...

    async def runs(self, page: PageRequest) -> tuple[list[Run], Cursor | None]:
        """One page (``Rows.list``)."""
        ...


class HistoryReads(Protocol):
    """A page of a metric's history in one statement, outside any unit of work."""

    async def page(
        self, run_id: str, metric: str, lo: int, hi: int, start: int, size: int, limit: int
    ) -> PageChunks | None:
        """The chunks holding the ``size`` points of [lo, hi] from step ``start`` on, from
        the first ``limit`` chunks reaching into [start, hi] (as ``read_page`` chooses them),
        and what counts the range's points. None: the caller's tenant has no such run.
        """
        ...

    async def read_ahead(
        self,
        run_id: str,
        metric: str,
        lo: int,
        hi: int,
        start: int,
        size: int,
        limit: int,
        values: bool = True,
    ) -> None:
        """A hint: ``page`` of these is likely asked for next (a reader paging through); it
        may be read now, as long as ``page`` answers as of when it is called. Without
        ``values``, its chunks' values need not be unpacked (`unpack_many`). Returns once
        such a read has begun (before the caller sends the page it has).
        """
        ...

    async def view(self, run_id: str, metric: str, lo: int, hi: int) -> ViewRead | None:
        """What a downsampled view of [lo, hi] reads first, in one statement. None: not
        read this way on this database.
        """
        ...

    async def chunks(self, metric_id: str, versions: Mapping[int, int]) -> list[StoredChunk] | None:
        """The metric's chunks of ``versions``' seqs that are still the row versions given
        (`ViewRows.versions`), in any order, in one statement: chunk rows are never updated,
        so those hold what the first statement's summaries described (a seq alone may not:
        compaction writes its chunks under the seqs of those it deletes). None: not read this
        way on this database.
        """
        ...


class UnitOfWork(Protocol):
    """One short transaction and its repositories.

    ``async with uow_factory() as uow: ...; await uow.commit()``: leaving the block without a
    commit rolls back; storage errors leave it as simtrack errors.
    """

    # Read-only properties: an implementation may hold any subtype (a fake, say).
    @property
    def access(self) -> AccessRows: ...
    @property
    def agents(self) -> AgentRows: ...
    @property
    def templates(self) -> TemplateRows: ...
    @property
    def experiments(self) -> ExperimentRows: ...
    @property
    def simulations(self) -> Rows[Simulation]: ...
    @property
    def runs(self) -> RunRows: ...
    @property
    def participants(self) -> ParticipantRows: ...
    @property
    def metrics(self) -> MetricRows: ...
    @property
    def chunks(self) -> ChunkRows: ...
    @property
    def events(self) -> EventRows: ...
    @property
    def validations(self) -> ValidationRows: ...
    @property
    def artifacts(self) -> ArtifactRows: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...

    async def read_snapshot(self) -> None:
        """Make every read of this unit of work see one snapshot; call before the first.

        A reader that runs several statements (history's range count and chunk reads) then
        sees a concurrent compaction's commit in all of them or in none.
        """
        ...


UnitOfWorkFactory = Callable[[], UnitOfWork]
