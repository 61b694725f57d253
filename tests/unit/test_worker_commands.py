"""The worker helper against a fake server: commands pushed to it, and the errors that end a
run's stream for good.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from simtrack.client import Command, Worker
from simtrack.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SimtrackError,
    Unauthenticated,
)
from simtrack.v1 import runs_pb2
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import (
    FAST,
    RUN,
    FakeServer,
    eventually,
    final_status,
    metric_points,
)

# ----------------------------------------------------------------------------- commands


def test_commands_reach_the_worker(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[tuple[Command, str]] = []
    with (
        caplog.at_level(logging.INFO),
        Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run,
    ):
        run.on_command("set_price", lambda c: received.append((c, threading.current_thread().name)))
        run.log_metrics(0, {"x": 0.0})
        assert run.flush(timeout=10)
        fake.service.command(RUN, "set_price", {"price": 9.5}, id="c1")
        fake.service.command(RUN, "set_price", {"price": 9.5}, id="c1")  # delivered twice
        fake.service.command(RUN, "frobnicate", {"x": 1})
        eventually(lambda: len(received) == 1)
        fake.service.command(RUN, "pause")
        eventually(lambda: run.paused)
        assert not run.wait_if_paused(timeout=0.05)
        fake.service.command(RUN, "resume")
        eventually(lambda: not run.paused)
        assert not run.cancel_requested
        fake.service.command(RUN, "cancel", {"reason": "enough"})
        eventually(lambda: run.cancel_requested)
    command, thread = received[0]
    assert command == Command("c1", "set_price", {"price": 9.5})
    assert thread.startswith("simtrack-stream")
    assert "unknown command 'frobnicate'" in caplog.text
    assert final_status(fake.service.run(RUN)).outcome == tm.RUN_OUTCOME_STOPPED


def test_pending_commands_in_the_welcome(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.pending_commands = [runs_pb2.Command(id="c9", name="cancel")]
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        eventually(lambda: run.cancel_requested)
    assert final_status(fake.service.run(RUN)).outcome == tm.RUN_OUTCOME_STOPPED


def test_the_paused_flag_follows_each_welcome(fake: FakeServer, tmp_path: Path) -> None:
    """A welcome tells the run's state: a pause in it pauses; none means running (a resume
    the worker missed while it was away).
    """
    fake.service.pending_commands = [runs_pb2.Command(id="p1", name="pause")]
    with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
        eventually(lambda: run.paused)
        fake.service.push(RUN, "close")  # reconnect: the same pause, already seen
        eventually(lambda: fake.service.streams == 2)
        time.sleep(0.2)
        assert run.paused
        fake.service.pending_commands = []
        fake.service.push(RUN, "close")
        eventually(lambda: not run.paused)
        assert fake.service.streams == 3


def test_an_escaping_exception_fails_the_run_and_is_reraised(
    fake: FakeServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="boom"):
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.log_metrics(0, {"x": 1.0})
            raise ValueError("boom")
    status = final_status(fake.service.run(RUN))
    assert status.outcome == tm.RUN_OUTCOME_FAILED
    assert status.error_message == "ValueError: boom"
    details = json_format.MessageToDict(status.error_details)
    assert details["type"] == "builtins.ValueError" and "boom" in details["traceback"]
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


# ----------------------------------------------------------------------------- final errors


def _status(code: int, message: str, detail: Any = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_status(code_pb2.PERMISSION_DENIED, "reader keys may not stream"), PermissionDenied),
        (_status(code_pb2.UNAUTHENTICATED, "missing API key"), Unauthenticated),
        (_status(code_pb2.FAILED_PRECONDITION, "run is completed"), FailedPrecondition),
        (_status(code_pb2.ABORTED, "a newer stream for this run took over"), Conflict),
        (
            _status(
                code_pb2.NOT_FOUND,
                f"hello.run_id: run {RUN!r} not found",
                error_details_pb2.ResourceInfo(
                    resource_type="run", resource_name=RUN, description="field hello.run_id"
                ),
            ),
            NotFound,
        ),
        (
            _status(
                code_pb2.INVALID_ARGUMENT,
                "metrics.series.name: too long",
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="metrics.series.name", description="too long"
                        )
                    ]
                ),
            ),
            InvalidArgument,
        ),
    ],
)
def test_final_errors_stop_the_helper_and_surface(
    fake: FakeServer, tmp_path: Path, status: status_pb2.Status, expected: type[SimtrackError]
) -> None:
    fake.service.reject = status
    fake.service.reject_when = threading.Event()  # once a point is in the spool
    with pytest.raises(expected) as raised:
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.log_metrics(0, {"x": 1.0})
            eventually(run.spool_path.exists)
            fake.service.reject_when.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                run.log_metrics(0, {"x": 1.0})
                time.sleep(0.01)
    error = raised.value
    assert error.message == status.message
    assert fake.service.streams == 1  # not retried
    if isinstance(error, InvalidArgument):
        assert [(v.field, v.description) for v in error.violations] == [
            ("metrics.series.name", "too long")
        ]
    if isinstance(error, NotFound):
        assert (error.resource_type, error.resource_id, error.field) == ("run", RUN, "hello.run_id")
    assert run.spool_path.exists()  # the points wait for `simtrack sync`


def test_a_final_error_is_raised_on_exit_too(fake: FakeServer, tmp_path: Path) -> None:
    fake.service.reject = _status(code_pb2.PERMISSION_DENIED, "no")
    with pytest.raises(PermissionDenied):
        with Worker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            eventually(lambda: run.error is not None)
