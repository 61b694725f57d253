"""A seeded corpus of typical simulation metrics, to measure chunk codecs on (``bench codec``).

Every series is deterministic: the same ``points`` give the same arrays on every machine.
Values, steps and timestamps are separate families, since their shapes vary independently; a
`Metric` pairs one of each, as a run would log it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
POINTS = 100_000
EPOCH = 1_750_000_000.0  # a Unix time in 2025: timestamps have today's magnitude and precision


def _rng(name: str) -> np.random.Generator:
    # Seeded by name, so adding a series does not change the others.
    return np.random.default_rng([sum(name.encode()), len(name), 11])


def counter(n: int) -> Array:
    """Events so far: monotonic integers stored as floats (Poisson arrivals per step)."""
    return np.cumsum(_rng("counter").poisson(3.0, n)).astype(np.float64)


def currency(n: int) -> Array:
    """A balance in cents: a two-decimal random walk around 10,000."""
    walk = 10_000 + np.cumsum(_rng("currency").normal(0.0, 25.0, n))
    return np.round(walk, 2)


def inventory(n: int) -> Array:
    """Units in stock: small integers, restocked to 200 when they run low."""
    draws = _rng("inventory").integers(0, 6, n)
    stock = np.empty(n, dtype=np.float64)
    level = 200
    for i, sold in enumerate(draws.tolist()):
        level = 200 if level < 10 else level - sold
        stock[i] = level
    return stock


def price(n: int) -> Array:
    """A quoted price: a four-decimal geometric random walk around 100."""
    return np.round(100.0 * np.exp(np.cumsum(_rng("price").normal(0.0, 0.001, n))), 4)


def gauge_f32(n: int) -> Array:
    """A sensor-like gauge computed in float32 (a GPU, a float32 simulation), cast to float64."""
    t = np.arange(n, dtype=np.float32)
    noise = _rng("gauge_f32").normal(0.0, 0.5, n).astype(np.float32)
    gauge = np.float32(20.0) + np.float32(5.0) * np.sin(t / np.float32(500.0)) + noise
    as_float32: Array = gauge.astype(np.float32)
    return as_float32.astype(np.float64)


def noise(n: int) -> Array:
    """Full-precision Gaussian noise: the incompressible case."""
    return _rng("noise").standard_normal(n)


def loss(n: int) -> Array:
    """A training-loss-like curve: exponential decay to a floor, with multiplicative noise."""
    t = np.arange(n, dtype=np.float64)
    curve = 0.1 + 2.4 * np.exp(-t / (n / 5))
    return curve * (1.0 + 0.05 * _rng("loss").standard_normal(n))


def rate(n: int) -> Array:
    """A success rate in [0, 1]: hits over attempts in each window (full-precision fractions)."""
    rng = _rng("rate")
    attempts = rng.integers(50, 151, n)
    return rng.binomial(attempts, 0.8) / attempts


def constant(n: int) -> Array:
    """A configuration value logged every step."""
    return np.full(n, 0.001)


def step_function(n: int) -> Array:
    """A schedule (learning rate, a policy level) that holds for a while and then changes."""
    rng = _rng("step_function")
    change_points = np.sort(rng.choice(np.arange(1, n), size=max(1, n // 5_000), replace=False))
    levels = 0.01 * 0.5 ** np.arange(len(change_points) + 1)
    return levels[np.searchsorted(change_points, np.arange(n), side="right")]


VALUES: dict[str, Callable[[int], Array]] = {
    "counter": counter,
    "currency": currency,
    "inventory": inventory,
    "price": price,
    "gauge_f32": gauge_f32,
    "noise": noise,
    "loss": loss,
    "rate": rate,
    "constant": constant,
    "step_function": step_function,
}


def consecutive_steps(n: int) -> Array:
    """Logged at every step: elided in every format."""
    return 1_000 + np.arange(n, dtype=np.int64)


def strided_steps(n: int) -> Array:
    """Logged every 10th step."""
    return 10 * np.arange(n, dtype=np.int64)


def irregular_steps(n: int) -> Array:
    """Logged on events: increasing with gaps of 1 to 20."""
    return np.cumsum(_rng("irregular_steps").integers(1, 21, n)).astype(np.int64)


STEPS: dict[str, Callable[[int], Array]] = {
    "consecutive": consecutive_steps,
    "strided": strided_steps,
    "irregular": irregular_steps,
}


def ticks_10hz(n: int) -> Array:
    """One ``time.time()`` per tick at 10 Hz, with a few milliseconds of scheduling jitter."""
    jitter = np.abs(_rng("ticks_10hz").normal(0.0, 0.003, n))
    return EPOCH + 0.1 * np.arange(n) + jitter


def batch_stamped(n: int) -> Array:
    """A worker that stamps each batch of 100 points once, a batch every 10 seconds."""
    batches = np.arange(n) // 100
    offsets = np.abs(_rng("batch_stamped").normal(0.0, 0.01, batches[-1] + 1 if n else 0))
    return EPOCH + 10.0 * batches + offsets[batches]


TIMESTAMPS: dict[str, Callable[[int], Array]] = {
    "ticks_10hz": ticks_10hz,
    "batch": batch_stamped,
}


@dataclass(frozen=True)
class Metric:
    """One logged metric: its values with the steps and timestamps it was logged at."""

    name: str
    steps: str  # a key of STEPS
    stamps: str  # a key of TIMESTAMPS


# Most metrics are logged at every step; the others show the other step shapes.
METRICS = [
    Metric("counter", "consecutive", "ticks_10hz"),
    Metric("currency", "consecutive", "batch"),
    Metric("inventory", "strided", "ticks_10hz"),
    Metric("price", "consecutive", "ticks_10hz"),
    Metric("gauge_f32", "irregular", "ticks_10hz"),
    Metric("noise", "consecutive", "ticks_10hz"),
    Metric("loss", "strided", "batch"),
    Metric("rate", "consecutive", "batch"),
    Metric("constant", "consecutive", "batch"),
    Metric("step_function", "irregular", "batch"),
]
