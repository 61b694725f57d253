"""Worker streams: one session per StreamRun call, and this process's registry of them.

A session checks each message's place in the run's sequence, hands batches to the group-commit
writer without waiting for the commit (so up to ``MAX_IN_FLIGHT`` batches are pipelined), and
sends acks in order as commits land. Everything it has to say to the worker goes through one
outbox the transport drains: acks, commands, "going away", or the error that ends the stream.

A session takes batches in on its caller's lease: once the lease is revoked (the key was found
revoked while the stream was open) a batch is refused with the reason instead of queued, so
nothing read after that check is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol, TypeGuard

from simtrack.errors import Conflict, SequenceGap, SimtrackError
from simtrack.server.core.commands import CommandMessage
from simtrack.server.core.tenancy import Lease, Principal
from simtrack.server.ingest.items import Batch

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64  # batches handed to the writer but not yet acknowledged, per stream


class Writer(Protocol):
    """What a stream asks of the writer (``ingest.writer.GroupCommitWriter``)."""

    def submit(self, principal: Principal, run_id: str, batch: Batch | None) -> asyncio.Future[int]:
        """Queue a batch (or None: a touch); resolves to the run's committed watermark."""
        ...


@dataclass(frozen=True)
class AckOut:
    committed_seq: int


@dataclass(frozen=True)
class GoingAwayOut:
    reason: str


Outgoing = AckOut | CommandMessage | GoingAwayOut | SimtrackError | None  # None: the end


class StreamSession:
    """One worker's stream for one run."""

    def __init__(self, caller: Lease, run_id: str, committed_seq: int, writer: Writer) -> None:
        self.caller = caller
        self.run_id = run_id
        self.writer = writer
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._next_seq = committed_seq + 1
        # Commits awaited in seq order by the acker; None marks the end of the stream.
        self._pending: deque[asyncio.Future[int] | None] = deque()
        self._pending_added = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._acker = asyncio.create_task(self._send_acks(), name=f"acks-{run_id}")
        self.closing = False

    async def submit(self, batch: Batch) -> None:
        """Queue a sequenced batch for commit; its ack follows when it is durable."""
        if batch.seq > self._next_seq:
            raise SequenceGap(expected=self._next_seq, received=batch.seq)
        self._next_seq = max(self._next_seq, batch.seq + 1)
        await self._slots.acquire()
        try:
            principal = self.caller.check()  # after the wait for a slot: the lease may be gone
        except SimtrackError:
            self._slots.release()
            raise
        self._add_pending(self.writer.submit(principal, self.run_id, batch))

    def heartbeat(self) -> None:
        """Keep the run alive (the writer stamps its last_seen_at); nothing is acked."""
        self.writer.submit(self.caller.check(), self.run_id, None)

    def push(self, item: Outgoing) -> None:
        self.outbox.put_nowait(item)

    async def finish(self, reason: str | None = None) -> None:
        """Stop after every queued batch is acknowledged; say why first when shutting down."""
        self.closing = True
        if reason is not None:
            self.push(GoingAwayOut(reason))
        self._add_pending(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._acker

    def close(self) -> None:
        """The transport is gone: stop sending (batches already queued still commit)."""
        self.closing = True
        self._acker.cancel()

    def abort(self, error: SimtrackError) -> None:
        """End the stream now with ``error`` (e.g. superseded by a newer stream)."""
        self.closing = True
        self._acker.cancel()
        self.push(error)

    def _add_pending(self, commit: asyncio.Future[int] | None) -> None:
        self._pending.append(commit)
        self._pending_added.set()

    async def _next_pending(self) -> asyncio.Future[int] | None:
        while not self._pending:
            self._pending_added.clear()
            await self._pending_added.wait()
        return self._pending.popleft()

    async def _send_acks(self) -> None:
        """Acks in order; one per commit: acks are cumulative, so what a commit covered at once
        is acknowledged at once.
        """
        pending = self._pending
        while (done := await self._next_pending()) is not None:
            try:
                committed = await done
                # Later batches committed in the same group are covered by the same ack; a
                # failed one is left for the next turn, so what did commit is acked first.
                while pending and _committed(following := pending[0]):
                    pending.popleft()
                    self._slots.release()
                    committed = following.result()
            except SimtrackError as error:
                self.push(error)
                return
            finally:
                self._slots.release()
            self.push(AckOut(committed))
        self.push(None)


def _committed(commit: asyncio.Future[int] | None) -> TypeGuard[asyncio.Future[int]]:
    return (
        commit is not None
        and commit.done()
        and not commit.cancelled()
        and commit.exception() is None
    )


class StreamRegistry:
    """The streams this process holds, by run: where commands for a run are delivered."""

    def __init__(self) -> None:
        self._sessions: dict[str, StreamSession] = {}

    def attach(self, session: StreamSession) -> None:
        """Register ``session``; an older stream of the same run is superseded (a reconnect)."""
        previous = self._sessions.get(session.run_id)
        if previous is not None and previous is not session:
            previous.abort(Conflict("a newer stream for this run took over"))
        self._sessions[session.run_id] = session

    def open_count(self) -> int:
        """Streams open (a superseded one is dropped at once: it is being ended)."""
        return len(self._sessions)

    def detach(self, session: StreamSession) -> None:
        if self._sessions.get(session.run_id) is session:
            del self._sessions[session.run_id]

    def deliver(self, command: CommandMessage) -> None:
        session = self._sessions.get(command.run_id)
        if session is not None and not session.closing:
            session.push(command)

    async def going_away(self, reason: str) -> None:
        """On shutdown: every stream gets "going away" and its pending acks, then ends."""
        await asyncio.gather(*(s.finish(reason) for s in list(self._sessions.values())))
