"""Waiting for something to happen: poll an observable predicate with a deadline.

A test that needs the server to have done something (a status changed, a row appeared, a
sweep ran) waits for exactly that, instead of sleeping for a guess: it goes on as soon as the
thing happened (no time wasted) and, on a slow machine, waits as long as the deadline allows
(no flake). When the deadline passes, the failure says what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

POLL_INTERVAL = 0.05  # seconds between checks: short against every deadline the tests use


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "",
    *,
    interval: float = POLL_INTERVAL,
) -> float:
    """Poll ``predicate`` until it is true; the seconds that took. Fails the test, naming
    ``what``, when it is still false after ``timeout`` seconds.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what or predicate}", pytrace=False)
        time.sleep(interval)
    return time.monotonic() - start


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "",
    *,
    interval: float = POLL_INTERVAL,
) -> float:
    """``wait_for`` in a coroutine: the event loop runs on between checks. ``predicate`` may
    be a coroutine function. The seconds it took.
    """
    start = time.monotonic()
    while True:
        outcome = predicate()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what or predicate}", pytrace=False)
        await asyncio.sleep(interval)
