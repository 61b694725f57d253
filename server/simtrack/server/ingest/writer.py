"""The group-commit writer: every queued batch of every stream goes into one short transaction.

One writer task per server process drains whatever is queued (up to a limit), writes it with
one multi-row INSERT per table (PostgreSQL refuses COPY under row-level security), moves each
run's watermark in the same transaction, commits, and only then resolves the batches' futures —
the acks. A batch at or below its run's watermark was stored before (a resend) and is acknowledged
without being stored again; that is the whole of exactly-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, insert
from sqlalchemy.dialects import postgresql, sqlite

from simtrack.errors import FailedPrecondition, SimtrackError, Unavailable
from simtrack.server.db.models import Event, Metric, MetricChunk, Run, utcnow
from simtrack.server.db.uow import UnitOfWork, UnitOfWorkFactory
from simtrack.server.domain.experiments import refresh_experiment_status
from simtrack.server.domain.model import RUN_FINAL, check_range, check_run_transition
from simtrack.server.domain.runs import set_run_status
from simtrack.server.domain.tenancy import Principal, Role, reset_principal, set_principal
from simtrack.server.ingest.items import Batch, EventData, SeriesChunk

log = logging.getLogger(__name__)

MAX_GROUP = 512  # batches per transaction: bounds a transaction's size and latency
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)  # transient database faults, ~8 s in all
_METRIC_NAMESPACE = uuid.UUID("6f1d5d3e-5b1e-4c0e-9a57-8f6b3c1e2d4a")
_CHUNK_COLUMNS = (
    "metric_id", "seq", "tenant_id", "run_id", "first_step", "last_step", "n", "vmin", "vmax",
    "steps", "vals", "ts",
)  # fmt: skip


def metric_id(run_id: str, name: str) -> str:
    """Metric ids are derived, so the writer never looks one up before writing chunks."""
    return str(uuid.uuid5(_METRIC_NAMESPACE, f"{run_id}/{name}"))


@dataclass(slots=True)
class Pending:
    """A queued batch (or, with ``batch`` None, a liveness touch) and its ack."""

    tenant_id: str
    run_id: str
    batch: Batch | None
    done: asyncio.Future[int]


@dataclass
class _RunWrite:
    """What one transaction writes for one run."""

    committed: int
    chunks: list[tuple[int, SeriesChunk]] = field(default_factory=list)
    events: list[tuple[int, int, EventData]] = field(default_factory=list)
    accepted: list[Pending] = field(default_factory=list)
    rejected: list[tuple[Pending, SimtrackError]] = field(default_factory=list)
    changed: bool = False


class GroupCommitWriter:
    """The single consumer of every stream's batches in this process."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        notify: Callable[[Iterable[str]], Awaitable[None]],
    ) -> None:
        self.uow = uow
        self.notify = notify  # run ids that changed, called after each commit (WatchRun)
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._notifying: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="simtrack-group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, principal: Principal, run_id: str, batch: Batch | None) -> asyncio.Future[int]:
        """Queue a batch (or a touch); the future resolves to the run's committed watermark."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(principal.tenant_id, run_id, batch, done))
        return done

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._commit_with_retries(group)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one group
                if not isinstance(exc, SimtrackError):
                    log.exception("group commit failed")
                error = exc if isinstance(exc, SimtrackError) else Unavailable("ingest failed")
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_exception(error)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit_with_retries(self, group: list[Pending]) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
            try:
                await self._commit(group)
                return
            except Unavailable:
                if delay is None:
                    raise
                log.warning("database unavailable during ingest, retrying (attempt %d)", attempt)
                await asyncio.sleep(delay)

    async def _commit(self, group: list[Pending]) -> None:
        by_tenant: dict[str, dict[str, list[Pending]]] = defaultdict(lambda: defaultdict(list))
        for pending in group:
            by_tenant[pending.tenant_id][pending.run_id].append(pending)
        writes: dict[str, _RunWrite] = {}
        async with self.uow() as uow:
            postgres = uow.session.get_bind().dialect.name == "postgresql"
            for tenant_id, runs in by_tenant.items():
                token = set_principal(Principal(tenant_id, Role.WRITER))
                try:
                    if postgres:  # row-level security: this part of the transaction is tenant's
                        await uow.session.execute(
                            func.set_config("app.tenant_id", tenant_id, True).select()
                        )
                    tenant_writes = {}
                    for run_id in sorted(runs):  # one lock order everywhere: no deadlocks
                        tenant_writes[run_id] = await _apply(uow, run_id, runs[run_id])
                    await _write_rows(uow, tenant_id, tenant_writes, postgres)
                    writes.update(tenant_writes)
                finally:
                    reset_principal(token)
            await uow.commit()
        for write in writes.values():
            for pending in write.accepted:
                if not pending.done.done():
                    pending.done.set_result(write.committed)
            for pending, error in write.rejected:
                if not pending.done.done():
                    pending.done.set_exception(error)
        changed = [run_id for run_id, write in writes.items() if write.changed]
        if changed:  # watchers only; the next group need not wait for it
            task = asyncio.create_task(self._notify(changed))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _notify(self, run_ids: list[str]) -> None:
        try:
            await self.notify(run_ids)
        except Exception as exc:  # noqa: BLE001 - watchers re-read on their own timer anyway
            log.warning("could not notify watchers of %d run(s): %s", len(run_ids), exc)


async def _apply(uow: UnitOfWork, run_id: str, pendings: list[Pending]) -> _RunWrite:
    """Check and apply one run's batches to its locked row; collect its rows to write."""
    run = await uow.runs.get(run_id, for_update=True)
    if run is None:
        write = _RunWrite(committed=0)
        write.rejected = [(p, FailedPrecondition("the run no longer exists")) for p in pendings]
        return write
    write = _RunWrite(committed=run.committed_seq)
    run.last_seen_at = utcnow()
    failed: SimtrackError | None = None
    for pending in sorted(pendings, key=lambda p: p.batch.seq if p.batch else 0):
        batch = pending.batch
        if batch is None or batch.seq <= write.committed:
            write.accepted.append(pending)  # a touch, or a resend of what is already stored
            continue
        failed = failed or _problem(run, batch, write.committed)
        if failed is not None:  # this batch and every later one of the run
            write.rejected.append((pending, failed))
            continue
        _apply_batch(run, batch, write)
        write.committed = batch.seq
        write.accepted.append(pending)
        write.changed = True
    run.committed_seq = write.committed
    await uow.runs.flush()
    if write.changed and run.status in RUN_FINAL:
        await refresh_experiment_status(uow, run.experiment_id)
    return write


def _problem(run: Run, batch: Batch, committed: int) -> SimtrackError | None:
    """Why ``batch`` cannot be applied to ``run`` next, if it cannot."""
    if batch.seq != committed + 1:
        return FailedPrecondition(f"expected seq {committed + 1}, got {batch.seq}")
    if run.status in RUN_FINAL:
        return FailedPrecondition(f"the run already ended ({run.status})")
    progress = batch.progress
    if progress is not None and progress.percent is not None:
        try:
            check_range("progress.percent", progress.percent, 0, 100)
        except SimtrackError as error:
            return error
    if batch.final is not None:
        try:
            check_run_transition(run.status, batch.final.status)
        except SimtrackError as error:
            return error
    return None


def _apply_batch(run: Run, batch: Batch, write: _RunWrite) -> None:
    write.chunks.extend((batch.seq, chunk) for chunk in batch.metrics)
    write.events.extend((batch.seq, i, event) for i, event in enumerate(batch.events))
    if batch.progress is not None:
        progress = batch.progress
        run.current_tick = progress.tick
        if progress.total:
            run.total_ticks = progress.total
        if progress.percent is not None:
            run.progress_percent = progress.percent
        elif run.total_ticks:
            run.progress_percent = min(100.0, 100.0 * progress.tick / run.total_ticks)
    if batch.final is not None:
        final = batch.final
        set_run_status(run, final.status)
        run.error_message = final.error_message
        run.error_details = final.error_details
        if final.results:
            run.results = final.results


async def _write_rows(
    uow: UnitOfWork, tenant_id: str, writes: dict[str, _RunWrite], postgres: bool
) -> None:
    """Upsert the metrics' summaries, then bulk-write chunks and events."""
    summaries = _summaries(tenant_id, writes)
    if summaries:
        await uow.session.execute(_upsert_metrics(postgres), summaries)
    chunk_rows = [
        (
            metric_id(run_id, chunk.name),
            seq,
            tenant_id,
            run_id,
            chunk.first_step,
            chunk.last_step,
            chunk.n,
            chunk.vmin,
            chunk.vmax,
            chunk.steps,
            chunk.vals,
            chunk.ts,
        )  # fmt: skip
        for run_id, write in writes.items()
        for seq, chunk in write.chunks
    ]
    if chunk_rows:
        # A multi-row INSERT, not COPY: PostgreSQL refuses COPY FROM into a table under
        # row-level security, and at one row per ~1,000 points the two cost the same.
        await uow.session.execute(
            insert(MetricChunk), [dict(zip(_CHUNK_COLUMNS, row, strict=True)) for row in chunk_rows]
        )
    event_rows = [
        {
            "run_id": run_id,
            "seq": seq,
            "position": position,
            "tenant_id": tenant_id,
            "step": event.step,
            "time": event.time,
            "type": event.type,
            "agent_id": event.agent_id,
            "payload": event.payload,
        }  # fmt: skip
        for run_id, write in writes.items()
        for seq, position, event in write.events
    ]
    if event_rows:
        await uow.session.execute(insert(Event), event_rows)


def _summaries(tenant_id: str, writes: dict[str, _RunWrite]) -> list[dict[str, Any]]:
    """Per metric of this transaction: count, finite min/max, and the value at the top step."""
    now = utcnow()
    merged: dict[str, dict[str, Any]] = {}
    for run_id, write in writes.items():
        for _, chunk in write.chunks:
            key = metric_id(run_id, chunk.name)
            row = merged.get(key)
            if row is None:
                merged[key] = {
                    "id": key, "tenant_id": tenant_id, "run_id": run_id, "name": chunk.name,
                    "unit": chunk.unit, "kind": chunk.kind, "labels": {}, "count": chunk.n,
                    "min_value": chunk.vmin, "max_value": chunk.vmax,
                    "last_step": chunk.last_value_step, "last_value": chunk.last_value,
                    "created_at": now, "updated_at": now,
                }  # fmt: skip
                continue
            row["count"] += chunk.n
            row["min_value"] = _pick(min, row["min_value"], chunk.vmin)
            row["max_value"] = _pick(max, row["max_value"], chunk.vmax)
            if chunk.last_value_step is not None and (
                row["last_step"] is None or chunk.last_value_step >= row["last_step"]
            ):
                row["last_step"], row["last_value"] = chunk.last_value_step, chunk.last_value
    return list(merged.values())


def _pick(choose: Callable[[float, float], float], a: float | None, b: float | None) -> Any:
    return b if a is None else a if b is None else choose(a, b)


@functools.cache  # built once per dialect: the statement and its cache key are the same each time
def _upsert_metrics(postgres: bool) -> Any:
    """INSERT ... ON CONFLICT that folds a transaction's summary into the stored one."""
    dialect_insert = postgresql.insert if postgres else sqlite.insert
    stmt = dialect_insert(Metric)
    new = stmt.excluded
    least, greatest = (func.least, func.greatest) if postgres else (func.min, func.max)
    newer = (new.last_step.is_not(None)) & (
        Metric.last_step.is_(None) | (new.last_step >= Metric.last_step)
    )
    return stmt.on_conflict_do_update(
        index_elements=[Metric.id],
        set_={
            "count": Metric.count + new["count"],
            # coalesce: an absent (all non-finite) side must not blank the other
            "min_value": least(
                func.coalesce(Metric.min_value, new.min_value),
                func.coalesce(new.min_value, Metric.min_value),
            ),
            "max_value": greatest(
                func.coalesce(Metric.max_value, new.max_value),
                func.coalesce(new.max_value, Metric.max_value),
            ),
            "last_step": case((newer, new.last_step), else_=Metric.last_step),
            "last_value": case((newer, new.last_value), else_=Metric.last_value),
            "updated_at": new.updated_at,
        },
    )
