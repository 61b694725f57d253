"""The packed columns of a metric chunk (``metric_chunks.steps``, ``vals``, ``ts``).

Little-endian numpy columns, one entry per point, with the two commonest shapes elided:

* ``steps`` (int64) is empty when the steps run ``first_step, first_step + 1, ...`` — a metric
  logged at every step, the usual case;
* ``vals`` (float64) is always one entry per point;
* ``ts`` (float64 Unix seconds) is a single entry when every point shares one timestamp — a
  batch stamped once, or stamped by the server on arrival.

Why: PostgreSQL's cost of storing a chunk grows with its bytes (out-of-line TOAST pieces and
WAL), and eliding both shapes cuts a typical chunk to a third.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
STEP = np.dtype("<i8")
FLOAT = np.dtype("<f8")


def pack_steps(steps: Array, first: int, last: int) -> bytes:
    """``steps`` packed; empty when they are exactly first, first + 1, ..., last."""
    n = len(steps)
    if last - first == n - 1 and int(steps[0]) == first and (n < 2 or (np.diff(steps) == 1).all()):
        return b""
    return steps.astype(STEP, copy=False).tobytes()


def pack_timestamps(stamps: Array) -> bytes:
    """``stamps`` packed; a single value when they are all equal."""
    if len(stamps) and stamps[0] == stamps[-1] and stamps.min() == stamps.max():
        return stamps[:1].astype(FLOAT, copy=False).tobytes()
    return stamps.astype(FLOAT, copy=False).tobytes()


def unpack(
    n: int, first_step: int, steps: bytes, vals: bytes, ts: bytes
) -> tuple[Array, Array, Array]:
    """A chunk's (steps, values, timestamps), each ``n`` long."""
    values = np.frombuffer(vals, dtype=FLOAT)
    stamps = np.frombuffer(ts, dtype=FLOAT)
    if len(values) != n or len(stamps) not in (1, n) or len(steps) not in (0, 8 * n):
        raise ValueError(f"a chunk of {n} points with malformed columns")
    return (
        np.frombuffer(steps, dtype=STEP) if steps else np.arange(first_step, first_step + n),
        values,
        stamps if len(stamps) == n else np.full(n, stamps[0]),
    )
