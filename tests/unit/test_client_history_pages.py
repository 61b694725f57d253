"""MetricHistory.of_pages: pages copied into columns as long as the range (range_count), grown
when points were written between pages, the same points as the pages one after another.
"""

from __future__ import annotations

import numpy as np
import pytest

from simtrack.client import MetricHistory
from simtrack.server.api.packed import history_response
from simtrack.v1 import telemetry_pb2 as tpb


def page(
    first: int, n: int, count: int, last: bool, little_endian: bool
) -> tpb.GetMetricHistoryResponse:
    steps = first + np.arange(n, dtype=np.int64)
    values = np.sin(steps.astype(np.float64))
    stamps = 1.7e9 + steps * 0.5
    token = "" if last else f"after-{first + n}"
    return history_response(steps, values, stamps, token, count, False, little_endian).message()


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize(
    "sizes, counts",
    [
        ([5], [5]),  # one page
        ([4, 4, 2], [10, 10, 10]),  # as range_count said
        ([4, 4, 4, 3], [10, 12, 15, 15]),  # points written while paging: the columns grow
        ([3, 0], [3, 3]),  # an empty last page
    ],
)
def test_pages_make_the_columns_of_the_whole(
    sizes: list[int], counts: list[int], little_endian: bool
) -> None:
    pages, at = [], 0
    for i, (n, count) in enumerate(zip(sizes, counts, strict=True)):
        pages.append(page(at, n, count, i == len(sizes) - 1, little_endian))
        at += n
    read = MetricHistory.of_pages(iter(pages))
    each = [MetricHistory.of_page(p) for p in pages]
    assert read.steps.tolist() == list(range(at))
    assert read.values.tobytes() == np.concatenate([p.values for p in each]).tobytes()
    assert read.timestamps.tobytes() == np.concatenate([p.timestamps for p in each]).tobytes()
    assert read.range_count == counts[0] and not read.downsampled
    read.values[:] = 0  # the caller's own columns, not the messages' bytes


def test_no_page_is_an_error_and_a_malformed_one_is_named() -> None:
    with pytest.raises(ValueError, match="no page"):
        MetricHistory.of_pages([])
    bad = tpb.GetMetricHistoryResponse(values_le=b"\0" * 16, timestamps_le=b"\0" * 24)
    with pytest.raises(ValueError, match="2 values and 3 timestamps"):
        MetricHistory.of_page(bad)
