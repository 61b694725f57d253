"""The worker helper's flush policy against a fake server: a run that logs a little at a time
sends a message per ``max_flush_interval``, one that logs a lot keeps ``flush_interval``, and
an explicit flush or the end of the run never waits for either.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simtrack.client import Worker, WorkerOptions
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import RUN, FakeServer, assert_contiguous, metric_points


def _metric_messages(fake: FakeServer) -> list[tm.StreamRunRequest]:
    log = fake.service.run(RUN)
    return [m for _, m in sorted(log.stored.items()) if m.HasField("metrics")]


def _log_for(run: Worker, seconds: float, per_tick: int, tick: float) -> int:
    """Log ``per_tick`` metrics every ``tick`` seconds for ``seconds``; the steps logged."""
    step, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        run.log_metrics(step, {f"m{i}": float(step) for i in range(per_tick)})
        step += 1
        time.sleep(tick)
    return step


def test_a_run_logging_a_little_sends_a_message_per_max_flush_interval(
    fake: FakeServer, tmp_path: Path
) -> None:
    options = WorkerOptions(
        flush_interval=0.02, max_flush_interval=0.4, min_flush_points=10_000, close_timeout=20
    )
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        steps = _log_for(run, seconds=1.6, per_tick=3, tick=0.01)
    messages = _metric_messages(fake)
    # 1.6 s at one flush per 0.4 s: 4 timed flushes, and the one at the end of the run. At
    # every flush_interval it would have been ~80.
    assert 3 <= len(messages) <= 7, len(messages)
    assert_contiguous(fake.service.run(RUN))
    assert [s for s, _ in metric_points(fake.service.run(RUN))["m0"]] == list(range(steps))


def test_a_run_logging_enough_keeps_the_short_interval(fake: FakeServer, tmp_path: Path) -> None:
    options = WorkerOptions(
        flush_interval=0.05, max_flush_interval=5.0, min_flush_points=20, close_timeout=20
    )
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        # 10 metrics every 10 ms: ~50 points per flush interval, above min_flush_points.
        _log_for(run, seconds=1.0, per_tick=10, tick=0.01)
    assert len(_metric_messages(fake)) >= 8  # not one per max_flush_interval (5 s)


def test_an_explicit_flush_does_not_wait_for_the_policy(fake: FakeServer, tmp_path: Path) -> None:
    options = WorkerOptions(
        flush_interval=0.02, max_flush_interval=60.0, min_flush_points=10_000, close_timeout=20
    )
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        run.log_metrics(0, {"a": 1.0})
        started = time.monotonic()
        assert run.flush(timeout=10)
        assert time.monotonic() - started < 5  # not the 60 s the policy would wait
        assert len(_metric_messages(fake)) == 1


def test_the_policy_knobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_flush_interval"):
        WorkerOptions(max_flush_interval=0)
    with pytest.raises(ValueError, match="min_flush_points"):
        WorkerOptions(min_flush_points=0)
