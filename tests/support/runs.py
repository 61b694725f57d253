"""Runs as the stream tests see them: their statuses, StreamRun messages to build, and polling
a run (or its experiment) through the API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from google.protobuf import struct_pb2

from simtrack.v1 import experiments_pb2, runs_pb2, telemetry_pb2
from tests.support.servers import Server

RunStatus = runs_pb2.RunStatus
ExperimentStatus = experiments_pb2.ExperimentStatus
Request = telemetry_pb2.StreamRunRequest
RUNNING = RunStatus.RUN_STATUS_RUNNING
PENDING = RunStatus.RUN_STATUS_PENDING
COMPLETED = RunStatus.RUN_STATUS_COMPLETED
FAILED = RunStatus.RUN_STATUS_FAILED
STOPPED = RunStatus.RUN_STATUS_STOPPED
PAUSED = RunStatus.RUN_STATUS_PAUSED


def series(
    name: str, steps: list[int], values: list[float], timestamps: list[float] | None = None
) -> telemetry_pb2.MetricSeries:
    return telemetry_pb2.MetricSeries(
        name=name, steps=steps, values=values, timestamps=timestamps or []
    )


def metrics(seq: int, *items: telemetry_pb2.MetricSeries) -> Request:
    return Request(seq=seq, metrics=telemetry_pb2.MetricBatch(series=list(items)))


def progress(seq: int, tick: int, total: int = 0, percent: float = 0.0) -> Request:
    return Request(
        seq=seq, progress=telemetry_pb2.Progress(tick=tick, total=total, percent=percent)
    )


def final(
    seq: int, outcome: int, error: str = "", results: dict[str, Any] | None = None
) -> Request:
    status = telemetry_pb2.FinalStatus(
        outcome=telemetry_pb2.RunOutcome.ValueType(outcome),
        error_message=error,
        results=as_struct(results or {}),
    )
    return Request(seq=seq, status=status)


def as_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(data)
    return result


def get_run(server: Server, run_id: str) -> runs_pb2.Run:
    return server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run


def experiment_status(server: Server, experiment_id: str) -> int:
    request = experiments_pb2.GetExperimentRequest(id=experiment_id)
    return int(server.experiments.GetExperiment(request).experiment.status)


async def wait_status(
    server: Server, run_id: str, status: int, timeout: float = 10.0
) -> runs_pb2.Run:
    """Poll GetRun until the run has ``status``; the run."""
    deadline = time.monotonic() + timeout
    while (run := get_run(server, run_id)).status != status:
        if time.monotonic() > deadline:
            pytest.fail(
                f"run {run_id} is {RunStatus.Name(run.status)} after {timeout}s, "
                f"not {RunStatus.Name(RunStatus.ValueType(status))}: {run.error_message!r}"
            )
        await asyncio.sleep(0.05)
    return run
