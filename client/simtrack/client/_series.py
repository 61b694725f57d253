"""What the client returns of metric points: one metric's history (``Client.metric_history``)
and a comparison of runs (``Client.compare_runs``), as numpy columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simtrack.v1 import telemetry_pb2

__all__ = ["ComparedSeries", "Comparison", "MetricHistory"]


@dataclass(frozen=True)
class MetricHistory:
    """A metric's points as parallel columns, in step order (see Client.metric_history)."""

    steps: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    timestamps: npt.NDArray[np.float64]  # Unix seconds
    downsampled: bool  # some points of the range were left out (max_points)
    range_count: int  # stored points in the range, shown or not


@dataclass(frozen=True)
class ComparedSeries(MetricHistory):
    """One run's points of one metric in a comparison, on the metric's shared step grid."""

    run_id: str
    metric: str
    unit: str
    missing: bool  # the run has no such metric (the columns are empty)

    @classmethod
    def of(cls, series: telemetry_pb2.ComparedSeries) -> ComparedSeries:
        return cls(
            steps=np.array(series.steps, dtype=np.int64),
            values=np.array(series.values, dtype=np.float64),
            timestamps=np.array(series.timestamps, dtype=np.float64),
            downsampled=series.downsampled,
            range_count=series.range_count,
            run_id=series.run_id,
            metric=series.metric,
            unit=series.unit,
            missing=series.missing,
        )


@dataclass(frozen=True)
class Comparison:
    """Some metrics of several runs (see Client.compare_runs)."""

    runs: list[telemetry_pb2.ComparedRun]  # in the order asked
    grids: dict[str, telemetry_pb2.CompareGrid]  # by metric, in the order asked
    series: list[ComparedSeries]  # each run's metrics in the order asked, run after run
    max_points: int  # per series, as the server applied it

    @classmethod
    def of(cls, response: telemetry_pb2.CompareRunsResponse) -> Comparison:
        return cls(
            runs=list(response.runs),
            grids={grid.metric: grid for grid in response.grids},
            series=[ComparedSeries.of(s) for s in response.series],
            max_points=response.max_points,
        )

    def of_metric(self, metric: str) -> list[ComparedSeries]:
        """The runs' series of ``metric``, in the order of the runs."""
        return [s for s in self.series if s.metric == metric]
