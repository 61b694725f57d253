"""A comparison grid's bounds (``domain.compare.step_bounds``) from chunk rows: the lowest and
highest step of each metric's points in a range, equal to a brute-force scan of every point,
whatever the chunks' shapes (raw, compressed, elided steps; unordered, repeated, sparse) and
wherever the range cuts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from simtrack.codec import encode_steps
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.db.chunks import pack_steps
from simtrack.server.domain.compare import step_bounds
from tests.unit.fakes import Unfaked

Array = np.ndarray[Any, Any]


class FakeChunks(Unfaked):
    """Chunk rows as (metric_id, n, first_step, last_step, packed steps), with their steps."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, int, bytes]] = []
        self.steps: dict[str, list[Array]] = {}
        self.edge_calls = 0

    def add(self, metric_id: str, steps: Array, compressed: bool) -> None:
        packed = pack_steps(steps)
        blob = encode_steps(steps) if compressed else packed.packed
        self.rows.append((metric_id, len(steps), packed.first, packed.last, blob))
        self.steps.setdefault(metric_id, []).append(steps)

    async def inner_spans(
        self, metric_ids: Sequence[str], lo: int, hi: int
    ) -> dict[str, tuple[int, int]]:
        spans: dict[str, tuple[int, int]] = {}
        for m, _, first, last, _ in self.rows:
            if m in metric_ids and lo <= first and last <= hi:
                low, high = spans.get(m, (first, last))
                spans[m] = (min(low, first), max(high, last))
        return spans

    async def edge_steps(
        self, metric_ids: Sequence[str], lo: int, hi: int
    ) -> list[tuple[str, int, int, bytes]]:
        self.edge_calls += 1
        return [
            (m, n, first, blob)
            for m, n, first, last, blob in self.rows
            if m in metric_ids and last >= lo and first <= hi and (first < lo or last > hi)
        ]


def brute_force(chunks: FakeChunks, lo: int, hi: int) -> dict[str, tuple[int, int]]:
    found = {}
    for m, parts in chunks.steps.items():
        every = np.concatenate(parts)
        inside = every[(every >= lo) & (every <= hi)]
        if inside.size:
            found[m] = (int(inside.min()), int(inside.max()))
    return found


@pytest.mark.parametrize("seed", range(6))
async def test_bounds_equal_a_scan_of_every_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    chunks = FakeChunks()
    for m in ("a", "b", "c"):
        start = int(rng.integers(0, 500))
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(1, 60))
            shape = rng.integers(3)
            if shape == 0:  # contiguous: elided
                steps = start + np.arange(n, dtype="<i8")
            elif shape == 1:  # sparse, repeated, out of order
                steps = rng.integers(start, start + 5 * n, size=n).astype("<i8")
            else:
                steps = start + np.arange(0, 7 * n, 7, dtype="<i8")
            chunks.add(m, steps, compressed=bool(rng.integers(2)))
            start += int(rng.integers(-20, 5 * n))  # chunks may overlap
    metric_ids = ["a", "b", "c", "none"]
    assert await step_bounds(chunks, metric_ids, INT64_MIN, INT64_MAX) == brute_force(
        chunks, INT64_MIN, INT64_MAX
    )
    assert chunks.edge_calls == 0, "no bound: the chunks' step ranges are the answer"
    for _ in range(200):
        lo, hi = sorted(int(x) for x in rng.integers(-10, 1200, size=2))
        got = await step_bounds(chunks, metric_ids, lo, hi)
        assert got == brute_force(chunks, lo, hi), (lo, hi)


async def test_a_cut_chunk_with_no_point_in_the_range_adds_nothing() -> None:
    chunks = FakeChunks()
    chunks.add("a", np.array([0, 1000], dtype="<i8"), compressed=False)
    chunks.add("a", np.array([40, 41, 42], dtype="<i8"), compressed=False)
    chunks.add("b", np.array([5, 2000, 6], dtype="<i8"), compressed=True)
    assert await step_bounds(chunks, ["a", "b"], 10, 100) == {"a": (40, 42)}
    top = np.array([INT64_MAX - 1, INT64_MAX], dtype="<i8")  # elided at int64's top
    chunks.add("c", top, compressed=False)
    assert await step_bounds(chunks, ["c"], INT64_MAX, INT64_MAX) == {"c": (INT64_MAX, INT64_MAX)}
