"""Late data: what arrives for a run that already ended is stored, exactly once.

The rule (telemetry.proto, README "Worker streams"): points produced before a run ended are
always accepted, whatever the run's status is now, and leave its final status alone; a run
failed only because the liveness sweep found its worker silent takes the worker's own account
(its final status, or the worker itself back alive); time while no server ran does not count
against a worker. Real server processes, both databases; what was stored is read back from
the database itself.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from simtrack.v1 import experiments_pb2, runs_pb2, telemetry_pb2
from tests.support import (
    COMPLETED,
    FAILED,
    RUNNING,
    Server,
    StartServer,
    StreamKit,
    experiment_status,
    final,
    get_run,
    metrics,
    progress,
    series,
    wait_status,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

Request = telemetry_pb2.StreamRunRequest
ExperimentStatus = experiments_pb2.ExperimentStatus
QUICK_LIVENESS = {"SIMTRACK_HEARTBEAT_TIMEOUT": "1", "SIMTRACK_HEARTBEAT_INTERVAL": "0.2"}


def events(seq: int, *types: str) -> Request:
    batch = [telemetry_pb2.Event(step=i, type=kind) for i, kind in enumerate(types)]
    return Request(seq=seq, events=telemetry_pb2.EventBatch(events=batch))


async def vanished_run(server: Server, streams: StreamKit) -> runs_pb2.Run:
    """A run whose worker sent seq 1 and fell silent, failed by the liveness sweep."""
    run = streams.new_run(server)
    gone = await streams.open(server, run.id, "worker-gone")
    await gone.send(metrics(1, series("x", [0, 1], [0.5, 1.5])))
    await gone.wait_acked(1)
    gone.cancel()
    failed = await wait_status(server, run.id, FAILED, timeout=8)
    assert failed.HasField("vanish_time") and "vanished" in failed.error_message
    return failed


async def test_late_batches_of_an_ended_run_are_stored_and_leave_its_status(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    db = streams.database(database_url)
    run = streams.new_run(server, total_ticks=10)
    stream = await streams.open(server, run.id)
    await stream.send(metrics(1, series("x", [0, 1], [1.0, 2.0])))
    await stream.send(progress(2, tick=10))
    await stream.send(final(3, telemetry_pb2.RUN_OUTCOME_COMPLETED, results={"score": 1}))
    await stream.wait_acked(3)
    await stream.finish()
    ended = get_run(server, run.id)
    assert ended.status == COMPLETED

    late = await streams.open(server, run.id, "late-worker")
    assert late.welcome is not None
    assert late.welcome.run_outcome == telemetry_pb2.RUN_OUTCOME_COMPLETED, "the welcome says so"
    assert late.welcome.committed_seq == 3
    await late.send(metrics(4, series("late", [5, 6, 7], [0.25, 0.5, 0.75])))
    await late.send(events(5, "agent_action", "health_incident"))
    await late.send(progress(6, tick=3))
    await late.send(final(7, telemetry_pb2.RUN_OUTCOME_FAILED, error="too late to count"))
    await late.wait_acked(7)

    assert db.committed_seq(run.id) == 7
    stored = db.metrics(run.id)
    assert stored["late"].count == 3 and stored["x"].count == 2
    assert [e.type for e in db.events(run.id)] == ["agent_action", "health_incident"]
    after = get_run(server, run.id)
    assert after.status == COMPLETED, "late data does not change the final status"
    assert (after.current_tick, after.progress_percent) == (10, 100.0)
    assert after.error_message == "" and after.complete_time == ended.complete_time

    # A resend of late data is recognised like any other: acked again, stored once.
    await late.send(metrics(4, series("late", [5, 6, 7], [0.25, 0.5, 0.75])))
    await late.wait(lambda: late.acks.count(7) >= 2, 10, "the re-ack of seq 4")
    assert len(db.metrics(run.id)["late"].steps) == 3
    await late.finish()


async def test_a_live_worker_revives_a_vanished_run_and_a_replayed_spool_does_not(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    server = start_server(served_url, **QUICK_LIVENESS)
    db = streams.database(database_url)
    run = await vanished_run(server, streams)
    assert experiment_status(server, run.experiment_id) == ExperimentStatus.EXPERIMENT_STATUS_FAILED

    # `simtrack sync` of a dead worker's spool: stored, and the run stays failed.
    replay = await streams.open(server, run.id, "sync", replay=True)
    assert replay.welcome is not None
    assert replay.welcome.run_outcome == telemetry_pb2.RUN_OUTCOME_FAILED
    await replay.send(metrics(2, series("x", [2, 3], [2.5, 3.5])))
    await replay.wait_acked(2)
    await replay.finish()
    still = get_run(server, run.id)
    assert still.status == FAILED and still.HasField("vanish_time")
    assert db.metrics(run.id)["x"].count == 4

    # The worker itself comes back: the run is running again, and says it was revived.
    back = await streams.open(server, run.id, "worker-back")
    assert back.welcome is not None
    assert back.welcome.run_outcome == telemetry_pb2.RUN_OUTCOME_UNSPECIFIED
    assert back.welcome.committed_seq == 2
    revived = get_run(server, run.id)
    assert revived.status == RUNNING
    assert revived.HasField("revive_time") and not revived.HasField("vanish_time")
    assert revived.error_message == "" and not revived.HasField("complete_time")
    assert experiment_status(server, run.experiment_id) == (
        ExperimentStatus.EXPERIMENT_STATUS_RUNNING
    )
    await back.send(metrics(3, series("x", [4], [4.5])))
    await back.send(final(4, telemetry_pb2.RUN_OUTCOME_COMPLETED))
    await back.wait_acked(4)
    done = get_run(server, run.id)
    assert done.status == COMPLETED and done.HasField("revive_time")
    assert db.metrics(run.id)["x"].count == 5


async def test_a_late_final_status_replaces_the_vanished_verdict_only(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    """A worker that closed while nobody heard it: its spooled final status is the truth."""
    server = start_server(served_url, **QUICK_LIVENESS)
    run = await vanished_run(server, streams)
    replay = await streams.open(server, run.id, "sync", replay=True)
    await replay.send(final(2, telemetry_pb2.RUN_OUTCOME_COMPLETED, results={"profit": 3}))
    await replay.wait_acked(2)
    await replay.finish()
    settled = get_run(server, run.id)
    assert settled.status == COMPLETED and not settled.HasField("vanish_time")
    assert settled.results["profit"] == 3

    # The verdict is gone, so a second (or a stale) final status changes nothing now.
    again = await streams.open(server, run.id, "sync", replay=True)
    await again.send(final(3, telemetry_pb2.RUN_OUTCOME_FAILED, error="stale"))
    await again.wait_acked(3)
    await again.finish()
    assert get_run(server, run.id).status == COMPLETED


async def test_a_cancel_keeps_its_reason_when_the_worker_gives_none(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="budget exceeded"))
    await stream.wait_command("cancel")
    assert get_run(server, run.id).cancel_reason == "budget exceeded"
    await stream.send(final(1, telemetry_pb2.RUN_OUTCOME_STOPPED))
    await stream.wait_acked(1)
    stopped = get_run(server, run.id)
    assert (stopped.error_message, stopped.cancel_reason) == ("budget exceeded",) * 2


@pytest.mark.parametrize("backend", [pytest.param("sqlite")])
@pytest.mark.in_process(False)  # the process itself is under test
async def test_the_liveness_clock_starts_again_with_the_server(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    """Down longer than the heartbeat timeout: after the restart every running run still gets
    a full timeout (its worker could not reach anybody meanwhile).
    """
    timeout = 2.0
    settings = {"SIMTRACK_HEARTBEAT_TIMEOUT": str(timeout), "SIMTRACK_HEARTBEAT_INTERVAL": "0.2"}
    first = start_server(served_url, **settings)
    run = streams.new_run(first)
    stream = await streams.open(first, run.id)
    await stream.send(metrics(1, series("x", [0], [1.0])))
    await stream.wait_acked(1)
    first.kill()
    await asyncio.sleep(timeout + 1.0)  # the run's last-seen time is stale now

    second = start_server(served_url, **settings)
    restarted = time.monotonic()
    await asyncio.sleep(timeout * 0.7)  # several sweeps (every timeout / 4)
    assert get_run(second, run.id).status == RUNNING, "failed before a full timeout"
    # Nobody came back: the sweep fails it once the timeout has passed since the start.
    failed = await wait_status(second, run.id, FAILED, timeout=timeout * 3)
    assert time.monotonic() - restarted >= timeout
    assert failed.HasField("vanish_time")
