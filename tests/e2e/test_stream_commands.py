"""Commands, WatchRun, liveness and the transport's limits end to end, on SQLite and PostgreSQL.

The same harness as ``test_streams.py``: a real server per test (the application role on
PostgreSQL) and raw grpc.aio workers; cancel, pause, resume and custom commands reach the worker
that is connected (or connects later), WatchRun follows a run to its end, a run whose worker
vanishes is failed while live ones are spared, and a graceful shutdown keeps every acked batch.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from simtrack.v1 import runs_pb2, runs_pb2_grpc, telemetry_pb2
from tests.support import (
    COMPLETED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    STOPPED,
    ExperimentStatus,
    RawStream,
    Refusal,
    Request,
    RunStatus,
    Server,
    StartServer,
    StreamKit,
    as_struct,
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

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


# Commands


async def test_cancel_reaches_the_worker_and_its_stopped_status_stops_the_run(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    response = server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="enough"))
    assert response.command.name == "cancel"
    assert response.run.status == RUNNING, "running until the worker confirms"
    command = await stream.wait_command("cancel")
    assert command.id == response.command.id
    assert json_format.MessageToDict(command.args) == {"reason": "enough"}

    # A worker that reconnects before confirming is told again, in the welcome.
    stream.cancel()
    again = await streams.open(server, run.id)
    assert again.welcome is not None
    assert [c.name for c in again.welcome.pending_commands] == ["cancel"]
    assert again.welcome.pending_commands[0].id == response.command.id, "the same cancel"
    redelivered = json_format.MessageToDict(again.welcome.pending_commands[0].args)
    assert redelivered == {"reason": "enough"}, "the reason travels with every delivery"
    assert get_run(server, run.id).cancel_reason == "enough"

    await again.send(final(1, telemetry_pb2.RUN_OUTCOME_STOPPED, error="cancelled by user"))
    await again.wait_acked(1)
    stopped = get_run(server, run.id)
    assert stopped.status == STOPPED and stopped.HasField("complete_time")
    assert stopped.error_message == "cancelled by user"
    assert experiment_status(server, run.experiment_id) == ExperimentStatus.EXPERIMENT_STATUS_FAILED
    with pytest.raises(grpc.RpcError) as info:
        server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id))
    assert info.value.code() == FAILED_PRECONDITION


async def test_cancel_of_a_pending_run_stops_it_at_once(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    response = server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="not needed"))
    assert response.run.status == STOPPED
    stopped = get_run(server, run.id)
    assert stopped.status == STOPPED and stopped.HasField("complete_time")
    assert stopped.error_message == "not needed"
    # A worker arriving late learns the run is over, and is told to stop; what it sent
    # anyway is kept (data is never refused), and the run stays stopped.
    late = await streams.open(server, run.id)
    assert late.welcome is not None
    assert late.welcome.run_outcome == telemetry_pb2.RUN_OUTCOME_STOPPED
    [cancel] = late.welcome.pending_commands
    assert cancel.name == "cancel" and json_format.MessageToDict(cancel.args) == {
        "reason": "not needed"
    }
    await late.send(metrics(1, series("loss", [1], [1.0])))
    await late.wait_acked(1)
    assert get_run(server, run.id).status == STOPPED
    assert streams.database(database_url).metrics(run.id)["loss"].count == 1


async def test_pause_resume_and_custom_commands_arrive_in_order(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    sent = [
        server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id)).command,
        server.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=run.id)).command,
        server.runs.SendCommand(
            runs_pb2.SendCommandRequest(
                id=run.id, name="checkpoint", args=as_struct({"path": "/tmp/ck", "keep": 3})
            )
        ).command,
    ]
    await stream.wait(lambda: len(stream.commands) == 3, 10, "three commands")
    assert [(c.id, c.name) for c in stream.commands] == [(c.id, c.name) for c in sent]
    assert [c.name for c in stream.commands] == ["pause", "resume", "checkpoint"]
    assert json_format.MessageToDict(stream.commands[2].args) == {"path": "/tmp/ck", "keep": 3}
    assert get_run(server, run.id).status == RUNNING

    with pytest.raises(grpc.RpcError) as info:
        server.runs.SendCommand(runs_pb2.SendCommandRequest(id=run.id, name="cancel"))
    assert info.value.code() == INVALID_ARGUMENT
    assert len(stream.commands) == 3


def pending(stream: RawStream) -> list[tuple[str, str]]:
    """The commands of the stream's welcome, as (name, id)."""
    assert stream.welcome is not None
    return [(c.name, c.id) for c in stream.welcome.pending_commands]


async def test_pause_is_stored_and_told_to_whichever_worker_connects(
    server: Server, streams: StreamKit, refusal: Refusal
) -> None:
    run = streams.new_run(server)
    first = await streams.open(server, run.id, "worker-1")
    started = get_run(server, run.id).start_time
    first.cancel()  # the worker goes away; the run is running

    paused = server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    assert paused.command.name == "pause" and paused.run.status == PAUSED
    assert get_run(server, run.id).status == PAUSED
    assert experiment_status(server, run.experiment_id) == (
        ExperimentStatus.EXPERIMENT_STATUS_RUNNING
    ), "a paused run counts as running"
    listed = server.runs.ListRuns(runs_pb2.ListRunsRequest(filter='status = "paused"'))
    assert [r.id for r in listed.runs] == [run.id]
    stats = server.runs.GetRunStats(
        runs_pb2.GetRunStatsRequest(filter=f'experiment_id = "{run.experiment_id}"')
    )
    assert [(c.status, c.count) for c in stats.by_status] == [
        (RunStatus.RUN_STATUS_PENDING, 0),
        (RunStatus.RUN_STATUS_STARTING, 0),
        (RUNNING, 0),
        (PAUSED, 1),
        (COMPLETED, 0),
        (FAILED, 0),
        (STOPPED, 0),
    ]
    watch = server.runs.WatchRun(runs_pb2.WatchRunRequest(id=run.id))
    assert next(watch).run.status == PAUSED
    watch.cancel()

    # A worker that connects is told in its welcome; connecting does not resume the run.
    worker = await streams.open(server, run.id, "worker-2")
    assert pending(worker) == [("pause", paused.command.id)]
    assert get_run(server, run.id).status == PAUSED
    await worker.send(progress(1, tick=5))  # a paused worker may still send what it has
    await worker.wait_acked(1)
    again = server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    assert again.command.id == paused.command.id, "asked again: the same pause"

    resumed = server.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=run.id))
    assert resumed.command.name == "resume" and resumed.run.status == RUNNING
    assert (await worker.wait_command("resume")).id == resumed.command.id
    assert resumed.run.start_time == started, "resuming is not starting again"

    # A resume while the worker is away reaches it in its next welcome.
    server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    worker.cancel()
    resumed = server.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=run.id))
    back = await streams.open(server, run.id, "worker-3")
    assert pending(back) == [("resume", resumed.command.id)]

    # Cancelling a paused run works as for a running one, and outweighs the pause.
    server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    cancel = server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="enough"))
    assert cancel.run.status == PAUSED, "paused until the worker confirms"
    assert (await back.wait_command("cancel")).id == cancel.command.id
    back.cancel()
    last = await streams.open(server, run.id, "worker-4")
    assert pending(last) == [("cancel", cancel.command.id)]
    await last.send(final(2, telemetry_pb2.RUN_OUTCOME_STOPPED, error="cancelled"))
    await last.wait_acked(2)
    assert get_run(server, run.id).status == STOPPED

    # Illegal moves are refused, and UpdateRun neither pauses nor resumes.
    waiting = streams.new_run(server)
    fresh = streams.new_run(server)
    await streams.open(server, fresh.id, "worker-5")
    for run_id in (run.id, waiting.id):  # stopped, pending
        pause = runs_pb2.PauseRunRequest(id=run_id)
        assert refusal(server.runs.PauseRun, pause) == (FAILED_PRECONDITION, [])
        resume = runs_pb2.ResumeRunRequest(id=run_id)
        assert refusal(server.runs.ResumeRun, resume) == (FAILED_PRECONDITION, [])
    update = runs_pb2.UpdateRunRequest(
        run=runs_pb2.Run(id=fresh.id, status=PAUSED),
        update_mask=field_mask_pb2.FieldMask(paths=["status"]),
    )
    assert refusal(server.runs.UpdateRun, update) == (INVALID_ARGUMENT, ["run.status"])
    assert get_run(server, waiting.id).status == PENDING
    assert get_run(server, fresh.id).status == RUNNING


# WatchRun


async def test_watch_run_follows_a_run_until_it_ends(server: Server, streams: StreamKit) -> None:
    run = streams.new_run(server, total_ticks=100)
    stub = runs_pb2_grpc.RunServiceStub(streams.channel(server.address))
    watch = stub.WatchRun(runs_pb2.WatchRunRequest(id=run.id))
    seen: list[runs_pb2.WatchRunResponse] = []

    async def until(condition: Callable[[runs_pb2.WatchRunResponse], bool], what: str) -> None:
        async with asyncio.timeout(10):
            while not (seen and condition(seen[-1])):
                update = await watch.read()
                assert isinstance(update, runs_pb2.WatchRunResponse), f"ended before {what}"
                seen.append(update)

    await until(lambda u: True, "the initial state")
    assert seen[0].run.id == run.id and seen[0].run.status == PENDING
    assert list(seen[0].metrics) == []

    stream = await streams.open(server, run.id)
    await until(lambda u: u.run.status == RUNNING, "running")
    await stream.send(progress(1, tick=25))
    await until(lambda u: u.run.current_tick == 25, "progress")
    assert seen[-1].run.progress_percent == pytest.approx(25.0)
    await stream.send(metrics(2, series("loss", [1, 2, 3], [3.0, 1.0, 2.0])))
    await until(lambda u: len(u.metrics) == 1, "a metric")
    loss = seen[-1].metrics[0]
    assert (loss.name, loss.value, loss.step, loss.count) == ("loss", 2.0, 3, 3)
    assert (loss.min, loss.max) == (1.0, 3.0)
    await stream.send(metrics(3, series("loss", [4], [0.5])))
    await until(lambda u: u.metrics[0].count == 4, "the metric's change")
    assert (seen[-1].metrics[0].value, seen[-1].metrics[0].min) == (0.5, 0.5)

    await stream.send(final(4, telemetry_pb2.RUN_OUTCOME_COMPLETED))
    await until(lambda u: u.run.status == COMPLETED, "completion")
    async with asyncio.timeout(10):
        assert await watch.read() is grpc.aio.EOF, "WatchRun ends after the run ends"
    assert await watch.code() == grpc.StatusCode.OK

    # Watching a finished run: its state, then the end.
    after = stub.WatchRun(runs_pb2.WatchRunRequest(id=run.id))
    async with asyncio.timeout(10):
        last = await after.read()
        assert isinstance(last, runs_pb2.WatchRunResponse) and last.run.status == COMPLETED
        assert await after.read() is grpc.aio.EOF
    missing = stub.WatchRun(runs_pb2.WatchRunRequest(id=str(uuid.uuid4())))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(missing.read(), 10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# Liveness, cancel grace, shutdown


async def test_heartbeat_timeout_fails_a_vanished_run_and_spares_live_ones(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    server = start_server(
        served_url, SIMTRACK_HEARTBEAT_TIMEOUT="1", SIMTRACK_HEARTBEAT_INTERVAL="0.2"
    )
    vanished, alive, returning = (streams.new_run(server) for _ in range(3))
    gone = await streams.open(server, vanished.id, "worker-gone")
    assert gone.welcome is not None and gone.welcome.heartbeat_interval_seconds == 0.2
    # The server's clock for the worker starts at its last message, received after this.
    last_sent = time.monotonic()
    await gone.send(progress(1, tick=1))
    await gone.wait_acked(1)
    live = await streams.open(server, alive.id, "worker-live")
    back = await streams.open(server, returning.id, "worker-back")
    beats = [asyncio.create_task(live.keep_alive(0.2))]
    gone.cancel()
    back.cancel()
    await asyncio.sleep(0.4)  # back within the timeout
    back = await streams.open(server, returning.id, "worker-back")
    beats.append(asyncio.create_task(back.keep_alive(0.2)))
    try:
        failed = await wait_status(server, vanished.id, FAILED, timeout=8)
        assert time.monotonic() - last_sent >= 1.0, "failed before the timeout"
        assert "worker" in failed.error_message and "1s" in failed.error_message
        assert failed.HasField("complete_time")
        await asyncio.sleep(1.5)  # longer than the timeout, with heartbeats going on
        assert get_run(server, alive.id).status == RUNNING
        assert get_run(server, returning.id).status == RUNNING
    finally:
        for beat in beats:
            beat.cancel()
    await back.send(final(1, telemetry_pb2.RUN_OUTCOME_COMPLETED))
    await back.wait_acked(1)
    assert get_run(server, returning.id).status == COMPLETED


async def test_a_paused_run_is_failed_when_its_worker_vanishes_and_kept_while_it_beats(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    server = start_server(
        served_url, SIMTRACK_HEARTBEAT_TIMEOUT="1", SIMTRACK_HEARTBEAT_INTERVAL="0.2"
    )
    vanished, alive = streams.new_run(server), streams.new_run(server)
    gone = await streams.open(server, vanished.id, "worker-gone")
    live = await streams.open(server, alive.id, "worker-live")
    beat = asyncio.create_task(live.keep_alive(0.2))
    try:
        for run in (vanished, alive):
            server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
        gone.cancel()
        failed = await wait_status(server, vanished.id, FAILED, timeout=8)
        assert "worker vanished" in failed.error_message
        await asyncio.sleep(1.5)  # longer than the timeout, with heartbeats going on
        assert get_run(server, alive.id).status == PAUSED
    finally:
        beat.cancel()


async def test_an_unconfirmed_cancel_stops_the_run_after_the_grace(
    served_url: str, start_server: StartServer, streams: StreamKit
) -> None:
    server = start_server(served_url, SIMTRACK_CANCEL_GRACE="1")
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    beat = asyncio.create_task(stream.keep_alive(0.2))  # alive, but ignoring the cancel
    try:
        cancelled_at = time.monotonic()
        server.runs.CancelRun(runs_pb2.CancelRunRequest(id=run.id, reason="stop"))
        await stream.wait_command("cancel")
        await asyncio.sleep(0.5)
        assert get_run(server, run.id).status == RUNNING, "stopped before the grace"
        stopped = await wait_status(server, run.id, STOPPED, timeout=8)
        assert time.monotonic() - cancelled_at >= 0.9
        assert stopped.error_message, "the run says why it stopped"
        assert stopped.HasField("complete_time")
    finally:
        beat.cancel()


@pytest.mark.in_process(False)  # the process itself is under test
async def test_graceful_shutdown_says_going_away_and_keeps_every_acked_batch(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    grace = 5.0
    server = start_server(served_url, SIMTRACK_SHUTDOWN_GRACE=str(grace))
    run = streams.new_run(server)
    data = streams.dataset(3000, points=100)
    stream = await streams.open(server, run.id)

    async def send_everything() -> None:
        for message in data.messages:
            await stream.send(message, timeout=10)
            await asyncio.sleep(0.001)  # a steady worker, not a firehose

    sender = asyncio.create_task(send_everything())
    await stream.wait_acked(50)
    assert not sender.done(), "the stream should still be sending"
    server.process.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = await stream.wait_end(timeout=grace + 5)
    with pytest.raises(Exception, match="ended with"):
        await sender
    exit_code = await asyncio.to_thread(server.process.process.wait, grace + 5)
    took = time.monotonic() - signalled

    assert stream.going_away is not None, (
        f"no GoingAway before the end ({code}: {stream.details!r}, acked {stream.committed}, "
        f"sent {stream.sent}, exit {exit_code})\n{server.stderr}"
    )
    assert code == grpc.StatusCode.OK or stream.write_race, stream.details
    assert exit_code == 0 and took < grace + 2, (exit_code, took)
    db = streams.database(database_url)
    committed = db.committed_seq(run.id)
    assert committed >= stream.committed, "an acknowledged batch is missing"
    assert stream.committed >= 50
    assert db.checksums(run.id) == data.checksums(committed)
    assert all(m.seqs == list(range(1, committed + 1)) for m in db.metrics(run.id).values())


# Limits of the transport


async def test_messages_up_to_the_documented_8_mib_are_accepted(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """MetricBatch's comment: 'the message itself is limited to 8 MiB'."""
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    payload = as_struct({"blob": "x" * 5000})
    events = [telemetry_pb2.Event(step=i, type="blob", payload=payload) for i in range(1000)]
    message = Request(seq=1, events=telemetry_pb2.EventBatch(events=events))
    assert 4 * 2**20 < message.ByteSize() < 8 * 2**20
    await stream.send(message)
    await stream.wait_acked(1)
    assert len(streams.database(database_url).events(run.id)) == 1000

    # Beyond the limit gRPC refuses the message (RESOURCE_EXHAUSTED) and nothing is stored.
    events = [telemetry_pb2.Event(step=i, type="blob", payload=payload) for i in range(1800)]
    huge = Request(seq=2, events=telemetry_pb2.EventBatch(events=events))
    assert huge.ByteSize() > 8.5 * 2**20
    await stream.send(huge)
    assert await stream.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    again = await streams.open(server, run.id)
    assert again.welcome is not None and again.welcome.committed_seq == 1
    assert len(streams.database(database_url).events(run.id)) == 1000


@pytest.mark.in_process(False)  # the process itself is under test
async def test_a_stream_dropped_while_acks_flow_leaves_a_clean_log(
    served_url: str, start_server: StartServer, streams: StreamKit, database_url: str
) -> None:
    """Found here (fixed in 1e8e03f): a call dropped while the server wrote to it had its
    handler generators finalized later in another context, logging tracebacks.
    """
    server = start_server(served_url)
    run = streams.new_run(server)
    data = streams.dataset(200, points=100)
    stream = await streams.open(server, run.id)
    stream.window = 200
    await stream.send_all(data.messages)
    await stream.wait_acked(5)
    stream.cancel()  # while the server is busy writing acks
    await asyncio.sleep(0.3)
    again = await streams.open(server, run.id)  # the server serves on, the data is whole
    await again.send_all(data.messages)
    await again.wait_acked(200)
    assert streams.database(database_url).checksums(run.id) == data.checksums()
    assert server.stop() == 0
    assert "Traceback" not in server.stderr, server.stderr
