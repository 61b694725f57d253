"""The clocks the worker helper reads, and deadline arithmetic for its waits."""

from __future__ import annotations

import time

__all__ = ["expired", "monotonic", "now", "remaining"]

now = time.time
monotonic = time.monotonic


def remaining(deadline: float | None, cap: float) -> float:
    """Seconds to wait before looking again: at most ``cap``, at most until ``deadline``."""
    return cap if deadline is None else max(0.0, min(cap, deadline - monotonic()))


def expired(deadline: float | None) -> bool:
    """Whether ``deadline`` (a :func:`monotonic` time, None for never) has passed."""
    return deadline is not None and monotonic() >= deadline
