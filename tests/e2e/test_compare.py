"""CompareRuns over the API, on SQLite and PostgreSQL (as the application role, so row-level
security applies): the same points as GetMetricHistory for the same range and max_points when
the grid is the same (one run, or runs spanning the same steps), runs of different step ranges
lined up on one grid per metric, and bad input refused naming the field.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from simtrack.v1 import telemetry_pb2
from tests.support import Refusal, Server, StartServer, StreamKit
from tests.support.bad_input import failure_of
from tests.support.data import Sent

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

Array = np.ndarray[Any, Any]
Compare = telemetry_pb2.CompareRunsRequest
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


async def stream_run(
    server: Server, streams: StreamKit, run_id: str, metrics: dict[str, Array], seed: int
) -> dict[str, Sent]:
    """Each metric's points in batches of 500, with NaN and ±Inf among the values."""
    rng = np.random.default_rng(seed)
    sent = {name: Sent() for name in metrics}
    messages = []
    for k in range(max(-(-len(s) // 500) for s in metrics.values())):
        series = []
        for name, all_steps in metrics.items():
            steps = all_steps[k * 500 : (k + 1) * 500]
            if not len(steps):
                continue
            values = rng.normal(size=len(steps)) * 10
            values[rng.integers(len(steps), size=3)] = [np.nan, np.inf, -np.inf]
            stamps = 1.7e9 + steps * 0.25
            sent[name].add(k + 1, steps, values, stamps)
            series.append(
                telemetry_pb2.MetricSeries(
                    name=name,
                    unit="USD" if name == "profit" else "",
                    steps=steps.tolist(),
                    values=values.tolist(),
                    timestamps=stamps.tolist(),
                )
            )
        messages.append(
            telemetry_pb2.StreamRunRequest(
                seq=k + 1, metrics=telemetry_pb2.MetricBatch(series=series)
            )
        )
    stream = await streams.open(server, run_id)
    await stream.send_all(messages)
    await stream.wait_acked(len(messages))
    return sent


def same_bits(got: Any, want: Any, dtype: str) -> bool:
    return np.array(got, dtype=dtype).tobytes() == np.array(want, dtype=dtype).tobytes()


def same_points(series: telemetry_pb2.ComparedSeries, history: Any) -> bool:
    return (
        same_bits(series.steps, history.steps, "<i8")
        and same_bits(series.values, history.values, "<f8")
        and same_bits(series.timestamps, history.timestamps, "<f8")
        and (series.range_count, series.downsampled) == (history.range_count, history.downsampled)
    )


async def test_compared_runs_show_the_points_of_their_histories(
    server: Server, streams: StreamKit
) -> None:
    runs = [streams.new_run(server) for _ in range(3)]
    a, b, c = (r.id for r in runs)
    steps = np.arange(6000, dtype="<i8")
    await stream_run(server, streams, a, {"profit": steps, "stock": steps[::3]}, 1)
    await stream_run(server, streams, b, {"profit": steps}, 2)  # a's span, no stock
    late = await stream_run(server, streams, c, {"profit": np.arange(2000, 9000, 2)}, 3)

    def history(run_id: str, **asked: Any) -> telemetry_pb2.GetMetricHistoryResponse:
        request = telemetry_pb2.GetMetricHistoryRequest(run_id=run_id, metric="profit", **asked)
        return server.telemetry.GetMetricHistory(request)

    for bounds in ({}, {"start_step": 1000, "end_step": 4321}, {"start_step": 5990}):
        for max_points in (2, 301, 1000, 20_000):
            asked = {**bounds, "max_points": max_points}
            for run_id in a, c:  # one run: its own grid
                found = server.telemetry.CompareRuns(
                    Compare(run_ids=[run_id], metrics=["profit"], **asked)
                )
                (series,) = found.series
                assert same_points(series, history(run_id, **asked)), (run_id, asked)
            # a and b span the same steps: the shared grid is each one's own.
            found = server.telemetry.CompareRuns(
                Compare(run_ids=[a, b], metrics=["profit"], **asked)
            )
            for series, run_id in zip(found.series, (a, b), strict=True):
                assert series.run_id == run_id and same_points(series, history(run_id, **asked))

    # Runs of different step ranges: one grid per metric over all of them.
    found = server.telemetry.CompareRuns(
        Compare(run_ids=[c, a, b], metrics=["stock", "profit"], max_points=400)
    )
    assert found.max_points == 400
    assert [(r.run_id, r.run_number, r.experiment_name) for r in found.runs] == [
        (run.id, 1, "streams") for run in (runs[2], runs[0], runs[1])
    ]
    grids = {g.metric: (g.start_step, g.end_step, g.intervals) for g in found.grids}
    assert grids == {"stock": (0, 5997, 200), "profit": (0, 8998, 200)}
    by_run = {(s.run_id, s.metric): s for s in found.series}
    assert [(s.run_id, s.metric) for s in found.series] == [
        (r, m) for r in (c, a, b) for m in ("stock", "profit")
    ]
    assert by_run[c, "stock"].missing and not by_run[c, "stock"].steps
    assert by_run[b, "stock"].missing and by_run[a, "stock"].unit == ""
    width = (8998 + 1) / 200
    for run_id in c, a, b:
        series = by_run[run_id, "profit"]
        assert series.unit == "USD" and series.downsampled and len(series.steps) <= 400
        intervals = (np.array(series.steps) / width).astype(int)
        assert np.bincount(intervals).max() <= 2, "at most a min and a max per grid interval"
    # c's points from its own step on, each interval with its own extremes (NaN skipped).
    shown = by_run[c, "profit"]
    want_steps, want_values, _ = late["profit"].columns()
    for k in np.unique((want_steps / width).astype(int)):
        inside = (want_steps / width).astype(int) == k
        got = np.array(shown.values)[(np.array(shown.steps) / width).astype(int) == k]
        assert set(got.tolist()) == {np.nanmin(want_values[inside]), np.nanmax(want_values[inside])}


async def test_bad_comparisons_are_refused_naming_the_field(
    server: Server, streams: StreamKit, refusal: Refusal
) -> None:
    run = streams.new_run(server)
    other = streams.new_run(server)
    await stream_run(server, streams, run.id, {"loss": np.arange(10, dtype="<i8")}, 1)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(101)]
    cases: list[tuple[Compare, list[str]]] = [
        (Compare(metrics=["loss"]), ["run_ids"]),
        (Compare(run_ids=ids, metrics=["loss"]), ["run_ids"]),
        (Compare(run_ids=[run.id, other.id, run.id], metrics=["loss"]), ["run_ids[2]"]),
        (Compare(run_ids=[run.id, "not-a-uuid"], metrics=["loss"]), ["run_ids[1]"]),
        (Compare(run_ids=[run.id]), ["metrics"]),
        (Compare(run_ids=[run.id], metrics=["loss", "loss"]), ["metrics[1]"]),
        (Compare(run_ids=[run.id], metrics=[f"m{i}" for i in range(21)]), ["metrics"]),
        (Compare(run_ids=[run.id], metrics=["loss", " "]), ["metrics[1]"]),
        (Compare(run_ids=[run.id], metrics=["loss"], start_step=5, end_step=4), ["end_step"]),
        (Compare(run_ids=[run.id], metrics=["loss"], max_points=1), ["max_points"]),
        (Compare(run_ids=[run.id], metrics=["loss"], max_points=-5), ["max_points"]),
        (Compare(run_ids=[run.id], metrics=["loss"], max_points=100_001), ["max_points"]),
        (
            Compare(run_ids=ids[:100], metrics=[f"m{i}" for i in range(20)], max_points=251),
            ["max_points"],
        ),
    ]
    for request, fields in cases:
        assert refusal(server.telemetry.CompareRuns, request) == (invalid, fields), request

    for request, field, name in [
        (Compare(run_ids=[run.id, UNKNOWN], metrics=["loss"]), "run_ids[1]", UNKNOWN),
        (Compare(run_ids=[run.id, other.id], metrics=["loss", "nope"]), "metrics[1]", "nope"),
    ]:
        failure = failure_of(lambda r=request: server.telemetry.CompareRuns(r))  # type: ignore[misc]
        assert failure.code == grpc.StatusCode.NOT_FOUND, failure
        assert failure.resource is not None, failure
        assert failure.resource.resource_name == name and field in failure.message, failure
        assert failure.resource.description == f"field {field}", failure
    # The server still serves, and a run without the metric is no error: an empty series.
    found = server.telemetry.CompareRuns(Compare(run_ids=[other.id, run.id], metrics=["loss"]))
    assert [s.missing for s in found.series] == [True, False]
    assert list(found.series[1].steps) == list(range(10)) and found.max_points == 1000
