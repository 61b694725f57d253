"""A decoded series' summaries (count, min, max, latest) skip non-finite values of any kind.

The summaries feed the leaderboard, the success criteria and WatchRun; an infinity that slipped
into them would rank a run first or pass a criterion it never met. NaN is the well-trodden case
(tests/e2e/test_streams.py); a series with infinities and no NaN takes another branch.
"""

from __future__ import annotations

import math

import pytest

from simtrack.server.api.telemetry import decode
from simtrack.v1 import telemetry_pb2 as tpb

INF = math.inf


def summary(steps: list[int], values: list[float]) -> tuple[object, ...]:
    message = tpb.StreamRunRequest(
        seq=1,
        metrics=tpb.MetricBatch(series=[tpb.MetricSeries(name="m", steps=steps, values=values)]),
    )
    (chunk,) = decode(message).metrics
    assert chunk.n == len(values)
    return chunk.vmin, chunk.vmax, chunk.last_value_step, chunk.last_value


@pytest.mark.parametrize(
    ("steps", "values", "expected"),
    [
        # (min, max, step of the latest finite value, that value)
        ([0, 1, 2, 3], [1.0, INF, -INF, 2.0], (1.0, 2.0, 3, 2.0)),
        ([0, 1, 2], [3.0, 1.0, INF], (1.0, 3.0, 1, 1.0)),  # the top step is infinite
        ([0, 1, 2], [-INF, 5.0, -INF], (5.0, 5.0, 1, 5.0)),
        ([7, 3, 5], [INF, 4.0, -1.0], (-1.0, 4.0, 5, -1.0)),  # steps out of order
        ([0, 1], [INF, -INF], (None, None, None, None)),  # nothing finite: no summary
        ([5, 3, 9], [2.0, 5.0, 1.0], (1.0, 5.0, 9, 1.0)),  # all finite: the fast path
        ([0, 1, 2], [1.0, math.nan, INF], (1.0, 1.0, 0, 1.0)),
    ],
)
def test_summaries_keep_only_finite_values(
    steps: list[int], values: list[float], expected: tuple[object, ...]
) -> None:
    assert summary(steps, values) == expected
