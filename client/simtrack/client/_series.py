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

    @classmethod
    def of_pages(cls, pages: list[telemetry_pb2.GetMetricHistoryResponse]) -> MetricHistory:
        """The points of GetMetricHistory's pages, one after another: each page's columns
        read straight from its little-endian bytes (COLUMN_ENCODING_LITTLE_ENDIAN), or from
        its repeated fields where a server that predates the encoding sent those.
        """
        columns = [_columns(page) for page in pages]
        return cls(
            steps=np.concatenate([steps for steps, _, _ in columns]),
            values=np.concatenate([values for _, values, _ in columns]),
            timestamps=np.concatenate([stamps for _, _, stamps in columns]),
            downsampled=pages[0].downsampled,
            range_count=pages[0].range_count,
        )


Columns = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _columns(page: telemetry_pb2.GetMetricHistoryResponse) -> Columns:
    if page.steps and not page.steps_le:
        return (
            np.array(page.steps, dtype=np.int64),
            np.array(page.values, dtype=np.float64),
            np.array(page.timestamps, dtype=np.float64),
        )
    return (
        np.frombuffer(page.steps_le, dtype="<i8").astype(np.int64, copy=False),
        np.frombuffer(page.values_le, dtype="<f8").astype(np.float64, copy=False),
        np.frombuffer(page.timestamps_le, dtype="<f8").astype(np.float64, copy=False),
    )


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
