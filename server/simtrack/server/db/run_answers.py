"""GetRun's answers, kept while their run is unchanged (PostgreSQL).

Rendering a run as GetRun's answer (its JSON columns, the proto, the bytes) cost the server
more than reading the row. Each answer is kept with the version of the row it was rendered
from, the row's ``xmin``: the transaction that wrote the row as it is, since every change to a
run (an update, a stream's watermark, a status) writes a new version of the row.

Nothing is served from memory unasked, so no call misses a write committed before it began,
on any replica. A call whose run has no answer kept reads the run whole, its version with it.
A call whose run has one asks the run's version: in a statement of its own, or, when one of
its tenant's is under way, in the next, shared with every call that came meanwhile (group
commit's idea, for reads; each statement starts after every call it answers began). Only a run
whose version moved is read whole and rendered again. An answer is also dropped after
``MAX_AGE_S``, long before transaction ids could come round again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Versions = Callable[[str, list[str]], Awaitable[dict[str, int]]]  # (tenant, run ids)
Load = Callable[[str, str], Awaitable[tuple[Any, int] | None]]  # (tenant, run id) -> (run, version)

CAPACITY = 16_384  # answers kept (a few hundred bytes each)
MAX_AGE_S = 600.0
BATCH_RUNS = 1_000  # runs asked in one statement at most


@dataclass(frozen=True, slots=True)
class _Kept(Generic[T]):
    version: int
    render: Callable[[Any], T]
    answer: T
    until: float  # by the clock


class RunAnswers:
    """``render(run)`` of a run, rendered again only when the run's version moved."""

    def __init__(
        self,
        versions: Versions,
        load: Load,
        capacity: int = CAPACITY,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._versions = versions
        self._load = load
        self._clock = clock
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._kept: dict[tuple[str, str], _Kept[Any]] = {}
        self._waiting: dict[str, list[tuple[str, asyncio.Future[int | None]]]] = {}
        # The tenants with a statement under way: asked by a call itself (None) or by a task.
        self._asking: dict[str, asyncio.Task[None] | None] = {}

    async def get(self, tenant: str, run_id: str, render: Callable[[Any], T]) -> T | None:
        """The answer for the tenant's run as it is now; None: the tenant has no such run."""
        key = (tenant, run_id)
        kept = self._kept.get(key)
        if kept is not None and kept.render is render and self._clock() < kept.until:
            version = await self._version(tenant, run_id)
            if version == kept.version:
                return kept.answer  # type: ignore[no-any-return]  # kept by this render
            if version is None:
                self._kept.pop(key, None)
                return None
        # Nothing kept, or the run changed: read whole with its version, in one statement.
        loaded = await self._load(tenant, run_id)
        if loaded is None:
            self._kept.pop(key, None)
            return None
        run, version = loaded
        answer = render(run)
        self._kept.pop(key, None)
        if len(self._kept) >= self.capacity:
            del self._kept[next(iter(self._kept))]  # the longest kept
        self._kept[key] = _Kept(version, render, answer, self._clock() + self.max_age_s)
        return answer

    async def _version(self, tenant: str, run_id: str) -> int | None:
        """The run's version, from a statement that starts after the call began: its own when
        none of the tenant's is under way (no task: most calls come one at a time), else the
        next one, shared with every call waiting then.
        """
        if tenant in self._asking:
            future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(tenant, []).append((run_id, future))
            return await future  # each call its own future: one cancelled leaves the others be
        self._asking[tenant] = None
        try:
            return (await self._versions(tenant, [run_id])).get(run_id)
        finally:
            if tenant in self._waiting:  # came meanwhile: asked for by a task of their own
                self._asking[tenant] = asyncio.create_task(self._ask(tenant))
            else:
                del self._asking[tenant]

    async def _ask(self, tenant: str) -> None:
        """Statements until no call of the tenant waits; a failure is each waiting call's."""
        batch: list[tuple[str, asyncio.Future[int | None]]] = []
        try:
            while waiting := self._waiting.pop(tenant, None):
                batch, rest = waiting[:BATCH_RUNS], waiting[BATCH_RUNS:]
                if rest:
                    self._waiting[tenant] = rest
                try:
                    found = await self._versions(tenant, list(dict.fromkeys(r for r, _ in batch)))
                except Exception as exc:  # noqa: BLE001 - the calls' error, raised in each
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for run_id, future in batch:
                    if not future.done():
                        future.set_result(found.get(run_id))
                batch = []
        except BaseException:  # cancelled (the server stops): no call waits forever
            for _, future in batch + self._waiting.pop(tenant, []):
                future.cancel()
            raise
        finally:
            del self._asking[tenant]
