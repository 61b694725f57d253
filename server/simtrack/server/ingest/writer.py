"""The group-commit writer: every queued batch of every stream goes into one short transaction.

One writer task per server process drains whatever is queued (up to a limit), writes it with
one statement per table (``simtrack.server.db.ingest_store``), moves each run's watermark in the
same transaction, commits, and only then resolves the batches' futures — the acks. A batch at or
below its run's watermark was stored before (a resend) and is acknowledged without being
stored again; that is the whole of exactly-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from simtrack.errors import FailedPrecondition, SequenceGap, SimtrackError, Unavailable
from simtrack.server.core.model import (
    RUN_FINAL,
    RunStatus,
    check_range,
    check_run_transition,
    derive_experiment_status,
    set_run_status,
    settle_vanished,
    stands_vanished,
    utcnow,
)
from simtrack.server.core.tenancy import Principal
from simtrack.server.db.ingest_store import Ending, IngestStore, IngestTransaction, RunState
from simtrack.server.db.models import SMALL_CHUNK_POINTS
from simtrack.server.db.staged import pack_body
from simtrack.server.ingest.items import Batch, EventData, SeriesChunk

log = logging.getLogger(__name__)

MAX_GROUP = 512  # batches per transaction: bounds a transaction's size and latency
LINGER = 0.004  # seconds a small group waits for more batches before it is committed...
LINGER_UNTIL = 32  # ...unless it holds this many already (a worker's whole window)
NOTIFY_INTERVAL = 0.05  # seconds: how late a watcher may hear of a commit, at most
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)  # transient database faults, ~8 s in all
_METRIC_NAMESPACE = uuid.UUID("6f1d5d3e-5b1e-4c0e-9a57-8f6b3c1e2d4a")


@functools.lru_cache(maxsize=65536)
def metric_id(run_id: str, name: str) -> str:
    """Metric ids are derived, so the writer never looks one up before writing chunks."""
    return str(uuid.uuid5(_METRIC_NAMESPACE, f"{run_id}/{name}"))


# Told of a commit's chunks, per tenant: (metric id, points) each, stored at that time.
ChunksStored = Callable[[str, datetime, Iterable[tuple[str, int]]], None]


class CommitObserver(Protocol):
    """Told of every group commit that landed (the service's metrics), once per commit."""

    def group_committed(self, batches: int, points: int, events: int, seconds: float) -> None:
        """``points`` and ``events`` were stored by this commit; resends are in ``batches``."""


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

    run: RunState | None
    committed: int
    chunks: list[tuple[int, SeriesChunk]] = field(default_factory=list)
    events: list[tuple[int, int, EventData]] = field(default_factory=list)
    accepted: list[Pending] = field(default_factory=list)
    rejected: list[tuple[Pending, SimtrackError]] = field(default_factory=list)
    changed: bool = False
    ending: Ending | None = None


class GroupCommitWriter:
    """The single consumer of every stream's batches in this process."""

    def __init__(
        self,
        store: IngestStore,
        notify: Callable[[Iterable[str]], Awaitable[None]],
        observer: CommitObserver,
        completed: Callable[[str, list[str]], Awaitable[object]] | None = None,
        chunks_stored: ChunksStored | None = None,
        stage: bool = False,
    ) -> None:
        self.store = store
        self.notify = notify  # run ids that changed, called after each commit (WatchRun)
        self.observer = observer
        # A tenant's runs that completed in a commit, told after it (success criteria).
        self.completed = completed
        self.chunks_stored = chunks_stored  # compaction's ledger (``domain/pending_chunks``)
        # Small messages staged, a row each (``domain/staging.py``): only where a compaction
        # moves them on, else readers would read ever more of them.
        self.stage = stage
        self._followups: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._changed: set[str] = set()  # runs whose watchers have not been told yet
        self._notifier: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (now, while the database is known to be up), then take batches."""
        await self.store.open()
        self._task = asyncio.create_task(self._run(), name="simtrack-group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._notifier is not None:
            await self._notifier
        await asyncio.gather(*self._followups)
        await self.store.close()

    def waiting(self) -> bool:
        """Whether batches wait for a commit (compaction lets them go first on SQLite)."""
        return not self._queue.empty()

    def submit(self, principal: Principal, run_id: str, batch: Batch | None) -> asyncio.Future[int]:
        """Queue a batch (or a touch); the future resolves to the run's committed watermark."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(principal.tenant_id, run_id, batch, done))
        return done

    async def _run(self) -> None:
        while True:
            group = await self._next_group()
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

    async def _next_group(self) -> list[Pending]:
        """What is queued; a small group lingers a moment for more (fewer, larger commits:
        a commit's fixed cost is several round trips and system calls, shared by the group).
        """
        group = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER
        while len(group) < MAX_GROUP:
            if not self._queue.empty():
                group.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if len(group) >= LINGER_UNTIL or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    group.append(await self._queue.get())
            except TimeoutError:
                break
        return group

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
        started = time.perf_counter()
        by_tenant: dict[str, dict[str, list[Pending]]] = defaultdict(lambda: defaultdict(list))
        for pending in group:
            by_tenant[pending.tenant_id][pending.run_id].append(pending)
        writes: dict[str, _RunWrite] = {}
        stored: dict[str, list[tuple[str, int]]] = {}  # per tenant: (metric id, points)
        now = utcnow()
        async with self.store.transaction() as tx:
            for tenant_id, runs in by_tenant.items():
                await tx.use_tenant(tenant_id)
                locked = await tx.lock_runs(tenant_id, sorted(runs))
                tenant_writes = {run: _apply(locked.get(run), p) for run, p in runs.items()}
                stored[tenant_id] = await _write_rows(tx, tenant_id, tenant_writes, now, self.stage)
                ended = {w.ending.run.experiment_id for w in tenant_writes.values() if w.ending}
                for experiment_id in sorted(ended):  # their status follows their runs
                    statuses = await tx.experiment_run_statuses(experiment_id)
                    if statuses is not None:
                        status = derive_experiment_status(statuses)
                        await tx.set_experiment_status(experiment_id, status, now)
                writes.update(tenant_writes)
        self.observer.group_committed(
            batches=sum(pending.batch is not None for pending in group),
            points=sum(chunk.n for w in writes.values() for _, chunk in w.chunks),
            events=sum(len(w.events) for w in writes.values()),
            seconds=time.perf_counter() - started,
        )
        for write in writes.values():
            for pending in write.accepted:
                if not pending.done.done():
                    pending.done.set_result(write.committed)
            for pending, error in write.rejected:
                if not pending.done.done():
                    pending.done.set_exception(error)
        if self.chunks_stored is not None:
            for tenant_id, chunks in stored.items():
                self.chunks_stored(tenant_id, now, chunks)
        if self.completed is not None:
            done = {
                tenant_id: completed
                for tenant_id, runs in by_tenant.items()
                if (completed := [r for r in runs if _completed(writes[r])])
            }
            if done:
                task = asyncio.create_task(self._tell_completed(self.completed, done))
                self._followups.add(task)
                task.add_done_callback(self._followups.discard)
        self._changed.update(run_id for run_id, write in writes.items() if write.changed)
        if self._changed and (self._notifier is None or self._notifier.done()):
            self._notifier = asyncio.create_task(self._notify())

    @staticmethod
    async def _tell_completed(
        completed: Callable[[str, list[str]], Awaitable[object]], runs: dict[str, list[str]]
    ) -> None:
        for tenant_id, run_ids in runs.items():
            try:
                await completed(tenant_id, run_ids)
            except Exception:  # noqa: BLE001 - the periodic sweep checks them instead
                log.warning("could not check the success criteria of %s", run_ids, exc_info=True)

    async def _notify(self) -> None:
        """Tell watchers which runs changed: one notification per interval, not per commit."""
        while self._changed:
            await asyncio.sleep(NOTIFY_INTERVAL)
            run_ids, self._changed = self._changed, set()
            try:
                await self.notify(run_ids)
            except Exception as exc:  # noqa: BLE001 - watchers re-read on their own timer anyway
                log.warning("could not notify watchers of %d run(s): %s", len(run_ids), exc)


def _completed(write: _RunWrite) -> bool:
    return write.ending is not None and write.ending.run.status == RunStatus.COMPLETED


def _apply(run: RunState | None, pendings: list[Pending]) -> _RunWrite:
    """Check and apply one run's batches to its locked row; collect its rows to write."""
    if run is None:
        write = _RunWrite(run=None, committed=0)
        write.rejected = [(p, FailedPrecondition("the run no longer exists")) for p in pendings]
        return write
    write = _RunWrite(run=run, committed=run.committed_seq)
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
    return write


def _problem(run: RunState, batch: Batch, committed: int) -> SimtrackError | None:
    """Why ``batch`` cannot be applied to ``run`` next, if it cannot.

    A run that ended still takes its late batches (data produced before it ended is never
    refused); what they may change of the run is ``_apply_batch``'s concern.
    """
    if batch.seq != committed + 1:
        return SequenceGap(expected=committed + 1, received=batch.seq)
    if not _takes_worker_account(run):
        return None
    progress = batch.progress
    if progress is not None and progress.percent is not None:
        try:
            check_range("progress.percent", progress.percent, 0, 100)
        except SimtrackError as error:
            return error
    if batch.final is not None and not stands_vanished(run):
        try:
            check_run_transition(run.status, batch.final.status)
        except SimtrackError as error:
            return error
    return None


def _takes_worker_account(run: RunState) -> bool:
    """Whether the worker's progress and final status still apply to ``run``: while it has not
    ended, or when it ended only by the liveness sweep's verdict. An ended run's other late
    batches store their points and events and leave the run as it is.
    """
    return run.status not in RUN_FINAL or stands_vanished(run)


def _apply_batch(run: RunState, batch: Batch, write: _RunWrite) -> None:
    write.chunks.extend((batch.seq, chunk) for chunk in batch.metrics)
    write.events.extend((batch.seq, i, event) for i, event in enumerate(batch.events))
    if not _takes_worker_account(run):
        return
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
        if stands_vanished(run):
            settle_vanished(run, final.status)
        else:
            set_run_status(run, final.status)
        # A worker that stops on a cancel need not repeat why: the cancel's reason says it.
        reason = run.cancel_reason if final.status == RunStatus.STOPPED else ""
        error_message = final.error_message or reason
        write.ending = Ending(run, error_message, final.error_details, final.results)


async def _write_rows(
    tx: IngestTransaction,
    tenant_id: str,
    writes: dict[str, _RunWrite],
    now: datetime,
    stage: bool = False,
) -> list[tuple[str, int]]:
    """The metrics' summaries, chunks (or, ``stage``, the small messages staged) and events;
    then each run's row. The chunks written: (metric id, points) each.
    """
    await tx.upsert_metrics(tenant_id, now, _summaries(writes))
    named = [
        (metric_id(run_id, chunk.name), run_id, seq, chunk)
        for run_id, write in writes.items()
        for seq, chunk in write.chunks
    ]
    if stage:
        named = await _stage_small(tx, tenant_id, now, named)
    chunks = [
        {
            "metric_id": key,
            "seq": seq,
            "run_id": run_id,
            "first_step": chunk.first_step,
            "last_step": chunk.last_step,
            "n": chunk.n,
            "vmin": chunk.vmin,
            "vmax": chunk.vmax,
            "vmin_step": chunk.vmin_step,
            "vmax_step": chunk.vmax_step,
            "vmin_ts": chunk.vmin_ts,
            "vmax_ts": chunk.vmax_ts,
            "steps": chunk.steps,
            "vals": chunk.vals,
            "ts": chunk.ts,
        }
        for key, run_id, seq, chunk in named
    ]
    await tx.insert_chunks(tenant_id, now, chunks)
    events = [
        {
            "run_id": run_id,
            "seq": seq,
            "position": position,
            "tenant_id": tenant_id,
            "step": event.step,
            "time_ns": event.time_ns,
            "type": event.type,
            "agent_id": event.agent_id,
            "payload": event.payload,
        }
        for run_id, write in writes.items()
        for seq, position, event in write.events
    ]
    await tx.insert_events(events)
    await tx.update_runs(
        [write.run for write in writes.values() if write.run is not None],
        now,
        {write.run.id: write.ending for write in writes.values() if write.run and write.ending},
    )
    return [(key, chunk.n) for key, _, _, chunk in named]


async def _stage_small(
    tx: IngestTransaction,
    tenant_id: str,
    now: datetime,
    named: list[tuple[str, str, int, SeriesChunk]],
) -> list[tuple[str, str, int, SeriesChunk]]:
    """Stage each message of several metrics and fewer than ``SMALL_CHUNK_POINTS`` points as
    one row; the chunks of the other messages, left to write as chunks (a message of one
    metric is one row either way, and staging it cost a fifth of ingest's rate in 100-point
    messages).
    """
    messages: dict[tuple[str, int], list[tuple[str, SeriesChunk]]] = defaultdict(list)
    for key, run_id, seq, chunk in named:
        messages[run_id, seq].append((key, chunk))
    staged = []
    for (run_id, seq), series in messages.items():
        total = sum(chunk.n for _, chunk in series)
        if total >= SMALL_CHUNK_POINTS or len(series) < 2:
            continue
        body = pack_body(series)  # the SeriesChunks as they are: no copy each
        staged.append(
            {"run_id": run_id, "seq": seq, "points": total, "series": len(series), "body": body}
        )
    await tx.insert_staged(tenant_id, now, staged)
    done = {(row["run_id"], row["seq"]) for row in staged}
    return [item for item in named if (item[1], item[2]) not in done]


def _summaries(writes: dict[str, _RunWrite]) -> list[dict[str, Any]]:
    """Per metric of this transaction: count, finite min/max, and the value at the top step."""
    merged: dict[str, dict[str, Any]] = {}
    for run_id, write in writes.items():
        for _, chunk in write.chunks:
            key = metric_id(run_id, chunk.name)
            row = merged.get(key)
            if row is None:
                merged[key] = {
                    "id": key, "run_id": run_id, "name": chunk.name, "unit": chunk.unit,
                    "kind": chunk.kind, "count": chunk.n, "min_value": chunk.vmin,
                    "max_value": chunk.vmax, "last_step": chunk.last_value_step,
                    "last_value": chunk.last_value,
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
