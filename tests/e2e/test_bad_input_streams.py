"""Bad input on TelemetryService.StreamRun end to end, on SQLite and PostgreSQL: stream messages
that are not protobuf, and values protobuf or the database cannot take. The stream ends with
INVALID_ARGUMENT naming the field, and what was stored before stays.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from google.protobuf import timestamp_pb2

from simtrack.v1 import telemetry_pb2
from tests.e2e.bad_input import (
    GARBAGE,
    INVALID_ARGUMENT,
    Failure,
    StreamRequest,
    failure_from,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Server, StreamKit


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
    INVALID_ARGUMENT naming the field (it never succeeds on a resend); stored data stays."""
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
