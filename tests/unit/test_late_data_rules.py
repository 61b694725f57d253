"""The writer's rules for batches of runs that already ended (no database: its pure part)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from simtrack.errors import SequenceGap
from simtrack.server.core.model import RunStatus
from simtrack.server.db.ingest_store import RunState
from simtrack.server.ingest.items import Batch, EventData, FinalData, ProgressData
from simtrack.server.ingest.writer import Pending, _apply

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def run_state(status: RunStatus, vanished: bool = False) -> RunState:
    ended = status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED)
    return RunState(
        id="run",
        experiment_id="exp",
        status=status,
        committed_seq=3,
        current_tick=10,
        total_ticks=10,
        progress_percent=100.0,
        started_at=NOW,
        vanished_at=NOW if vanished else None,
        cancel_reason="",
        completed_at=NOW if ended else None,
    )


def pending(batch: Batch) -> Pending:
    return Pending("tenant", "run", batch, asyncio.get_running_loop().create_future())


def late_batches() -> list[Batch]:
    event = EventData(step=1, time_ns=0, type="late", agent_id=None, payload={})
    return [
        Batch(seq=4, events=[event]),
        Batch(seq=5, progress=ProgressData(tick=3, total=0, percent=None)),
        Batch(seq=6, final=FinalData(RunStatus.COMPLETED, "", {}, {"ok": True})),
    ]


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.FAILED])
async def test_an_ended_run_stores_late_batches_and_keeps_its_status(status: RunStatus) -> None:
    run = run_state(status)
    write = _apply(run, [pending(b) for b in late_batches()])
    assert not write.rejected and len(write.accepted) == 3
    assert write.committed == 6 and run.committed_seq == 6
    assert [e.type for _, _, e in write.events] == ["late"]
    assert run.status == status and run.current_tick == 10, "progress and status stay"
    assert write.ending is None


async def test_a_vanished_run_takes_its_workers_account() -> None:
    run = run_state(RunStatus.FAILED, vanished=True)
    write = _apply(run, [pending(b) for b in late_batches()])
    assert not write.rejected
    assert run.current_tick == 3
    assert run.status == RunStatus.COMPLETED and run.vanished_at is None
    assert write.ending is not None and write.ending.results == {"ok": True}
    assert run.completed_at == NOW, "the end time stays the verdict's"


async def test_a_gap_in_late_data_is_a_sequence_gap() -> None:
    run = run_state(RunStatus.COMPLETED)
    write = _apply(run, [pending(Batch(seq=5))])
    [(_, error)] = write.rejected
    assert isinstance(error, SequenceGap) and (error.expected, error.received) == (4, 5)
    assert run.committed_seq == 3


async def test_a_stopped_run_keeps_the_cancel_reason_when_the_worker_gives_none() -> None:
    run = run_state(RunStatus.RUNNING)
    run.cancel_reason = "budget"
    stop = Batch(seq=4, final=FinalData(RunStatus.STOPPED, "", {}, {}))
    write = _apply(run, [pending(stop)])
    assert write.ending is not None and write.ending.error_message == "budget"
    failed = run_state(RunStatus.RUNNING)
    failed.cancel_reason = "budget"
    crash = Batch(seq=4, final=FinalData(RunStatus.FAILED, "", {}, {}))
    ending = _apply(failed, [pending(crash)]).ending
    assert ending is not None and ending.error_message == "", "only a stop is the cancel's"
