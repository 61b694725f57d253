"""TelemetryService.StreamRun end to end, on SQLite and PostgreSQL: what a worker sends is stored
exactly once (metrics, events, progress, the final status, across reconnects), and malformed
streams end with the documented status.

A real server per test (on PostgreSQL connecting as the non-superuser application role, so
row-level security applies to every write), driven by a raw grpc.aio worker (the ``streams``
fixture's RawStream: hello, sequenced messages with a window of 32, acks). What the server stored
is read straight from its database and compared by counts and checksums: every metric's points,
sorted by step, hashed bit for bit with their values, against what was sent. Malformed streams
must end with the documented status naming the field, leave the stored data as it was, and leave
other streams running.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from simtrack.client.rpc_errors import from_rpc_error
from simtrack.errors import SequenceGap
from simtrack.v1 import runs_pb2, runs_pb2_grpc, telemetry_pb2
from tests.support import (
    COMPLETED,
    RUNNING,
    ExperimentStatus,
    RawStream,
    Request,
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
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


# Helpers


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


def error_info(error: grpc.RpcError) -> tuple[str, str, dict[str, str]]:
    """The google.rpc.ErrorInfo detail of a failed call: reason, domain, metadata."""
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status"
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason, info.domain, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {status}")


class Bystander:
    """Another run's healthy stream: it must keep being acknowledged whatever else happens."""

    def __init__(self, streams: StreamKit, server: Server) -> None:
        self.streams = streams
        self.server = server
        self.run = streams.new_run(server)
        self.data = streams.dataset(40, points=100, seed=99)
        self.next = 0
        self.stream: RawStream | None = None

    async def start(self) -> Bystander:
        self.stream = await self.streams.open(self.server, self.run.id, "bystander")
        await self.advance()
        return self

    async def advance(self, batches: int = 2) -> None:
        """Send the next batches and see them acknowledged."""
        assert self.stream is not None
        chunk = self.data.messages[self.next : self.next + batches]
        await self.stream.send_all(chunk)
        self.next += len(chunk)
        await self.stream.wait_acked(self.next, timeout=10)

    def check_stored(self, database_url: str) -> None:
        stored = self.streams.database(database_url).checksums(self.run.id)
        assert stored == self.data.checksums(self.next)


# Metrics, events, progress and the final status


async def test_metric_points_are_stored_once_with_their_summaries(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    data = streams.dataset(60)  # 60 batches x 2 metrics x 1,000 points
    before = time.time()
    stream = await streams.open(server, run.id, worker_id="host-a:123")
    assert stream.welcome is not None
    assert stream.welcome.committed_seq == 0
    assert stream.welcome.heartbeat_interval_seconds > 0
    assert list(stream.welcome.pending_commands) == []
    await stream.send_all(data.messages)
    await stream.wait_acked(60)
    assert await stream.finish() == grpc.StatusCode.OK
    after = time.time()

    assert stream.acks == sorted(stream.acks) and stream.acks[-1] == 60
    db = streams.database(database_url)
    assert db.committed_seq(run.id) == 60
    assert db.checksums(run.id) == data.checksums()
    stored = db.metrics(run.id)
    for name in data.metrics:
        metric, values = stored[name], data.values[name]
        assert metric.seqs == list(range(1, 61)), "one chunk per metric per batch"
        assert metric.count == 60_000
        assert metric.min_value == values.min() and metric.max_value == values.max()
        assert metric.last_step == data.steps[name][-1]
        assert metric.last_value == values[-1]
        # No timestamps sent: the server's receive time, one per point.
        assert before - 1 <= metric.timestamps.min() <= metric.timestamps.max() <= after + 1
    stored_run = get_run(server, run.id)
    assert stored_run.status == RUNNING and stored_run.worker_id == "host-a:123"
    assert stored_run.HasField("start_time")


async def test_timestamps_units_and_batches_of_several_series(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    stamps = [1_700_000_000.25, 1_700_000_001.5, 1_700_000_002.75]
    first = telemetry_pb2.MetricSeries(
        name="agent/0/reward",
        unit="USD",
        kind=telemetry_pb2.METRIC_KIND_COUNTER,
        steps=[3, 1, 2],  # any order: the latest value is the one at the highest step
        values=[30.0, 10.0, 20.0],
        timestamps=stamps,
    )
    await stream.send(metrics(1, first, series("b", [5], [-1.0])))
    await stream.send(metrics(2, series("agent/0/reward", [0], [99.0])))  # an older step
    await stream.wait_acked(2)

    stored = streams.database(database_url).metrics(run.id)
    reward = stored["agent/0/reward"]
    assert reward.timestamps[:3].tolist() == stamps
    assert reward.count == 4 and (reward.min_value, reward.max_value) == (10.0, 99.0)
    assert (reward.last_step, reward.last_value) == (3, 30.0), "latest = at the highest step"
    assert (stored["b"].count, stored["b"].last_value) == (1, -1.0)
    rows = streams.database(database_url).rows(
        "select name, unit, kind from metrics where run_id = :run order by name", run=run.id
    )
    assert [tuple(r) for r in rows] == [("agent/0/reward", "USD", "counter"), ("b", "", "gauge")]


async def test_events_progress_and_final_status_complete_the_run(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    started = get_run(server, run.id)
    assert started.status == RUNNING
    assert experiment_status(server, run.experiment_id) == (
        ExperimentStatus.EXPERIMENT_STATUS_RUNNING
    )

    events = [
        telemetry_pb2.Event(step=i, type=f"type-{i % 3}", payload=as_struct({"i": i, "x": [i]}))
        for i in range(250)
    ]
    await stream.send(Request(seq=1, events=telemetry_pb2.EventBatch(events=events[:100])))
    await stream.send(progress(2, tick=40, total=200))  # percent derived: 20
    await stream.send(Request(seq=3, events=telemetry_pb2.EventBatch(events=events[100:])))
    await stream.wait_acked(3)
    midway = get_run(server, run.id)
    assert (midway.current_tick, midway.total_ticks) == (40, 200)
    assert midway.progress_percent == pytest.approx(20.0)
    await stream.send(progress(4, tick=150, percent=77.5))
    await stream.wait_acked(4)
    assert get_run(server, run.id).progress_percent == pytest.approx(77.5)

    await stream.send(final(5, telemetry_pb2.RUN_OUTCOME_COMPLETED, results={"profit": 12.5}))
    await stream.wait_acked(5)
    assert await stream.finish() == grpc.StatusCode.OK

    done = get_run(server, run.id)
    assert done.status == COMPLETED
    assert json_format.MessageToDict(done.results) == {"profit": 12.5}
    start = done.start_time.ToDatetime(tzinfo=UTC)
    end = done.complete_time.ToDatetime(tzinfo=UTC)
    assert start <= end <= datetime.now(UTC) + timedelta(seconds=1)
    assert done.duration.ToTimedelta() == end - start
    assert done.current_tick == 150
    assert experiment_status(server, run.experiment_id) == (
        ExperimentStatus.EXPERIMENT_STATUS_COMPLETED
    )

    stored = streams.database(database_url).events(run.id)
    assert [(r.seq, r.position) for r in stored] == [(1, i) for i in range(100)] + [
        (3, i) for i in range(150)
    ]
    assert [r.step for r in stored] == list(range(250)), "events in the order sent"
    assert [r.type for r in stored] == [f"type-{i % 3}" for i in range(250)]
    assert [r.payload for r in stored] == [{"i": i, "x": [i]} for i in range(250)]


# Exactly once across reconnects


async def test_resend_after_a_dropped_stream_is_stored_once(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    data = streams.dataset(50)
    first = await streams.open(server, run.id)
    first.window = 50  # everything in flight at once, no waiting for acks
    await first.send_all(data.messages)
    first.cancel()  # gone, acks or not

    second = await streams.open(server, run.id)
    assert second.welcome is not None
    watermark = second.welcome.committed_seq
    assert 0 <= watermark <= 50
    await second.send_all(data.messages)  # from seq 1: whatever was stored is only re-acked
    await second.wait_acked(50)

    db = streams.database(database_url)
    assert db.committed_seq(run.id) == 50
    assert db.checksums(run.id) == data.checksums()
    assert all(m.seqs == list(range(1, 51)) for m in db.metrics(run.id).values())

    # A resend of what is stored, on a third stream: acknowledged (acks are cumulative, so
    # maybe once for all three), nothing written.
    third = await streams.open(server, run.id)
    assert third.welcome is not None and third.welcome.committed_seq == 50
    await third.send_all(data.messages[9:12])
    await third.wait(lambda: len(third.acks) >= 1, 10, "the re-ack")
    assert await third.finish() == grpc.StatusCode.OK
    assert 1 <= len(third.acks) <= 3 and set(third.acks) == {50}
    assert db.checksums(run.id) == data.checksums()
    assert db.committed_seq(run.id) == 50


async def test_a_gap_ends_the_stream_naming_the_expected_seq(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    bystander = await Bystander(streams, server).start()
    run = streams.new_run(server)
    data = streams.dataset(8)
    stream = await streams.open(server, run.id)
    await stream.send_all(data.messages[:5])
    await stream.wait_acked(5)
    await stream.send(data.messages[6])  # seq 7: seq 6 is missing
    assert await stream.wait_end() == FAILED_PRECONDITION
    assert "expected 6" in stream.details and "7" in stream.details, stream.details
    assert stream.error is not None
    assert error_info(stream.error) == (
        "SEQUENCE_GAP",
        "simtrack.v1",
        {"expected_seq": "6", "received_seq": "7"},
    )
    gap = from_rpc_error(stream.error)  # the Python client rebuilds it
    assert isinstance(gap, SequenceGap) and (gap.expected, gap.received) == (6, 7)

    await bystander.advance()
    db = streams.database(database_url)
    assert db.committed_seq(run.id) == 5
    assert db.checksums(run.id) == data.checksums(5)
    bystander.check_stored(database_url)
    # The worker resends from the watermark and goes on.
    again = await streams.open(server, run.id)
    assert again.welcome is not None and again.welcome.committed_seq == 5
    await again.send_all(data.messages[5:])
    await again.wait_acked(8)
    assert db.checksums(run.id) == data.checksums()


async def test_a_second_stream_takes_the_run_over(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    data = streams.dataset(20, points=200)
    first = await streams.open(server, run.id, "worker-1")
    await first.send_all(data.messages[:10])
    await first.wait_acked(10)

    second = await streams.open(server, run.id, "worker-2")
    assert await first.wait_end() == grpc.StatusCode.ABORTED
    assert second.welcome is not None and second.welcome.committed_seq == 10
    await second.send_all(data.messages[10:])
    await second.wait_acked(20)
    assert get_run(server, run.id).worker_id == "worker-2"
    assert streams.database(database_url).checksums(run.id) == data.checksums()
    # Commands go to the stream in charge.
    server.runs.PauseRun(runs_pb2.PauseRunRequest(id=run.id))
    await second.wait_command("pause")
    assert first.commands == []


# Malformed streams


async def test_malformed_streams_get_the_documented_status(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """Each case: the right status (and field), stored data as it was, others unaffected."""
    db = streams.database(database_url)
    bystander = await Bystander(streams, server).start()
    run = streams.new_run(server)
    data = streams.dataset(3, points=500)
    stream = await streams.open(server, run.id)
    await stream.send_all(data.messages)
    await stream.wait_acked(3)
    await stream.finish()
    stored = db.checksums(run.id)
    assert stored == data.checksums()

    async def refused(first: Request, then: Request | None = None) -> RawStream:
        """A stream of this run that opens with ``first``, sends ``then``, and is refused."""
        bad = streams.stream(server.address, run.id, "malformed")
        if then is None:
            with pytest.raises(Exception, match="ended with"):
                await bad.start(first)
        else:
            await bad.start(first)
            await bad.send(then)
        await bad.wait_end()
        await bystander.advance()
        assert db.checksums(run.id) == stored, "stored data changed"
        return bad

    hello = Request(hello=telemetry_pb2.Hello(run_id=run.id))
    ok_series = series("loss", [10**9], [1.0])

    # The first message must be hello.
    bad = await refused(data.messages[0])
    assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, ["hello"])

    # Hello for a run that does not exist.
    missing = str(uuid.uuid4())
    bad = await refused(Request(hello=telemetry_pb2.Hello(run_id=missing)))
    assert bad.code == grpc.StatusCode.NOT_FOUND and missing in bad.details

    # More than 100,000 points in one batch.
    big = series("loss", list(range(100_001)), [0.5] * 100_001)
    bad = await refused(hello, metrics(4, big))
    assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, ["metrics.series"])
    assert "100000" in bad.details.replace(",", "")

    # More than 100 series in one batch.
    many = [series(f"m{i}", [1], [1.0]) for i in range(101)]
    bad = await refused(hello, metrics(4, *many))
    assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, ["metrics.series"])

    # Steps and values of different lengths.
    uneven = series("loss", [1, 2, 3], [1.0, 2.0])
    bad = await refused(hello, metrics(4, uneven))
    assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, ["metrics.series[0].steps"])
    bad = await refused(hello, metrics(4, ok_series, series("b", [1], [1.0], [1.0, 2.0])))
    assert bad.bad_request_fields() == ["metrics.series[1].timestamps"]

    # A sequenced message without a seq.
    bad = await refused(hello, metrics(0, ok_series))
    assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, ["seq"])

    bystander.check_stored(database_url)
    assert get_run(server, bystander.run.id).status == RUNNING


async def test_non_finite_values_are_stored_as_sent_and_skipped_by_summaries(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    nan_payload = struct.unpack("<d", struct.pack("<Q", 0x7FF8_DEAD_BEEF_0001))[0]
    values = [1.5, math.nan, math.inf, -math.inf, -0.0, 2.5, nan_payload]
    sent = np.array(values, dtype="<f8").tobytes()
    stream = await streams.open(server, run.id)
    await stream.send(metrics(1, series("odd", list(range(7)), values)))
    await stream.send(metrics(2, series("all_nan", [0, 1, 2], [math.nan, math.inf, -math.inf])))
    await stream.wait_acked(2)

    db = streams.database(database_url)
    stored = db.metrics(run.id)
    odd = stored["odd"]
    assert odd.raw_values == sent, "stored bit for bit (NaN payload and -0.0 included)"
    assert odd.count == 7
    assert (odd.min_value, odd.max_value) == (0.0, 2.5), "min/max over finite values"
    assert (odd.last_step, odd.last_value) == (5, 2.5), "latest: the highest finite step"
    nan_only = stored["all_nan"]
    assert nan_only.count == 3
    assert np.array_equal(
        nan_only.values, np.array([math.nan, math.inf, -math.inf]), equal_nan=True
    )
    assert (nan_only.min_value, nan_only.max_value, nan_only.last_step) == (None, None, None)

    # A later finite point fills the summary in; non-finite ones never blank it.
    await stream.send(metrics(3, series("all_nan", [9], [4.0]), series("odd", [8], [math.nan])))
    await stream.wait_acked(3)
    stored = db.metrics(run.id)
    assert (stored["all_nan"].count, stored["all_nan"].min_value) == (4, 4.0)
    assert (stored["all_nan"].last_step, stored["all_nan"].last_value) == (9, 4.0)
    assert (stored["odd"].count, stored["odd"].last_step, stored["odd"].last_value) == (8, 5, 2.5)

    # WatchRun reports the summaries (NaN where there is no finite value).
    watch = runs_pb2_grpc.RunServiceStub(streams.channel(server.address)).WatchRun(
        runs_pb2.WatchRunRequest(id=run.id)
    )
    state = await asyncio.wait_for(watch.read(), 10)
    watch.cancel()
    assert isinstance(state, runs_pb2.WatchRunResponse)
    latest = {m.name: m for m in state.metrics}
    assert (latest["odd"].value, latest["odd"].step, latest["odd"].count) == (2.5, 5, 8)
    assert (latest["odd"].min, latest["odd"].max) == (0.0, 2.5)
