"""The worker helper against a fake server: closing (flushing, timeouts, stalls) and signals."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simtrack.client import Worker, WorkerOptions, sync_spool
from simtrack.client.worker._spool import Spool, spooled_runs
from simtrack.errors import (
    FailedPrecondition,
)
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import (
    ALONE,
    FAST,
    RUN,
    FakeServer,
    eventually,
    final_status,
    metric_points,
)

# ----------------------------------------------------------------------------- closing


def one_message_per_point(**overrides: Any) -> WorkerOptions:
    return replace(ALONE, points_per_series=1, max_series_per_batch=1, **overrides)


def test_closing_waits_as_long_as_acks_keep_coming(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.ack_delay = 0.04  # a loaded server: 50 messages take 2 s, an ack each 0.04 s
    # A second without an ack is a stall; acks every 0.04 s are not one, even on a busy CI
    # machine (with 0.5 s, a pause of the fake's thread there once ended the close early).
    options = one_message_per_point(close_timeout=1.0)
    started = time.monotonic()
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run:
        for step in range(50):
            run.log_metrics(step, {"x": float(step)})
    assert time.monotonic() - started > 1.5  # longer than close_timeout: it was not a deadline
    log = fake.service.run(RUN)
    assert metric_points(log) == {"x": [(s, float(s)) for s in range(50)]}
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED
    assert not run.spool_path.exists()


def test_closing_gives_up_after_a_stall_and_says_what_it_left(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.service.ack_limit = 15  # commits 15 messages, then stops answering
    options = one_message_per_point(close_timeout=0.5)
    with (
        caplog.at_level(logging.WARNING),
        Worker(fake.target, RUN, spool_dir=tmp_path, options=options) as run,
    ):
        for step in range(40):
            run.log_metrics(step, {"x": float(step)})
        run.flush(timeout=0.5)
        closing = time.monotonic()
    assert 0.4 < time.monotonic() - closing < 5  # gave up about close_timeout after the last ack
    assert fake.service.run(RUN).committed == 15
    with Spool(tmp_path, RUN) as left:  # what is really there, beyond the last ack
        messages, points, _ = left.stats()
        assert [m.seq for m in left.messages()] == list(range(16, 42))
    assert (messages, points) == (26, 25)  # 25 points and the final status
    assert (
        f"26 message(s) (25 points and the final status) not acknowledged, kept in "
        f"{run.spool_path}" in caplog.text
    )
    assert run.pending() == (26, 25)


def leave_spool(target: str, run_id: str, tmp_path: Path, points: int) -> Path:
    """A spool as a closing that gave up leaves it: points and the final status."""
    run = Worker(target, run_id, spool_dir=tmp_path, options=replace(ALONE, close_timeout=0.1))
    with run:
        for step in range(points):
            run.log_metrics(step, {"x": float(step)})
    assert run.spool_path.exists()
    return run.spool_path


def test_a_starting_worker_uploads_the_spools_other_runs_left_once(
    fake: FakeServer, tmp_path: Path, dead_target: str
) -> None:
    left_a = leave_spool(dead_target, "run-a", tmp_path, 50)
    left_b = leave_spool(dead_target, "run-b", tmp_path, 10)
    uploading_b = Spool(tmp_path, "run-b", holder="upload")  # another process uploads run-b
    fake.service.holding.set()  # run-a's upload is under way while more workers start
    started = time.monotonic()
    first = Worker(fake.target, "run-c", spool_dir=tmp_path, options=FAST).start()
    assert time.monotonic() - started < 0.5  # the upload does not delay the new run
    eventually(lambda: len(fake.service.run("run-a").hellos) == 1, what="run-a's upload")
    second = Worker(fake.target, "run-d", spool_dir=tmp_path, options=FAST).start()
    fake.service.holding.clear()
    eventually(lambda: not left_a.exists(), what="run-a's spool removed")
    first.close()
    second.close()
    uploaded = fake.service.run("run-a")
    assert metric_points(uploaded) == {"x": [(s, float(s)) for s in range(50)]}
    assert final_status(uploaded).outcome == tm.RUN_OUTCOME_COMPLETED
    assert len(uploaded.hellos) == 1 and uploaded.hellos[0].worker_id.startswith("sync:")
    assert left_b.exists() and fake.service.run("run-b").hellos == []  # locked: not touched

    uploading_b.close()  # that process let go without finishing: the next worker uploads it
    with Worker(fake.target, "run-e", spool_dir=tmp_path, options=FAST):
        eventually(lambda: not left_b.exists(), what="run-b's spool removed")
    assert metric_points(fake.service.run("run-b")) == {"x": [(s, float(s)) for s in range(10)]}
    assert len(fake.service.run("run-a").hellos) == 1  # exactly once
    assert len(fake.service.run("run-b").hellos) == 1
    assert spooled_runs(tmp_path) == []


def test_a_leftover_the_server_refuses_is_kept_and_not_retried(
    fake: FakeServer, tmp_path: Path, dead_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    left = leave_spool(dead_target, "run-x", tmp_path, 20)
    fake.service.ended.add("run-x")  # its data cannot be stored any more
    with caplog.at_level(logging.WARNING):
        with Worker(fake.target, "run-c", spool_dir=tmp_path, options=FAST):
            eventually(lambda: "the run already ended" in caplog.text, what="the refusal")
        with Worker(fake.target, "run-d", spool_dir=tmp_path, options=FAST):
            time.sleep(0.3)
    assert len(fake.service.run("run-x").hellos) == 1  # tried once, not in a loop
    assert "run-x: 0 message(s) uploaded" in caplog.text
    assert (
        "FAILED_PRECONDITION: the run already ended (completed); 2 message(s) (20 points "
        f"and the final status) not acknowledged, kept in {left}" in caplog.text
    )
    assert "`simtrack sync` tries again" in caplog.text
    with Spool(tmp_path, "run-x") as kept:
        assert kept.stats()[:2] == (2, 20)


def test_a_worker_waits_for_the_upload_of_its_own_spool(fake: FakeServer, tmp_path: Path) -> None:
    uploading = Spool(tmp_path, RUN, holder="upload")
    threading.Timer(0.3, uploading.close).start()
    started = time.monotonic()
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        run.log_metrics(0, {"x": 1.0})
    assert time.monotonic() - started >= 0.3
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


def test_sync_reports_what_it_uploaded_and_keeps_what_was_refused(
    fake: FakeServer, tmp_path: Path, dead_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtrack.client import SyncError, cli

    with Worker(
        dead_target, "run-a", spool_dir=tmp_path, options=replace(ALONE, close_timeout=0.1)
    ) as a:
        for step in range(30):
            a.log_metrics(step, {"x": float(step), "y": 1.0})
        a.log_event(3, "trade", {"price": 1.5})
        a.log_event(4, "trade", {"price": 1.6})
    leave_spool(dead_target, "run-x", tmp_path, 5)
    fake.service.ended.add("run-x")
    with pytest.raises(SyncError) as raised:
        sync_spool(fake.target, tmp_path, options=FAST, timeout=5)
    reports = raised.value.reports
    a_report = reports["run-a"]
    assert (a_report.metric_batches, a_report.points) == (1, 60)
    assert (a_report.event_batches, a_report.events, a_report.final_status) == (1, 2, True)
    assert a_report.left is None and a_report.error is None and not a.spool_path.exists()
    x_report = reports["run-x"]
    assert x_report.messages == 0 and isinstance(x_report.error, FailedPrecondition)
    assert x_report.left is not None and (x_report.left.messages, x_report.left.points) == (2, 5)
    assert list(raised.value.errors) == ["run-x"]

    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        "simtrack: run-x: 0 message(s) uploaded: 0 metric batch(es) (0 points), 0 event "
        "batch(es) (0 events); FAILED_PRECONDITION: the run already ended (completed); 2 "
        "message(s) (5 points and the final status) not acknowledged, kept in "
        f"{tmp_path / 'run-x.sqlite'}" in err
    )
