"""The worker helper's packing: buffered columns and events -> StreamRunRequest bodies.

Pure functions, tested without threads, spool or server: batch limits, chunk order, units,
bad points left out and reported, event batches by count and size, the messages' validation
and the final status a run ends with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from google.protobuf import json_format, struct_pb2

from simtrack.client.worker import _packing
from simtrack.client.worker._packing import Column
from simtrack.errors import InvalidArgument
from simtrack.v1 import telemetry_pb2 as tm


def _column(steps: list[int], values: list[float] | None = None) -> Column:
    col = Column()
    col.steps = list(steps)
    col.values = list(values) if values is not None else [float(s) for s in steps]
    col.times = [1000.0 + s for s in steps]
    return col


def _pack(
    cols: dict[str, Column],
    units: Mapping[str, tuple[str, int]] | None = None,
    *,
    per_series: int = 1000,
    max_series: int = 10,
    max_points: int = 100_000,
) -> tuple[list[tm.StreamRunRequest], list[int], list[InvalidArgument]]:
    messages, rejected = _packing.pack_metrics(
        cols,
        units or {},
        points_per_series=per_series,
        max_series=max_series,
        max_points=max_points,
    )
    assert all(kind == "metrics" for kind, _, _ in messages)
    requests = [tm.StreamRunRequest.FromString(body) for _, _, body in messages]
    for request, (_, points, _) in zip(requests, messages, strict=True):
        assert points == sum(len(s.values) for s in request.metrics.series)
        assert request.seq == 0  # the spool numbers it
    return requests, [points for _, points, _ in messages], rejected


def _series(request: tm.StreamRunRequest) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.steps)) for s in request.metrics.series]


def test_nothing_buffered_packs_nothing() -> None:
    assert _packing.pack_metrics({}, {}, points_per_series=10, max_series=10, max_points=100) == (
        [],
        [],
    )
    assert _packing.pack_events([], max_events=10) == []


def test_one_batch_holds_every_metric_with_its_columns_and_unit() -> None:
    cols = {"profit": _column([0, 1, 2]), "stock": _column([0, 1, 2], [5.0, 4.0, 3.0])}
    units = {"profit": ("USD", tm.METRIC_KIND_COUNTER)}
    [request], points, rejected = _pack(cols, units)
    assert points == [6] and rejected == []
    profit, stock = request.metrics.series
    assert (profit.name, profit.unit, profit.kind) == ("profit", "USD", tm.METRIC_KIND_COUNTER)
    assert (stock.unit, stock.kind) == ("", tm.METRIC_KIND_UNSPECIFIED)
    assert list(stock.steps) == [0, 1, 2] and list(stock.values) == [5.0, 4.0, 3.0]
    assert list(stock.timestamps) == [1000.0, 1001.0, 1002.0]


def test_long_series_go_chunk_by_chunk_across_the_metrics() -> None:
    cols = {"a": _column(list(range(5))), "b": _column(list(range(3)))}
    requests, points, _ = _pack(cols, per_series=2)
    # A metric appears once per batch: chunk k of every metric, then chunk k + 1.
    assert [_series(r) for r in requests] == [
        [("a", [0, 1]), ("b", [0, 1])],
        [("a", [2, 3]), ("b", [2])],
        [("a", [4])],
    ]
    assert points == [4, 3, 1]


@pytest.mark.parametrize(
    ("max_series", "max_points", "expected"),
    [
        (2, 100, [["m0", "m1"], ["m2", "m3"], ["m4"]]),
        (10, 9, [["m0", "m1", "m2"], ["m3", "m4"]]),  # 3 points each: a 4th makes 12 > 9
    ],
)
def test_a_batch_is_cut_at_its_series_and_points_limits(
    max_series: int, max_points: int, expected: list[list[str]]
) -> None:
    cols = {f"m{i}": _column([0, 1, 2]) for i in range(5)}
    requests, _, _ = _pack(cols, max_series=max_series, max_points=max_points)
    assert [[name for name, _ in _series(r)] for r in requests] == expected


def test_points_that_are_not_numbers_are_left_out_and_reported() -> None:
    col = Column()
    col.steps = [0, True, 2, 3]
    col.values = [1.0, 2.0, "3", 4.0]  # type: ignore[list-item]
    col.times = [10.0, 11.0, 12.0, 13.0]
    [request], points, rejected = _pack({"m": col, "ok": _column([0])})
    assert _series(request) == [("m", [0, 3]), ("ok", [0])]
    assert points == [3]
    assert len(rejected) == 2
    assert [v.field for error in rejected for v in error.violations] == ["metrics.series"] * 2
    assert "step True" in rejected[0].message and "value '3'" in rejected[1].message


def test_a_series_of_bad_points_only_is_dropped() -> None:
    col = Column()
    col.steps, col.values, col.times = [0], [None], [1.0]  # type: ignore[list-item]
    requests, points, rejected = _pack({"bad": col})
    assert (requests, points, len(rejected)) == ([], [], 1)
    requests, _, rejected = _pack({"bad": col, "good": _column([1])})
    assert [_series(r) for r in requests] == [[("good", [1])]] and len(rejected) == 1


def test_clean_points_keeps_the_numbers_as_the_proto_stores_them() -> None:
    steps, values, times, bad = _packing.clean_points(
        "m", [1, 2**70, 3], [1, 2.5, float("inf")], [1.0, 2.0, 3.0]
    )
    assert (steps, values, times) == ([1, 3], [1.0, float("inf")], [1.0, 3.0])
    assert len(bad) == 1 and "step 1180591620717411303424" in bad[0].message


def _event(size: int = 0, step: int = 0) -> tm.Event:
    return _packing.event(step, "tick", {"pad": "x" * size} if size else None, None, 5.0)


def test_event_batches_are_cut_by_count() -> None:
    messages = _packing.pack_events([_event(step=i) for i in range(5)], max_events=2)
    assert [(kind, count) for kind, count, _ in messages] == [
        ("events", 2),
        ("events", 2),
        ("events", 1),
    ]
    steps = [
        [e.step for e in tm.StreamRunRequest.FromString(body).events.events]
        for _, _, body in messages
    ]
    assert steps == [[0, 1], [2, 3], [4]]


def test_event_batches_are_cut_by_size_but_never_empty() -> None:
    big = [_event(size=600) for _ in range(3)]
    messages = _packing.pack_events(big, max_events=100, max_bytes=1000)
    assert [count for _, count, _ in messages] == [1, 1, 1]  # each alone is over half the limit
    assert len(_packing.pack_events(big, max_events=100, max_bytes=10)) == 3


def test_an_event_is_validated_when_logged() -> None:
    event = _packing.event(3, "buy", {"price": 9.99}, "agent-1", 12.25)
    assert (event.step, event.type, event.agent_id) == (3, "buy", "agent-1")
    assert (event.time.seconds, event.time.nanos) == (12, 250_000_000)
    assert json_format.MessageToDict(event.payload) == {"price": 9.99}
    for bad_type in ("", "x" * 101, 7):
        with pytest.raises(InvalidArgument, match="events.events.type"):
            _packing.event(0, bad_type, None, None, 0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="events.events.payload: must be a JSON object"):
        _packing.event(0, "t", {"x": object()}, None, 0.0)
    with pytest.raises(InvalidArgument, match="limited to 1 MiB"):
        _packing.event(0, "t", {"x": "y" * (1024 * 1024)}, None, 0.0)


def test_progress_and_metric_definitions_are_validated() -> None:
    assert _packing.progress(5, 10, 50.0) == tm.Progress(tick=5, total=10, percent=50.0)
    for bad in ((-1, 0, 0.0), (0, -1, 0.0), (0, 0, 100.5)):
        with pytest.raises(InvalidArgument, match="progress"):
            _packing.progress(*bad)
    assert _packing.metric_definition("m", "counter") == tm.METRIC_KIND_COUNTER
    with pytest.raises(InvalidArgument, match="metrics.series.kind"):
        _packing.metric_definition("m", "histogram")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="metrics.series.name"):
        _packing.metric_definition("", "gauge")


def test_timestamps_truncate_to_the_nanosecond_and_never_reach_the_next_second() -> None:
    stamp = _packing.timestamp(1.5)
    assert (stamp.seconds, stamp.nanos) == (1, 500_000_000)
    stamp = _packing.timestamp(-0.25)
    assert (stamp.seconds, stamp.nanos) == (-1, 750_000_000)
    assert _packing.timestamp(2.9999999999).nanos <= 999_999_999


def test_the_other_messages_are_serialized_requests_without_a_seq() -> None:
    kind, points, body = _packing.progress_message(tm.Progress(tick=1))
    assert (kind, points) == ("progress", 0)
    assert tm.StreamRunRequest.FromString(body).progress.tick == 1
    final = tm.FinalStatus(outcome=tm.RUN_OUTCOME_COMPLETED)
    kind, points, body = _packing.status_message(final)
    assert (kind, points, tm.StreamRunRequest.FromString(body).status) == ("status", 0, final)
    hello = tm.StreamRunRequest.FromString(_packing.hello("run", "w", 7, replay=True)).hello
    assert (hello.run_id, hello.worker_id, hello.last_acked_seq, hello.replay) == (
        "run",
        "w",
        7,
        True,
    )
    assert tm.StreamRunRequest.FromString(_packing.HEARTBEAT).HasField("heartbeat")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("exc", "cancelled", "outcome", "message"),
    [
        (None, False, tm.RUN_OUTCOME_COMPLETED, ""),
        (None, True, tm.RUN_OUTCOME_STOPPED, ""),
        (KeyboardInterrupt(), False, tm.RUN_OUTCOME_STOPPED, "KeyboardInterrupt"),
        (asyncio.CancelledError(), False, tm.RUN_OUTCOME_STOPPED, "CancelledError"),
        (ValueError("boom"), False, tm.RUN_OUTCOME_FAILED, "ValueError: boom"),
        (RuntimeError(), True, tm.RUN_OUTCOME_FAILED, "RuntimeError"),
    ],
)
def test_the_final_status_says_how_the_run_ended(
    exc: BaseException | None, cancelled: bool, outcome: int, message: str
) -> None:
    results = struct_pb2.Struct()
    results.update({"score": 1.0})
    caught = None if exc is None else _raised(exc)
    final = _packing.final_status(caught, cancel_requested=cancelled, results=results)
    assert (final.outcome, final.error_message) == (outcome, message)
    assert json_format.MessageToDict(final.results) == {"score": 1.0}
    details = json_format.MessageToDict(final.error_details)
    if outcome == tm.RUN_OUTCOME_FAILED:
        assert details["type"] == f"builtins.{type(exc).__name__}"
        assert "_raised" in details["traceback"]
    else:
        assert details == {}


def test_a_failure_is_cut_to_the_detail_limit() -> None:
    final = _packing.final_status(
        _raised(ValueError("x" * 20_000)), cancel_requested=False, results=None
    )
    assert len(final.error_message) == _packing.MAX_ERROR_DETAIL_CHARS
    trace = json_format.MessageToDict(final.error_details)["traceback"]
    assert trace.endswith("x" * 100 + "\n")
    assert not final.HasField("results")
