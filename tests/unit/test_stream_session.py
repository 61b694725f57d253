"""StreamSession: acks in seq order, one per commit, errors end the stream, a bounded window.

The group-commit writer is replaced by one whose commits the test resolves by hand, so the
order in which commits land is chosen here (the e2e tests cover the real writer).
"""

from __future__ import annotations

import asyncio

import pytest

from simtrack.errors import FailedPrecondition, Unauthenticated, Unavailable
from simtrack.server.core.tenancy import Lease, Principal, Role
from simtrack.server.ingest import streams
from simtrack.server.ingest.items import Batch
from simtrack.server.ingest.streams import AckOut, Outgoing, StreamSession

PRINCIPAL = Principal("tenant-a", Role.WRITER)


class HandResolvedWriter:
    """Stands in for GroupCommitWriter: each submitted batch's commit waits for the test."""

    def __init__(self) -> None:
        self.commits: dict[int, asyncio.Future[int]] = {}

    def submit(self, principal: Principal, run_id: str, batch: Batch | None) -> asyncio.Future[int]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if batch is not None:
            self.commits[batch.seq] = done
        return done

    def commit(self, *seqs: int) -> None:
        for seq in seqs:
            self.commits[seq].set_result(seq)


def open_session(
    committed_seq: int = 0, caller: Lease | None = None
) -> tuple[StreamSession, HandResolvedWriter]:
    writer = HandResolvedWriter()
    session = StreamSession(caller or Lease(PRINCIPAL), "run-1", committed_seq, writer)
    return session, writer


async def drain(session: StreamSession) -> list[Outgoing]:
    """What the session has said so far, after letting its acker run."""
    for _ in range(5):
        await asyncio.sleep(0)
    said = []
    while not session.outbox.empty():
        said.append(session.outbox.get_nowait())
    return said


async def test_acks_follow_seq_order_and_cover_a_whole_commit() -> None:
    session, writer = open_session()
    for seq in (1, 2, 3, 4):
        await session.submit(Batch(seq))
    writer.commit(2, 3)  # committed before 1: nothing may be acked past 1's gap
    assert await drain(session) == []
    writer.commit(1)
    assert await drain(session) == [AckOut(3)]  # one cumulative ack for 1..3
    writer.commit(4)
    assert await drain(session) == [AckOut(4)]
    await session.finish()
    assert await drain(session) == [None]


async def test_a_failed_commit_is_said_and_ends_the_acks() -> None:
    session, writer = open_session()
    await session.submit(Batch(1))
    await session.submit(Batch(2))
    writer.commit(1)
    writer.commits[2].set_exception(Unavailable("the database is unreachable"))
    said = await drain(session)
    assert said[0] == AckOut(1)
    assert isinstance(said[1], Unavailable)
    assert len(said) == 2


async def test_nothing_is_taken_in_once_the_callers_lease_is_revoked() -> None:
    caller = Lease(PRINCIPAL, revocable=True)
    session, writer = open_session(caller=caller)
    await session.submit(Batch(1))
    caller.revoke(Unauthenticated("unknown or revoked API key"))
    with pytest.raises(Unauthenticated):
        await session.submit(Batch(2))
    with pytest.raises(Unauthenticated):
        session.heartbeat()
    assert list(writer.commits) == [1]  # what came before still commits (unacknowledged)


async def test_resent_batches_are_accepted_and_gaps_refused() -> None:
    session, writer = open_session(committed_seq=5)
    await session.submit(Batch(3))  # resent after a reconnect: the writer acks it as committed
    await session.submit(Batch(6))
    with pytest.raises(FailedPrecondition, match="seq: expected 7, got 9"):
        await session.submit(Batch(9))


async def test_submit_waits_when_the_window_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "MAX_IN_FLIGHT", 2)
    session, writer = open_session()
    await session.submit(Batch(1))
    await session.submit(Batch(2))
    third = asyncio.create_task(session.submit(Batch(3)))
    await drain(session)
    assert not third.done()  # two batches unacknowledged: the third waits for a slot
    writer.commit(1)
    await drain(session)
    assert third.done()
    session.close()
