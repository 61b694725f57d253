"""What the client returns of metric points: one metric's history (``Client.metric_history``)
and a comparison of runs (``Client.compare_runs``), as numpy columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from simtrack.codec import decode_part_into
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
        """The points of one GetMetricHistory response, in any column encoding: decoded from
        the stored columns (COLUMN_ENCODING_STORED), read straight from the little-endian
        bytes (COLUMN_ENCODING_LITTLE_ENDIAN: the columns are then read-only views of the
        response's bytes), consecutive steps and a shared timestamp spelled out; or from the
        repeated fields.
        """
        if page.stored:
            n = _stored_count(page)
            steps, values, stamps = np.empty(n, np.int64), np.empty(n), np.empty(n)
            _decode_stored(page, (steps, values, stamps))
        elif page.values and not page.values_le:  # repeated fields (or a server before 0.2.0)
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
    def of_pages(cls, pages: Iterable[telemetry_pb2.GetMetricHistoryResponse]) -> MetricHistory:
        """The points of GetMetricHistory's pages, one after another (see `of_page`), each
        page written once into columns as long as the range's points (``range_count``): no
        list of pages to concatenate at the end. Stored columns are decoded in place there.
        """
        columns: tuple[npt.NDArray[Any], ...] = ()
        at, first = 0, None
        for page in pages:
            first = page if first is None else first
            read = None if page.stored else cls.of_page(page)
            end = at + (_stored_count(page) if read is None else len(read.values))
            if not columns or end > len(columns[0]):  # the first page; or points written since
                size = max(end, page.range_count) if page.next_page_token else end
                grown = [
                    np.empty(size, dtype=dtype) for dtype in (np.int64, np.float64, np.float64)
                ]
                for old, new in zip(columns, grown, strict=False):
                    new[:at] = old[:at]
                columns = tuple(grown)
            if read is None:
                steps, values, stamps = columns
                _decode_stored(page, (steps[at:end], values[at:end], stamps[at:end]))
            else:
                for column, part in zip(
                    columns, (read.steps, read.values, read.timestamps), strict=True
                ):
                    column[at:end] = part
            at = end
        if first is None:
            raise ValueError("no page of history")
        steps, values, stamps = (column[:at] for column in columns)
        return cls(steps, values, stamps, first.downsampled, first.range_count)


def _stored_count(page: telemetry_pb2.GetMetricHistoryResponse) -> int:
    return sum(part.take for part in page.stored)


def _decode_stored(
    page: telemetry_pb2.GetMetricHistoryResponse,
    out: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
) -> None:
    """A COLUMN_ENCODING_STORED page's points into ``out`` (steps, values, timestamps), each
    part decoded where it goes (``simtrack.codec``: the columns as the server stores them).
    """
    at = 0
    for part in page.stored:
        end = at + part.take
        decode_part_into(
            part.count,
            part.first_step,
            part.steps,
            part.values,
            part.timestamps,
            part.skip,
            (out[0][at:end], out[1][at:end], out[2][at:end]),
        )
        at = end


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
