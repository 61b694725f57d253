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
    def of_page(cls, page: telemetry_pb2.GetMetricHistoryResponse) -> MetricHistory:
        """The points of one GetMetricHistory response, in either column encoding: read
        straight from the little-endian bytes (COLUMN_ENCODING_LITTLE_ENDIAN), consecutive
        steps and a shared timestamp spelled out, or from the repeated fields.
        """
        if page.values and not page.values_le:  # repeated fields (or a server before 0.2.0)
            steps = np.array(page.steps, dtype=np.int64)
            values = np.array(page.values, dtype=np.float64)
            stamps = np.array(page.timestamps, dtype=np.float64)
        else:
            values = np.frombuffer(page.values_le, dtype="<f8").astype(np.float64, copy=False)
            n = len(values)
            if page.steps_le:
                steps = np.frombuffer(page.steps_le, dtype="<i8").astype(np.int64, copy=False)
            else:  # first_step + arange: arange(first_step, ...) overflows near int64's top
                steps = page.first_step + np.arange(n, dtype=np.int64)
            stamps = np.frombuffer(page.timestamps_le, dtype="<f8").astype(np.float64, copy=False)
            if len(stamps) == 1 and n > 1:
                stamps = np.full(n, stamps[0])
        if not len(steps) == len(values) == len(stamps):
            raise ValueError(
                f"a history page of {len(steps)} steps, {len(values)} values and"
                f" {len(stamps)} timestamps"
            )
        return cls(steps, values, stamps, page.downsampled, page.range_count)

    @classmethod
    def of_pages(cls, pages: list[telemetry_pb2.GetMetricHistoryResponse]) -> MetricHistory:
        """The points of GetMetricHistory's pages, one after another (see `of_page`)."""
        read = [cls.of_page(page) for page in pages]
        return cls(
            steps=np.concatenate([p.steps for p in read]),
            values=np.concatenate([p.values for p in read]),
            timestamps=np.concatenate([p.timestamps for p in read]),
            downsampled=pages[0].downsampled,
            range_count=pages[0].range_count,
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
