"""Bad input on TelemetryService.StreamRun end to end, on SQLite and PostgreSQL (as the
application role, so row-level security applies), beside the unary cases of the other
``test_bad_input_*`` modules.

A worker's bad message ends its stream with the documented status: INVALID_ARGUMENT with a
google.rpc.BadRequest naming the field (``request`` for bytes that are not a StreamRunRequest),
NOT_FOUND with the ResourceInfo of a run that does not exist, FAILED_PRECONDITION with the
ErrorInfo SEQUENCE_GAP for a seq that skips ahead. After each refusal the server still serves
and what the run had stored (acknowledged metric points and events, and its watermark) is
there exactly as before, each point once. The ``streams`` fixture adds that no stream ended
UNKNOWN or INTERNAL, the ``server`` fixture that the server logged no traceback.

Covered elsewhere: a first message that is a data batch, an unknown run, more than 100 series
or 100,000 points, steps and values of different lengths and a seq of 0
(test_streams.py, malformed streams); a gap in the middle of a stream and the resend after it
(test_streams.py); a message over 8 MiB (test_streams.py); another tenant's run, refused as if
it did not exist (test_tenancy.py); NaN and infinities among metric values, which are stored
as sent (test_streams.py).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from typing import Any, cast

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from simtrack.v1 import runs_pb2, telemetry_pb2
from tests.support import Server, StartServer, StreamKit
from tests.support.bad_input import (
    FAILED_PRECONDITION,
    GARBAGE,
    INVALID_ARGUMENT,
    NOT_FOUND,
    SHORT,
    Failure,
    StreamRequest,
    failure_from,
    length_delimited,
    nested_struct,
    varint,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

SERVING = health_pb2.HealthCheckResponse.SERVING
Hello = telemetry_pb2.Hello
Series = telemetry_pb2.MetricSeries
Event = telemetry_pb2.Event
STREAM_RUN = "/simtrack.v1.TelemetryService/StreamRun"


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


async def test_a_stream_message_that_is_not_protobuf_ends_the_stream(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """Mid-stream: INVALID_ARGUMENT, and every batch acknowledged before stays stored."""
    db = streams.database(database_url)
    run = streams.new_run(server)
    data = streams.dataset(3, points=100)
    stream_run: grpc.aio.StreamStreamMultiCallable[bytes, telemetry_pb2.StreamRunResponse] = (
        streams.channel(server.address).stream_stream(
            "/simtrack.v1.TelemetryService/StreamRun",
            response_deserializer=telemetry_pb2.StreamRunResponse.FromString,
        )
    )
    hello = StreamRequest(hello=telemetry_pb2.Hello(run_id=run.id)).SerializeToString()

    async def ending(call: Any) -> Failure:
        """How ``call`` ends: it must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(10):
                while await call.read() is not grpc.aio.EOF:
                    pass
        return failure_from(cast(grpc.Call, info.value))

    async def answer(call: Any) -> telemetry_pb2.StreamRunResponse:
        response = await call.read()
        assert isinstance(response, telemetry_pb2.StreamRunResponse), response
        return response

    call = stream_run()
    await call.write(hello)
    assert (await answer(call)).HasField("welcome")
    for message in data.messages:
        await call.write(message.SerializeToString())
    acked = 0
    while acked < len(data.messages):
        acked = max(acked, (await answer(call)).ack.committed_seq)
    await call.write(GARBAGE)
    failure = await ending(call)
    assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["request"]), str(failure)
    assert "simtrack.v1.StreamRunRequest" in failure.message
    assert db.committed_seq(run.id) == len(data.messages)
    assert db.checksums(run.id) == data.checksums()

    # Instead of hello.
    call = stream_run()
    await call.write(GARBAGE)
    failure = await ending(call)
    assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["request"]), str(failure)
    assert db.checksums(run.id) == data.checksums()


# Stream values protobuf or the database cannot take


async def test_stream_values_out_of_their_range_are_invalid(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """Timestamps beyond protobuf's range and non-finite series timestamps end the stream
    INVALID_ARGUMENT naming the field (it never succeeds on a resend); stored data stays.
    """
    db = streams.database(database_url)
    run = streams.new_run(server)
    data = streams.dataset(2, points=100)
    await streams.deliver(server, run.id, data.messages)

    def event_at(seconds: int, nanos: int = 0) -> StreamRequest:
        event = telemetry_pb2.Event(
            step=1, type="tick", time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        )
        return StreamRequest(seq=3, events=telemetry_pb2.EventBatch(events=[event]))

    def stamped(*stamps: float) -> StreamRequest:
        points = len(stamps)
        series = telemetry_pb2.MetricSeries(
            name="late", steps=range(points), values=[1.0] * points, timestamps=stamps
        )
        return StreamRequest(seq=3, metrics=telemetry_pb2.MetricBatch(series=[series]))

    event_time = "events.events[0].time"
    stamps = "metrics.series[0].timestamps"
    cases = [
        (event_at(2**40), event_time),
        (event_at(-(2**40)), event_time),
        (event_at(253_402_300_800), event_time),  # 10000-01-01
        (event_at(0, -1), f"{event_time}.nanos"),
        (event_at(0, 10**9), f"{event_time}.nanos"),
        (stamped(math.nan), stamps),
        (stamped(1.0, math.inf), stamps),
        (stamped(-math.inf, 1.0, 2.0), stamps),
        (stamped(1e300), stamps),
    ]
    for message, field in cases:
        bad = streams.stream(server.address, run.id, "out-of-range")
        await bad.open()
        await bad.send(message)
        await bad.wait_end()
        assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, [field]), bad.details
    assert db.committed_seq(run.id) == 2
    assert db.checksums(run.id) == data.checksums()
    assert db.events(run.id) == []

    # Steps at both ends of int64 are stored and read back exactly.
    top, bottom = 2**63 - 1, -(2**63)
    edges = StreamRequest(
        seq=3,
        metrics=telemetry_pb2.MetricBatch(
            series=[
                telemetry_pb2.MetricSeries(name="top", steps=[top - 1, top], values=[1.0, 2.0]),
                telemetry_pb2.MetricSeries(
                    name="bottom", steps=[bottom, bottom + 1], values=[3.0, 4.0]
                ),
            ]
        ),
    )
    good = await streams.open(server, run.id)
    await good.send(edges)
    await good.wait_acked(3)
    for name, steps in (("top", [top - 1, top]), ("bottom", [bottom, bottom + 1])):
        request = telemetry_pb2.GetMetricHistoryRequest(run_id=run.id, metric=name)
        assert list(server.telemetry.GetMetricHistory(request).steps) == steps


# A run with something stored, and streams of it that must be refused


def metrics(seq: int, *series: Series) -> StreamRequest:
    return StreamRequest(seq=seq, metrics=telemetry_pb2.MetricBatch(series=list(series)))


def events(seq: int, *items: Event) -> StreamRequest:
    return StreamRequest(seq=seq, events=telemetry_pb2.EventBatch(events=list(items)))


def final(seq: int, outcome: int, **results: Any) -> StreamRequest:
    status = telemetry_pb2.FinalStatus(
        outcome=telemetry_pb2.RunOutcome.ValueType(outcome), results=json_struct(results)
    )
    return StreamRequest(seq=seq, status=status)


def json_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(data)
    return result


def point(name: str = "loss") -> Series:
    """A valid one-point series (at a step no stored batch uses)."""
    return Series(name=name, steps=[10**9], values=[1.0])


class StoredRun:
    """A run whose first ``STORED`` messages (metric batches, then events) are acknowledged,
    and the streams of it that must be refused.
    """

    STORED = 3

    def __init__(self, server: Server, streams: StreamKit, database_url: str) -> None:
        self.server = server
        self.streams = streams
        self.db = streams.database(database_url)
        self.run = streams.new_run(server)
        self.data = streams.dataset(self.STORED - 1, points=200)
        stored_events = [
            Event(step=i, type="stored", payload=json_struct({"i": i, "tags": ["a", "b"]}))
            for i in range(3)
        ]
        self.messages = [*self.data.messages, events(self.STORED, *stored_events)]
        self.hello = StreamRequest(hello=Hello(run_id=self.run.id, worker_id="bad-input"))
        self.next_seq = self.STORED + 1
        self.checksums: dict[str, Any] = {}
        self.events: list[Any] = []

    async def store(self) -> StoredRun:
        await self.streams.deliver(self.server, self.run.id, self.messages)
        self.checksums = self.db.checksums(self.run.id)
        assert self.checksums == self.data.checksums()
        self.events = self.db.events(self.run.id)
        assert len(self.events) == 3
        return self

    def check_intact(self, case: str) -> None:
        """The server serves, and the run's stored data is exactly what was acknowledged."""
        assert self.server.health_status() == SERVING, case
        assert self.db.committed_seq(self.run.id) == self.STORED, case
        assert self.db.checksums(self.run.id) == self.checksums, f"{case}: points changed"
        assert self.db.events(self.run.id) == self.events, f"{case}: events changed"

    async def refused(self, case: str, first: StreamRequest, *then: StreamRequest) -> Failure:
        """Open a stream with ``first``, send ``then``; how the server ended it (it must)."""
        stream = self.streams.stream(self.server.address, self.run.id, "bad-input")
        stream.window = 2**64  # a bad worker keeps to no window: any seq goes out at once
        try:
            await stream.start(first)
            for message in then:
                await stream.send(message)
        except Exception as exc:  # StreamEnded (conftest's): refused before the welcome
            if "ended with" not in str(exc):
                raise
        await stream.wait_end()
        assert stream.error is not None, f"{case}: the stream ended {stream.code}"
        failure = failure_from(cast(grpc.Call, stream.error))
        self.check_intact(case)
        return failure

    async def invalid(
        self, field: str, first: StreamRequest, *then: StreamRequest, case: str = ""
    ) -> Failure:
        """The stream ends INVALID_ARGUMENT naming ``field`` only, in a short message."""
        failure = await self.refused(case or field, first, *then)
        assert (failure.code, failure.fields) == (INVALID_ARGUMENT, [field]), (case, str(failure))
        assert 0 < len(failure.message) < SHORT, (case, failure.message[:1000])
        return failure

    async def invalid_after_hello(self, field: str, message: StreamRequest, case: str = "") -> None:
        await self.invalid(field, self.hello, message, case=case)

    async def refused_bytes(self, case: str, *messages: bytes) -> Failure:
        """A stream of raw ``messages`` (hello first, as bytes too): how it ended."""
        call: Any = self.streams.channel(self.server.address).stream_stream(
            STREAM_RUN, response_deserializer=telemetry_pb2.StreamRunResponse.FromString
        )()
        for message in messages:
            await call.write(message)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(10):
                while await call.read() is not grpc.aio.EOF:
                    pass
        self.check_intact(case)
        return failure_from(cast(grpc.Call, info.value))


@pytest.fixture
async def stored(server: Server, streams: StreamKit, database_url: str) -> StoredRun:
    return await StoredRun(server, streams, database_url).store()


def error_info(error: grpc.RpcError) -> tuple[str, str, dict[str, str]]:
    """The google.rpc.ErrorInfo detail of a failed call: reason, domain, metadata."""
    status = rpc_status.from_call(error)
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason, info.domain, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {status}")


# Hello


async def test_a_stream_must_open_with_a_hello_naming_a_run_and_a_worker(
    stored: StoredRun,
) -> None:
    for case, first in (
        ("heartbeat", StreamRequest(heartbeat=telemetry_pb2.Heartbeat())),
        ("no kind at all", StreamRequest()),
        ("progress", StreamRequest(seq=stored.next_seq, progress=telemetry_pb2.Progress(tick=1))),
        ("final status", final(stored.next_seq, telemetry_pb2.RUN_OUTCOME_COMPLETED)),
    ):
        await stored.invalid("hello", first, case=case)

    run_id = stored.run.id
    for case, bad_id in (
        ("empty", ""),
        ("not a UUID", "run-1"),
        ("a UUID and more", run_id + "x"),
        ("huge", "r" * 100_000),
        ("NUL", "\x00" * 36),
    ):
        hello = StreamRequest(hello=Hello(run_id=bad_id))
        failure = await stored.invalid("hello.run_id", hello, case=case)
        assert "r" * 100 not in failure.message, "a huge id is quoted short"

    missing = str(uuid.uuid4())
    failure = await stored.refused("unknown run", StreamRequest(hello=Hello(run_id=missing)))
    assert failure.code == NOT_FOUND, str(failure)
    assert failure.resource is not None, str(failure)
    assert (failure.resource.resource_type, failure.resource.resource_name) == ("run", missing)

    for case, worker in (("201 characters", "w" * 201), ("huge", "w" * 100_000), ("NUL", "w\x00")):
        hello = StreamRequest(hello=Hello(run_id=run_id, worker_id=worker))
        await stored.invalid("hello.worker_id", hello, case=case)
    run = stored.server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run
    assert run.worker_id == "e2e-worker", "a refused hello recorded its worker"


# Metric batches, events, progress and final statuses


async def test_bad_metric_batches_name_the_field(stored: StoredRun) -> None:
    seq = stored.next_seq
    name = "metrics.series[0].name"
    for case, bad_name in (
        ("empty", ""),
        ("blank", "   "),
        ("201 characters", "m" * 201),
        ("huge", "m" * 1_000_000),
        ("NUL", "loss\x00"),
    ):
        await stored.invalid_after_hello(
            name, metrics(seq, Series(name=bad_name, steps=[1], values=[1.0])), case
        )
    second = "metrics.series[1]"
    cases = [
        ("metrics.series[0].values", Series(name="none", steps=[], values=[])),
        ("metrics.series[0].values", Series(name="steps only", steps=[1, 2], values=[])),
        ("metrics.series[0].steps", Series(name="values only", steps=[], values=[1.0, 2.0])),
        ("metrics.series[0].steps", Series(name="more steps", steps=[1, 2, 3], values=[1.0])),
        ("metrics.series[0].unit", Series(name="u", unit="u" * 51, steps=[1], values=[1.0])),
        ("metrics.series[0].unit", Series(name="u", unit="\x00", steps=[1], values=[1.0])),
        (
            "metrics.series[0].kind",
            Series(name="k", kind=telemetry_pb2.MetricKind.ValueType(7), steps=[1], values=[1.0]),
        ),
    ]
    for field, series in cases:
        await stored.invalid_after_hello(field, metrics(seq, series), case=series.name)
    # The field named is the bad series' own, wherever it stands in the batch.
    await stored.invalid_after_hello(f"{second}.name", metrics(seq, point(), Series(name="")))
    await stored.invalid_after_hello(
        "metrics.series", metrics(seq, point("twice"), point("twice")), case="a metric twice"
    )


async def test_bad_events_progress_and_final_statuses_name_the_field(stored: StoredRun) -> None:
    seq = stored.next_seq
    event = "events.events[1]"
    fine = Event(step=1, type="fine")
    cases = [
        (f"{event}.type", Event(step=1)),
        (f"{event}.type", Event(step=1, type="t" * 101)),
        (f"{event}.type", Event(step=1, type="t" * 1_000_000)),
        (f"{event}.type", Event(step=1, type="t\x00")),
        (f"{event}.agent_id", Event(step=1, type="t", agent_id="agent-7")),
        (f"{event}.payload.x", Event(step=1, type="t", payload=json_struct({"x": math.nan}))),
        (f"{event}.payload.x[1]", Event(step=1, type="t", payload=json_struct({"x": [1, "\x00"]}))),
    ]
    for field, bad in cases:
        await stored.invalid_after_hello(field, events(seq, fine, bad), case=str(bad)[:80])
    too_many = events(seq, *[fine] * 10_001)
    await stored.invalid_after_hello("events.events", too_many, case="10,001 events")

    def progress(tick: int = 0, total: int = 0, percent: float = 0.0) -> StreamRequest:
        return StreamRequest(
            seq=seq, progress=telemetry_pb2.Progress(tick=tick, total=total, percent=percent)
        )

    await stored.invalid_after_hello("progress.tick", progress(tick=-1))
    await stored.invalid_after_hello("progress.total", progress(total=-(2**62)))
    for percent in (100.5, -1.0, math.nan, math.inf):
        await stored.invalid_after_hello(
            "progress.percent", progress(percent=percent), str(percent)
        )

    for outcome in (telemetry_pb2.RUN_OUTCOME_UNSPECIFIED, 4, -1):
        await stored.invalid_after_hello(
            "status.outcome", final(seq, outcome), f"outcome {outcome}"
        )
    completed = telemetry_pb2.RUN_OUTCOME_COMPLETED
    await stored.invalid_after_hello("status.results.score", final(seq, completed, score=math.inf))
    failed = final(seq, telemetry_pb2.RUN_OUTCOME_FAILED)
    failed.status.error_message = "e\x00"
    await stored.invalid_after_hello("status.error_message", failed)
    failed.status.error_message = "e" * 100_000
    await stored.invalid_after_hello("status.error_message", failed, "a huge error message")
    run = stored.server.runs.GetRun(runs_pb2.GetRunRequest(id=stored.run.id)).run
    assert run.status == runs_pb2.RunStatus.RUN_STATUS_RUNNING, "a refused status applied"
    assert run.current_tick == 0, "a refused progress applied"


# Sequence numbers and kinds


async def test_sequence_numbers_that_skip_ahead_or_are_not_positive(stored: StoredRun) -> None:
    for seq in (-1, -(2**63)):
        await stored.invalid_after_hello("seq", metrics(seq, point()), case=f"seq {seq}")
    expected = str(stored.next_seq)
    for seq in (stored.next_seq + 1, 2**63 - 1):
        failure = await stored.refused(f"gap to {seq}", stored.hello, metrics(seq, point()))
        assert failure.code == FAILED_PRECONDITION, str(failure)
        error = stored.streams.streams[-1].error
        assert error is not None
        assert error_info(error) == (
            "SEQUENCE_GAP",
            "simtrack.v1",
            {"expected_seq": expected, "received_seq": str(seq)},
        )


async def test_a_resend_with_other_content_changes_nothing_stored(stored: StoredRun) -> None:
    """Seqs going back (at or below the watermark) are acknowledged again, not stored again:
    the first content sent under a seq is what stays.
    """
    stream = await stored.streams.open(stored.server, stored.run.id)
    for seq in (2, 1, stored.STORED):
        await stream.send(metrics(seq, Series(name="loss", steps=[5], values=[-1.0])))
    await stream.send(events(2, Event(step=9, type="impostor")))
    await stream.heartbeat()  # anything after is read after the resends were
    assert await stream.finish() == grpc.StatusCode.OK
    assert set(stream.acks) <= {stored.STORED}
    stored.check_intact("resends")


async def test_messages_of_no_known_kind_end_the_stream(stored: StoredRun) -> None:
    seq = stored.next_seq
    await stored.invalid_after_hello("kind", StreamRequest(seq=seq), case="no kind")
    await stored.invalid_after_hello(
        "kind", StreamRequest(seq=seq, hello=Hello(run_id=stored.run.id)), "a second hello"
    )
    # A kind from a newer API (an unknown field): parsed, kept as unknown, and refused.
    hello = stored.hello.SerializeToString()
    newer = varint(1 << 3) + varint(seq) + length_delimited(15, b"\x08\x01")
    failure = await stored.refused_bytes("an unknown kind", hello, newer)
    assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["kind"]), str(failure)


# Payloads too deep or too large


def event_with_payload(seq: int, payload: bytes) -> bytes:
    """A StreamRunRequest with one event whose payload (a google.protobuf.Struct) is the raw
    ``payload``: built as bytes, since the library will not build what its decoder refuses.
    """
    event = varint(1 << 3) + varint(1) + length_delimited(3, b"deep") + length_delimited(5, payload)
    return varint(1 << 3) + varint(seq) + length_delimited(5, length_delimited(1, event))


async def test_payloads_nested_too_deep_are_refused_and_deep_enough_ones_kept(
    stored: StoredRun,
) -> None:
    hello = stored.hello.SerializeToString()
    seq = stored.next_seq
    for depth in (40, 10_000):
        deep = event_with_payload(seq, nested_struct(depth))
        failure = await stored.refused_bytes(f"{depth} levels", hello, deep)
        assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["request"]), str(failure)
        assert len(failure.message) < SHORT

    # As deep as the decoder allows is stored, and read back as sent.
    deep_enough = StreamRequest.FromString(event_with_payload(seq, nested_struct(30)))
    stream = await stored.streams.open(stored.server, stored.run.id)
    await stream.send(deep_enough)
    await stream.wait_acked(seq)
    listed = stored.server.telemetry.ListEvents(
        telemetry_pb2.ListEventsRequest(run_id=stored.run.id, filter='type = "deep"')
    ).events
    assert [e.event.payload for e in listed] == [deep_enough.events.events[0].payload]


# After the final status


async def test_messages_after_the_final_status_are_late_data_and_change_no_outcome(
    stored: StoredRun,
) -> None:
    """Documented: an ended run still stores its late points and events, exactly once; its
    final status, results and progress stay as the final message left them.
    """
    seq = stored.next_seq
    stream = await stored.streams.open(stored.server, stored.run.id)
    await stream.send(final(seq, telemetry_pb2.RUN_OUTCOME_COMPLETED, score=1))
    await stream.wait_acked(seq)
    late = Series(name="late", steps=[1, 2], values=[0.5, 0.25])
    after: Sequence[StreamRequest] = [
        metrics(seq + 1, late),
        StreamRequest(seq=seq + 2, progress=telemetry_pb2.Progress(tick=99, total=100)),
        final(seq + 3, telemetry_pb2.RUN_OUTCOME_FAILED, score=0),
        metrics(seq + 1, late),  # and a resend of the late batch
    ]
    await stream.send_all(after)
    await stream.wait_acked(seq + 3)
    assert await stream.finish() == grpc.StatusCode.OK
    run = stored.server.runs.GetRun(runs_pb2.GetRunRequest(id=stored.run.id)).run
    assert run.status == runs_pb2.RunStatus.RUN_STATUS_COMPLETED
    assert dict(run.results) == {"score": 1}
    assert run.current_tick == 0
    points = stored.db.checksums(stored.run.id)
    assert points.pop("late") == stored.streams.checksum(np.array([1, 2]), np.array([0.5, 0.25]))
    assert points == stored.checksums
