"""``AsyncWorker`` against a fake server: the same guarantees as ``Worker``, on an event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import grpc
import pytest

from simtrack.client import AsyncWorker, Command, Worker
from simtrack.client.rpc_errors import from_rpc_error
from simtrack.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SimtrackError,
    Unavailable,
)
from simtrack.v1 import telemetry_pb2 as tm
from tests.support.fake_telemetry import (
    FAST,
    RUN,
    FakeServer,
    final_status,
    metric_points,
)

# ----------------------------------------------------------------------------- asyncio


def test_async_worker(fake: FakeServer, tmp_path: Path) -> None:
    async def main() -> tuple[list[str], bool]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()

        async def on_price(command: Command) -> None:
            assert asyncio.get_running_loop() is loop
            seen.append(command.args["price"])

        async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.on_command("set_price", on_price)
            for step in range(1_000):
                run.log_metrics(step, {"x": float(step)})
                run.progress(step + 1, 1_000)
            flushed = await run.flush(timeout=10)
            fake.service.command(RUN, "set_price", {"price": "low"})
            for _ in range(500):
                if seen:
                    break
                await asyncio.sleep(0.01)
        return seen, flushed

    seen, flushed = asyncio.run(main())
    assert flushed and seen == ["low"]
    log = fake.service.run(RUN)
    assert metric_points(log) == {"x": [(s, float(s)) for s in range(1_000)]}
    assert final_status(log).outcome == tm.RUN_OUTCOME_COMPLETED


def test_simtrack_sync_command(
    fake: FakeServer, tmp_path: Path, dead_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtrack.client import cli

    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    dead = Worker(dead_target, RUN, spool_dir=tmp_path, options=FAST).start()
    dead.log_metrics(0, {"x": 1.0})
    assert not dead.flush(timeout=0.2)
    dead._simulate_crash()
    assert cli.main(["sync", "--target", fake.target, "--spool-dir", str(tmp_path)]) == 0
    assert f"{RUN}: 1 message(s) uploaded" in capsys.readouterr().out
    assert metric_points(fake.service.run(RUN)) == {"x": [(0, 1.0)]}


class _FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.ABORTED, Conflict),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INTERNAL, SimtrackError),
    ],
)
def test_from_rpc_error_without_details(
    code: grpc.StatusCode, expected: type[SimtrackError]
) -> None:
    error = from_rpc_error(_FailedCall(code, "what happened"))
    assert type(error) is expected
    assert error.message == "what happened" and error.code_name == code.name


# ----------------------------------------------------------------------------- asyncio: like Worker


def test_a_cancelled_async_worker_ends_the_run_stopped(fake: FakeServer, tmp_path: Path) -> None:
    async def main() -> None:
        running = asyncio.Event()

        async def simulation() -> None:
            async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
                run.log_metrics(0, {"x": 1.0})
                running.set()
                await asyncio.sleep(60)  # a long simulation step, cancelled

        task = asyncio.create_task(simulation())
        await asyncio.wait_for(running.wait(), 10)  # cancelled inside the worker's block
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    log = fake.service.run(RUN)
    status = final_status(log)
    assert status.outcome == tm.RUN_OUTCOME_STOPPED
    assert status.error_message == "CancelledError"
    assert metric_points(log) == {"x": [(0, 1.0)]}


CTRL_C_CHILD = textwrap.dedent(
    """
    import asyncio, faulthandler, sys, time
    from simtrack.client import AsyncWorker, Worker, WorkerOptions
    helper, target, run_id, spool_dir = sys.argv[1:5]
    # Still running after 15 s: every thread's stack to stderr, for the test to show.
    faulthandler.dump_traceback_later(15, exit=True)
    options = WorkerOptions(flush_interval=0.01, upload_leftovers=False)

    def simulation() -> None:
        with Worker(target, run_id, spool_dir=spool_dir, options=options) as run:
            run.log_metrics(0, {"x": 1.0})
            print("ready", flush=True)
            # Short steps, as a simulation loop runs: the kernel may hand SIGINT to one of
            # gRPC's threads, and Python's main thread acts on it only when it next wakes.
            for _ in range(600):
                time.sleep(0.1)

    async def async_simulation() -> None:
        async with AsyncWorker(target, run_id, spool_dir=spool_dir, options=options) as run:
            run.log_metrics(0, {"x": 1.0})
            print("ready", flush=True)
            # Short steps too: asyncio.run's SIGINT handler runs only when the loop wakes, and
            # a signal handed to a gRPC thread does not wake it (one 60 s sleep: 60 s).
            for _ in range(600):
                await asyncio.sleep(0.1)

    if helper == "Worker":
        simulation()
    else:
        asyncio.run(async_simulation())
    """
)


@pytest.mark.parametrize("helper", ["Worker", "AsyncWorker"])
def test_ctrl_c_ends_the_run_stopped_with_either_helper(
    helper: str, fake: FakeServer, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, helper, fake.target, RUN, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in stderr, stderr  # the interrupt still ends the program
    status = final_status(fake.service.run(RUN))
    assert status.outcome == tm.RUN_OUTCOME_STOPPED, status.error_message


def test_command_callback_errors_are_logged_sync_or_async(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []

    async def main() -> None:
        async def bad_async(command: Command) -> None:
            await asyncio.sleep(0)
            raise ValueError(f"async callback refused {command.args['price']}")

        def bad_plain(command: Command) -> None:
            raise ValueError("plain callback refused")

        async def good_async(command: Command) -> None:
            done.append(command.name)

        async with AsyncWorker(fake.target, RUN, spool_dir=tmp_path, options=FAST) as run:
            run.on_command("set_price", bad_async)
            run.on_command("set_price", bad_plain)
            run.on_command("set_price", lambda command: good_async(command))  # an awaitable
            run.log_metrics(0, {"x": 1.0})
            assert await run.flush(timeout=10)
            fake.service.command(RUN, "set_price", {"price": 7})
            for _ in range(500):
                if done and caplog.text.count("callback for command 'set_price' failed") == 2:
                    break
                await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert done == ["set_price"]
    failures = [r for r in caplog.records if "callback for command 'set_price' failed" in r.message]
    assert len(failures) == 2
    errors = sorted(str(r.exc_info[1]) for r in failures if r.exc_info)
    assert errors == ["async callback refused 7.0", "plain callback refused"]
