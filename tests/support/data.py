"""Deterministic telemetry to send (``Dataset``) and checksums that compare it, bit for bit, with
what the server stored; what was sent of a metric, in history order (``Sent``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simtrack.v1 import (
    telemetry_pb2,
)


@dataclass(frozen=True)
class Checksum:
    """A metric's points as stored or as sent: count, the steps' multiset, the values' sum.

    ``points`` is the sha256 of the (step, value-bits) pairs sorted by step, so equal
    checksums mean the very same points, bit for bit, each once.
    """

    count: int
    steps: str
    value_sum: float
    points: str

    @classmethod
    def of(cls, steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> Checksum:
        order = np.argsort(steps, kind="stable")
        steps_sorted = np.ascontiguousarray(steps[order], dtype="<i8")
        values_sorted = np.ascontiguousarray(values[order], dtype="<f8")
        return cls(
            count=len(steps),
            steps=hashlib.sha256(steps_sorted.tobytes()).hexdigest()[:16],
            value_sum=math.fsum(values_sorted[np.isfinite(values_sorted)].tolist()),
            points=hashlib.sha256(steps_sorted.tobytes() + values_sorted.tobytes()).hexdigest(),
        )


class Dataset:
    """Deterministic metric batches: message ``i`` (seq ``first_seq + i``) holds ``points``
    points of every metric, steps ``i * points ...``, values from a seeded generator.
    """

    def __init__(
        self,
        batches: int,
        points: int = 1000,
        metrics: Sequence[str] = ("loss", "reward"),
        seed: int = 0,
        first_seq: int = 1,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.metrics = tuple(metrics)
        self.points = points
        self.steps = {
            name: np.arange(batches * points, dtype="<i8") + 1000 * k
            for k, name in enumerate(self.metrics)
        }
        self.values = {name: rng.normal(k, 1.0, batches * points) for k, name in enumerate(metrics)}
        self.messages = [
            telemetry_pb2.StreamRunRequest(
                seq=first_seq + i,
                metrics=telemetry_pb2.MetricBatch(
                    series=[
                        telemetry_pb2.MetricSeries(
                            name=name,
                            steps=self.steps[name][i * points : (i + 1) * points].tolist(),
                            values=self.values[name][i * points : (i + 1) * points].tolist(),
                        )
                        for name in self.metrics
                    ]
                ),
            )
            for i in range(batches)
        ]

    @property
    def total_points(self) -> int:
        return sum(len(v) for v in self.values.values())

    def checksums(self, batches: int | None = None) -> dict[str, Checksum]:
        """Per metric: the checksum of every point sent, or of the first ``batches`` batches."""
        end = None if batches is None else batches * self.points
        return {
            name: Checksum.of(self.steps[name][:end], self.values[name][:end])
            for name in self.metrics
        }


Array = np.ndarray[Any, Any]


class Sent:
    """One metric's points as sent, in history order: (step, seq, place in the batch)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, float, float]] = []

    def add(self, seq: int, steps: Array, values: Array, stamps: Array) -> None:
        for i, (step, value, stamp) in enumerate(zip(steps, values, stamps, strict=True)):
            self.rows.append((int(step), seq, i, float(value), float(stamp)))

    def columns(self, lo: int | None = None, hi: int | None = None) -> tuple[Array, Array, Array]:
        rows = sorted(
            r for r in self.rows if (lo is None or r[0] >= lo) and (hi is None or r[0] <= hi)
        )
        return (
            np.array([r[0] for r in rows], dtype="<i8"),
            np.array([r[3] for r in rows], dtype="<f8"),
            np.array([r[4] for r in rows], dtype="<f8"),
        )
