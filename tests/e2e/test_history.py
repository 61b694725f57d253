"""Reading telemetry back over the API: ListMetrics, GetMetricHistory, ListEvents.

A real ``simtrack serve`` per test on SQLite and PostgreSQL (as the application role, so
row-level security applies to every read). Points go in through StreamRun; what comes back
is compared with what was sent, bit for bit, in history order: by step, points of equal step
in the order sent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from simtrack.client import MetricHistory
from simtrack.v1 import runs_pb2, telemetry_pb2
from tests.support import Refusal, Server, StartServer, StreamKit
from tests.support.data import Sent

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

Request = telemetry_pb2.StreamRunRequest
LITTLE_ENDIAN = telemetry_pb2.COLUMN_ENCODING_LITTLE_ENDIAN
STORED = telemetry_pb2.COLUMN_ENCODING_STORED
Array = np.ndarray[Any, Any]


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


def batch(seq: int, name: str, steps: Array, values: Array, stamps: Array | None = None) -> Request:
    series = telemetry_pb2.MetricSeries(name=name, steps=steps.tolist(), values=values.tolist())
    if stamps is not None:
        series.timestamps.extend(stamps.tolist())
    return Request(seq=seq, metrics=telemetry_pb2.MetricBatch(series=[series]))


def history(server: Server, **request: Any) -> telemetry_pb2.GetMetricHistoryResponse:
    return server.telemetry.GetMetricHistory(telemetry_pb2.GetMetricHistoryRequest(**request))


def read_all(
    server: Server, page_size: int, **request: Any
) -> tuple[Array, Array, Array, list[int]]:
    """Every page of a history: the concatenated columns and each page's length."""
    steps: list[int] = []
    values: list[float] = []
    stamps: list[float] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = history(server, page_size=page_size, page_token=token, **request)
        assert not page.downsampled
        if request.get("column_encoding") in (LITTLE_ENDIAN, STORED):
            assert not page.steps and not page.values and not page.timestamps
            if request["column_encoding"] == STORED:
                assert page.stored and not page.values_le
            read = MetricHistory.of_page(page)  # consecutive steps, a shared timestamp: once
            steps += read.steps.tolist()
            values += read.values.tolist()
            stamps += read.timestamps.tolist()
        else:
            assert not page.steps_le and not page.values_le and not page.timestamps_le
            steps += page.steps
            values += page.values
            stamps += page.timestamps
        sizes.append(len(steps) - sum(sizes))
        token = page.next_page_token
        if not token:
            return np.array(steps, "<i8"), np.array(values, "<f8"), np.array(stamps, "<f8"), sizes


def same_bits(a: Array, b: Array) -> bool:
    return a.tobytes() == b.tobytes()


async def test_history_pages_return_every_point_once_in_step_order(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    rng = np.random.default_rng(7)
    sent = Sent()
    messages = []
    for seq in range(1, 21):  # 20 batches of 1,000 contiguous steps, one timestamp each
        steps = np.arange((seq - 1) * 1000, seq * 1000, dtype="<i8")
        values = rng.normal(size=1000)
        stamps = np.full(1000, 1_700_000_000.0 + seq)
        messages.append(batch(seq, "loss", steps, values, stamps))
        sent.add(seq, steps, values, stamps)
    # Late, repeated and out-of-order steps, non-finite values, a timestamp per point.
    odd_steps = np.array([5, 3, 3, 19_999, 40_000, 5], dtype="<i8")
    odd_values = np.array([np.nan, np.inf, -np.inf, 1.5, -2.5, 0.0])
    odd_stamps = 1_800_000_000.0 + np.arange(6) * 0.25
    messages.append(batch(21, "loss", odd_steps, odd_values, odd_stamps))
    sent.add(21, odd_steps, odd_values, odd_stamps)
    stream = await streams.open(server, run.id)
    await stream.send_all(messages)
    await stream.wait_acked(21)

    want_steps, want_values, want_stamps = sent.columns()
    steps, values, stamps, sizes = read_all(server, 7000, run_id=run.id, metric="loss")
    assert sizes == [7000, 7000, 6006]
    assert same_bits(steps, want_steps)
    assert same_bits(values, want_values), "values bit for bit, NaN and Inf included"
    assert same_bits(stamps, want_stamps)
    first = history(server, run_id=run.id, metric="loss", page_size=10)
    assert first.range_count == 20_006
    assert list(first.steps) == [0, 1, 2, 3, 3, 3, 4, 5, 5, 5]
    # Equal steps come in the order sent: seq 4's step 3, then seq 21's two.
    assert np.isinf(first.values[4]) and np.isinf(first.values[5]) and first.values[5] < 0

    # Step ranges, in pages that end in the middle of repeated steps (3 and 5 at the head,
    # 19,999 at the tail) and of chunks (every 1,000 steps): pages of 3 over a head and a tail
    # across a chunk's end each, pages of 997 over the whole range.
    # Every column encoding: the repeated fields, each column's little-endian bytes, and the
    # columns as stored (parts of chunks, or raw columns where the points were put in order).
    for lo, hi, page_size in ((3, 1_005, 3), (18_995, 19_999, 3), (3, 19_999, 997)):
        want_steps, want_values, want_stamps = sent.columns(lo, hi)
        for encoding in (telemetry_pb2.COLUMN_ENCODING_UNSPECIFIED, LITTLE_ENDIAN, STORED):
            steps, values, stamps, sizes = read_all(
                server,
                page_size,
                run_id=run.id,
                metric="loss",
                start_step=lo,
                end_step=hi,
                column_encoding=encoding,
            )
            assert same_bits(steps, want_steps) and same_bits(values, want_values)
            assert same_bits(stamps, want_stamps)
            assert sizes[:-1] == [page_size] * (len(sizes) - 1)
        assert history(
            server, run_id=run.id, metric="loss", start_step=lo, end_step=hi
        ).range_count == (len(want_steps))
    only = history(server, run_id=run.id, metric="loss", start_step=40_000, end_step=40_000)
    assert (list(only.steps), list(only.values), only.range_count) == ([40_000], [-2.5], 1)
    none = history(server, run_id=run.id, metric="loss", start_step=50_000)
    assert (len(none.steps), none.range_count, none.next_page_token) == (0, 0, "")


async def test_read_metric_history_streams_the_pages_get_metric_history_returns(
    server: Server, streams: StreamKit, refusal: Refusal
) -> None:
    run = streams.new_run(server)
    rng = np.random.default_rng(11)
    messages = [
        batch(
            seq, "loss", np.arange((seq - 1) * 1000, seq * 1000, dtype="<i8"), rng.normal(size=1000)
        )
        for seq in range(1, 4)
    ]
    odd = np.array([7, 2_999, 7, 5_000], dtype="<i8")  # repeated and late steps
    messages.append(batch(4, "loss", odd, np.array([np.nan, np.inf, 1.5, -2.5])))
    stream = await streams.open(server, run.id)
    await stream.send_all(messages)
    await stream.wait_acked(4)

    def read(**request: Any) -> list[telemetry_pb2.GetMetricHistoryResponse]:
        asked = telemetry_pb2.ReadMetricHistoryRequest(run_id=run.id, metric="loss", **request)
        return [message.page for message in server.telemetry.ReadMetricHistory(asked)]

    for encoding in (telemetry_pb2.COLUMN_ENCODING_UNSPECIFIED, LITTLE_ENDIAN, STORED):
        where = {"start_step": 5, "end_step": 2_999, "column_encoding": encoding}
        pages: list[telemetry_pb2.GetMetricHistoryResponse] = []
        token = ""
        while not pages or token:
            pages.append(
                history(
                    server, run_id=run.id, metric="loss", page_size=700, page_token=token, **where
                )
            )
            token = pages[-1].next_page_token
        assert len(pages) == 5
        assert read(page_size=700, **where) == pages
        # Resumed from a message's token: the pages after it.
        assert read(page_size=700, page_token=pages[1].next_page_token, **where) == pages[2:]
        # 0: 100,000 points a message; the whole range in one.
        (whole,) = read(**where)
        assert whole.range_count == 2_998 and not whole.next_page_token
        one, paged = MetricHistory.of_pages([whole]), MetricHistory.of_pages(pages)
        assert same_bits(one.steps, paged.steps) and same_bits(one.values, paged.values)
        assert same_bits(one.timestamps, paged.timestamps) and len(one.steps) == 2_998
    assert read(start_step=6_000) == [telemetry_pb2.GetMetricHistoryResponse()]
    # A reader that stops after the first page: the server lets the rest go (the teardown
    # checks its log and that nothing it started outlives it) and serves on.
    abandoned = server.telemetry.ReadMetricHistory(
        telemetry_pb2.ReadMetricHistoryRequest(run_id=run.id, metric="loss", page_size=500)
    )
    assert len(next(abandoned).page.steps) == 500
    abandoned.cancel()
    assert len(read(page_size=1_000)) == 4

    def read_refused(request: telemetry_pb2.ReadMetricHistoryRequest) -> object:
        return list(server.telemetry.ReadMetricHistory(request))

    Read, invalid = telemetry_pb2.ReadMetricHistoryRequest, grpc.StatusCode.INVALID_ARGUMENT
    for request, code, fields in [
        (Read(run_id="not-a-uuid", metric="loss"), invalid, ["run_id"]),
        (Read(run_id=run.id, metric=""), invalid, ["metric"]),
        (Read(run_id=run.id, metric="nope"), grpc.StatusCode.NOT_FOUND, []),
        (Read(run_id=run.id, metric="loss", start_step=5, end_step=4), invalid, ["end_step"]),
        (Read(run_id=run.id, metric="loss", page_size=100_001), invalid, ["page_size"]),
        (Read(run_id=run.id, metric="loss", page_size=-1), invalid, ["page_size"]),
        (Read(run_id=run.id, metric="loss", page_token="garbage"), invalid, ["page_token"]),
        (
            Read(
                run_id=run.id,
                metric="loss",
                column_encoding=telemetry_pb2.ColumnEncoding.ValueType(3),
            ),
            invalid,
            ["column_encoding"],
        ),
    ]:
        assert refusal(read_refused, request) == (code, fields), request


async def test_downsampled_history_keeps_the_extremes(server: Server, streams: StreamKit) -> None:
    run = streams.new_run(server)
    rng = np.random.default_rng(3)
    values = rng.normal(size=100_000)
    values[54_321], values[7_777], values[90_000] = 1e6, -1e6, np.nan
    steps = np.arange(100_000, dtype="<i8")
    messages = [
        batch(i + 1, "price", steps[i * 1000 : (i + 1) * 1000], values[i * 1000 : (i + 1) * 1000])
        for i in range(100)
    ]
    stream = await streams.open(server, run.id)
    await stream.send_all(messages)
    await stream.wait_acked(100)

    view = history(server, run_id=run.id, metric="price", max_points=200)
    assert view.downsampled and view.range_count == 100_000 and view.next_page_token == ""
    got_steps = np.array(view.steps)
    assert 100 < len(got_steps) <= 200
    assert (np.diff(got_steps) > 0).all(), "in step order, each point once"
    assert same_bits(np.array(view.values), values[got_steps]), "only stored points"
    assert {54_321, 7_777} <= set(got_steps.tolist()), "the spike and the dip survive"
    # Every 1,000-step interval shows its own lowest and highest value.
    for start in range(0, 100_000, 1000):
        inside = (got_steps >= start) & (got_steps < start + 1000)
        chunk = values[start : start + 1000]
        assert set(np.array(view.values)[inside]) == {np.nanmin(chunk), np.nanmax(chunk)}

    part = history(
        server, run_id=run.id, metric="price", max_points=10, start_step=7_000, end_step=8_999
    )
    assert part.range_count == 2000 and len(part.steps) <= 10 and 7_777 in part.steps
    whole = history(
        server, run_id=run.id, metric="price", max_points=50, start_step=10, end_step=49
    )
    assert not whole.downsampled and list(whole.steps) == list(range(10, 50))
    # The same view as little-endian columns: the same points, bit for bit.
    packed = history(
        server, run_id=run.id, metric="price", max_points=200, column_encoding=LITTLE_ENDIAN
    )
    assert packed.downsampled and packed.range_count == 100_000 and not packed.steps
    read = MetricHistory.of_page(packed)
    assert same_bits(read.steps, got_steps) and same_bits(read.values, np.array(view.values))
    assert same_bits(read.timestamps, np.array(view.timestamps))


async def test_last_step_is_present_only_when_the_metric_has_a_finite_value(
    server: Server, streams: StreamKit
) -> None:
    """Metric.last_step (and WatchRun's LatestMetric.step) use presence: a metric whose only
    point is at step 0 has last_step 0; one with no finite value has none.
    """
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    zero = telemetry_pb2.MetricSeries(name="zero", steps=[0], values=[7.0])
    void = telemetry_pb2.MetricSeries(name="void", steps=[0, 3], values=[float("nan")] * 2)
    await stream.send(Request(seq=1, metrics=telemetry_pb2.MetricBatch(series=[zero, void])))
    await stream.wait_acked(1)

    listed = server.telemetry.ListMetrics(telemetry_pb2.ListMetricsRequest(run_id=run.id))
    by_name = {m.name: m for m in listed.metrics}
    assert by_name["zero"].HasField("last_step") and by_name["zero"].last_step == 0
    assert by_name["zero"].last_value == 7.0
    assert not by_name["void"].HasField("last_step") and by_name["void"].count == 2
    assert np.isnan(by_name["void"].last_value)

    watch = server.runs.WatchRun(runs_pb2.WatchRunRequest(id=run.id), timeout=20)
    try:
        latest = {m.name: m for m in next(iter(watch)).metrics}
    finally:
        watch.cancel()
    assert latest["zero"].HasField("step") and latest["zero"].step == 0
    assert not latest["void"].HasField("step")


async def test_list_metrics_gives_each_metric_with_its_summary(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    reward = telemetry_pb2.MetricSeries(
        name="reward",
        unit="USD",
        kind=telemetry_pb2.METRIC_KIND_COUNTER,
        steps=[1, 2, 3],
        values=[1.0, 5.0, 2.0],
    )
    loss = telemetry_pb2.MetricSeries(name="loss", steps=[10, 11], values=[0.5, float("nan")])
    await stream.send(Request(seq=1, metrics=telemetry_pb2.MetricBatch(series=[reward])))
    await stream.send(Request(seq=2, metrics=telemetry_pb2.MetricBatch(series=[loss])))
    await stream.wait_acked(2)

    listed = server.telemetry.ListMetrics(telemetry_pb2.ListMetricsRequest(run_id=run.id)).metrics
    assert [m.name for m in listed] == ["loss", "reward"], "by name"
    first = listed[1]
    assert (first.run_id, first.unit, first.kind) == (
        run.id,
        "USD",
        telemetry_pb2.METRIC_KIND_COUNTER,
    )
    assert (first.count, first.last_step, first.last_value, first.min, first.max) == (
        3,
        3,
        2.0,
        1.0,
        5.0,
    )
    assert first.HasField("create_time") and first.HasField("update_time")
    assert (listed[0].count, listed[0].last_step, listed[0].last_value) == (2, 10, 0.5)

    page = server.telemetry.ListMetrics(
        telemetry_pb2.ListMetricsRequest(run_id=run.id, page_size=1)
    )
    assert [m.name for m in page.metrics] == ["loss"] and page.next_page_token
    rest = server.telemetry.ListMetrics(
        telemetry_pb2.ListMetricsRequest(
            run_id=run.id, page_size=1, page_token=page.next_page_token
        )
    )
    assert [m.name for m in rest.metrics] == ["reward"] and not rest.next_page_token
    only = server.telemetry.ListMetrics(
        telemetry_pb2.ListMetricsRequest(run_id=run.id, filter='kind = "counter"')
    )
    assert [m.name for m in only.metrics] == ["reward"]


async def test_list_events_pages_in_the_order_sent(server: Server, streams: StreamKit) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    agent_id = "5f0c6a2e-0000-4000-8000-000000000001"
    events = [
        telemetry_pb2.Event(
            step=i,
            type=f"type-{i % 3}",
            agent_id=agent_id if i % 5 == 0 else "",
            payload=json_format.ParseDict({"i": i}, telemetry_pb2.Event().payload),
        )
        for i in range(250)
    ]
    await stream.send(Request(seq=1, events=telemetry_pb2.EventBatch(events=events[:100])))
    await stream.send(Request(seq=2, events=telemetry_pb2.EventBatch(events=events[100:])))
    await stream.wait_acked(2)

    seen: list[telemetry_pb2.StoredEvent] = []
    token = ""
    while True:
        page = server.telemetry.ListEvents(
            telemetry_pb2.ListEventsRequest(run_id=run.id, page_size=100, page_token=token)
        )
        seen += page.events
        token = page.next_page_token
        if not token:
            break
    assert [e.event.step for e in seen] == list(range(250))
    assert [(e.seq, e.position) for e in seen[99:101]] == [(1, 99), (2, 0)]
    assert [e.event.payload.fields["i"].number_value for e in seen] == list(range(250))
    assert all(e.event.HasField("time") for e in seen)

    typed = server.telemetry.ListEvents(
        telemetry_pb2.ListEventsRequest(run_id=run.id, page_size=1000, filter='type = "type-1"')
    )
    assert [e.event.step for e in typed.events] == list(range(1, 250, 3))
    by_agent = server.telemetry.ListEvents(
        telemetry_pb2.ListEventsRequest(
            run_id=run.id, page_size=1000, filter=f'agent_id = "{agent_id}" AND type = "type-0"'
        )
    )
    assert [e.event.step for e in by_agent.events] == list(range(0, 250, 15))


def at(nanos: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(nanos, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest)


def all_events(server: Server, run_id: str) -> list[telemetry_pb2.StoredEvent]:
    seen: list[telemetry_pb2.StoredEvent] = []
    token = ""
    while True:
        page = server.telemetry.ListEvents(
            telemetry_pb2.ListEventsRequest(run_id=run_id, page_size=1000, page_token=token)
        )
        seen += page.events
        if not (token := page.next_page_token):
            return seen


async def test_event_times_come_back_to_the_nanosecond(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """A batch of 1,000 events with distinct nanosecond times, some before 1970 and at both
    ends of what 64-bit nanoseconds hold, comes back exactly; an untimed event gets the
    server's time; a time that cannot be kept is refused naming the field.
    """
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    base = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
    jitter = np.random.default_rng(5).integers(1, 200, size=995)
    nanos = [base + i * 1_000_000 + int(j) for i, j in enumerate(jitter)]
    nanos += [0, -1, -1_500_000_001, -(2**63), 2**63 - 1]
    assert len(set(nanos)) == 1000 and all(n % 1000 for n in nanos if n)  # below a microsecond
    timed = [telemetry_pb2.Event(step=i, type="tick", time=at(n)) for i, n in enumerate(nanos)]
    await stream.send(Request(seq=1, events=telemetry_pb2.EventBatch(events=timed)))
    await stream.wait_acked(1)
    before = time.time_ns()
    untimed = telemetry_pb2.Event(step=1000, type="untimed")
    await stream.send(Request(seq=2, events=telemetry_pb2.EventBatch(events=[untimed])))
    await stream.wait_acked(2)
    after = time.time_ns()

    read = all_events(server, run.id)
    assert len(read) == 1001
    assert [(e.event.time.seconds, e.event.time.nanos) for e in read[:1000]] == [
        divmod(n, 1_000_000_000) for n in nanos
    ]
    assert before <= read[1000].event.time.ToNanoseconds() <= after
    stored = streams.database(database_url).rows(
        "select time_ns from events where run_id = :run order by seq, position", run=run.id
    )
    assert [r.time_ns for r in stored[:1000]] == nanos

    for bad, field in [
        (timestamp_pb2.Timestamp(seconds=5, nanos=1_000_000_000), "events.events[1].time.nanos"),
        (timestamp_pb2.Timestamp(seconds=5, nanos=-1), "events.events[1].time.nanos"),
        (timestamp_pb2.Timestamp(seconds=9_300_000_000), "events.events[1].time"),  # 2264
        (timestamp_pb2.Timestamp(seconds=-62_135_596_800), "events.events[1].time"),  # 0001
    ]:
        refused = streams.new_run(server)
        worker = await streams.open(server, refused.id)
        events = [untimed, telemetry_pb2.Event(type="x", time=bad)]
        await worker.send(Request(seq=1, events=telemetry_pb2.EventBatch(events=events)))
        assert await worker.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
        assert worker.bad_request_fields() == [field]
        assert streams.database(database_url).events(refused.id) == []


async def test_bad_reads_get_the_right_status_naming_the_field(
    server: Server, streams: StreamKit, refusal: Refusal
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    await stream.send(batch(1, "loss", np.arange(10, dtype="<i8"), np.ones(10)))
    await stream.wait_acked(1)
    missing_run = "00000000-0000-4000-8000-000000000000"
    token = history(server, run_id=run.id, metric="loss", page_size=3).next_page_token
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    not_found = grpc.StatusCode.NOT_FOUND
    History, Encoding = (
        telemetry_pb2.GetMetricHistoryRequest,
        telemetry_pb2.ColumnEncoding.ValueType,
    )
    cases = [
        (History(run_id="", metric="loss"), invalid, ["run_id"]),
        (History(run_id="not-a-uuid", metric="loss"), invalid, ["run_id"]),
        (History(run_id=missing_run, metric="loss"), not_found, []),
        (History(run_id=run.id, metric=""), invalid, ["metric"]),
        (History(run_id=run.id, metric="nope"), not_found, []),
        (History(run_id=run.id, metric="loss", start_step=5, end_step=4), invalid, ["end_step"]),
        (History(run_id=run.id, metric="loss", max_points=1), invalid, ["max_points"]),
        (History(run_id=run.id, metric="loss", max_points=100_001), invalid, ["max_points"]),
        (History(run_id=run.id, metric="loss", page_size=100_001), invalid, ["page_size"]),
        (History(run_id=run.id, metric="loss", page_size=-1), invalid, ["page_size"]),
        (History(run_id=run.id, metric="loss", page_token="garbage"), invalid, ["page_token"]),
        (
            History(run_id=run.id, metric="loss", column_encoding=Encoding(3)),
            invalid,
            ["column_encoding"],
        ),
        (
            History(run_id=run.id, metric="loss", column_encoding=Encoding(-1)),
            invalid,
            ["column_encoding"],
        ),
        (
            History(run_id=run.id, metric="loss", page_token=token, start_step=1),
            invalid,
            ["page_token"],
        ),
        (
            History(run_id=run.id, metric="loss", page_token=token, max_points=5),
            invalid,
            ["page_token"],
        ),
    ]
    for request, code, fields in cases:
        assert refusal(server.telemetry.GetMetricHistory, request) == (code, fields), request

    Metrics, Events = telemetry_pb2.ListMetricsRequest, telemetry_pb2.ListEventsRequest
    list_cases: list[tuple[Any, Message, grpc.StatusCode, list[str]]] = [
        (server.telemetry.ListMetrics, Metrics(run_id=missing_run), not_found, []),
        (
            server.telemetry.ListMetrics,
            Metrics(run_id=run.id, filter='unit = "x"'),
            invalid,
            ["filter"],
        ),
        (
            server.telemetry.ListMetrics,
            Metrics(run_id=run.id, page_size=1001),
            invalid,
            ["page_size"],
        ),
        (server.telemetry.ListEvents, Events(run_id=""), invalid, ["run_id"]),
        (server.telemetry.ListEvents, Events(run_id=missing_run), not_found, []),
        (
            server.telemetry.ListEvents,
            Events(run_id=run.id, filter="seq = 1"),
            invalid,
            ["filter"],
        ),
        (server.telemetry.ListEvents, Events(run_id=run.id, order_by="seq"), invalid, ["order_by"]),
        (
            server.telemetry.ListMetrics,
            Metrics(run_id=run.id, order_by="kind"),
            invalid,
            ["order_by"],
        ),
        (
            server.telemetry.ListEvents,
            Events(run_id=run.id, page_token=token),
            invalid,
            ["page_token"],
        ),
    ]
    for call, list_request, code, fields in list_cases:
        assert refusal(call, list_request) == (code, fields), list_request
    # Nothing stored was touched, and the server still serves.
    assert list(history(server, run_id=run.id, metric="loss").steps) == list(range(10))


def test_the_python_client_reads_back_what_its_worker_logged(
    server: Server, tmp_path: Path
) -> None:
    from simtrack.client import Client

    with Client(server.address) as client:
        agent = client.create_agent("reader")
        experiment = client.create_experiment("reads", agent.id, "tier0-tutorial")
        run = client.create_run(experiment.id)
        with client.worker(run.id, spool_dir=tmp_path / "spool") as worker:
            for step in range(25_000):
                worker.log_metrics(step, {"profit": step * 0.5, "price": 100.0 - step % 7})
                if step % 1000 == 0:
                    worker.log_event(step, "restock", {"step": step})

        assert [m.name for m in client.list_metrics(run.id)] == ["price", "profit"]
        whole = client.metric_history(run.id, "profit")  # one page of up to 100,000
        profit = client.metric_history(run.id, "profit", page_size=10_000)  # three pages
        for read in (whole, profit):
            assert read.steps.tolist() == list(range(25_000)) and read.range_count == 25_000
            assert read.values.tolist() == [step * 0.5 for step in range(25_000)]
            assert not read.downsampled and len(read.timestamps) == 25_000
        view = client.metric_history(
            run.id, "price", start_step=100, end_step=20_099, max_points=40
        )
        assert view.downsampled and view.range_count == 20_000 and len(view.steps) <= 40
        # A read longer than the client's timeout goes on where its call was cut.
        with Client(server.address, timeout=0.25) as hurried:
            started = time.monotonic()
            resumed = hurried.metric_history(run.id, "profit", page_size=10)  # 2,500 pages
            took = time.monotonic() - started
        assert resumed.steps.tolist() == list(range(25_000)), "each point once, in order"
        assert resumed.values.tolist() == whole.values.tolist()
        assert took > 0.5, f"{took:.3f} s: in one call, so never cut short"

        assert set(view.values.tolist()) == {94.0, 100.0}
        events = list(client.list_events(run.id, filter='type = "restock"'))
        assert [e.event.step for e in events] == list(range(0, 25_000, 1000))
