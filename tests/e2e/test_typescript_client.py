"""The TypeScript stubs (web/src/gen) talk to a real server: web/smoke/smoke.ts, compiled with
the pinned tsc, runs under Node with @connectrpc/connect-node's gRPC transport, creates an agent,
an experiment and a run, streams metrics and a final status through StreamRun and reads them
back. The Python stubs then check what was stored, so both languages agree on the wire.

Needs ``node`` and the npm packages (``npm install``); skips without them, fails under CI=true.
SQLite only: the point is the TypeScript side of the wire, not the database.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from simtrack.v1 import runs_pb2, telemetry_pb2
from tests.support import Server

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
TSC = NODE_MODULES / ".bin" / "tsc"
SMOKE_PROJECT = ROOT / "web" / "smoke"
NODE_TIMEOUT = 60.0

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _missing_toolchain() -> str | None:
    """Why the smoke client cannot be built or run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not TSC.exists() or not (NODE_MODULES / "@connectrpc" / "connect-node").is_dir():
        return "the npm packages are not installed (run `npm install --no-audit --no-fund`)"
    return None


@pytest.fixture(scope="module")
def smoke_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """web/smoke/smoke.ts compiled to JavaScript; the path of smoke.js."""
    reason = _missing_toolchain()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the TypeScript client test must run)", pytrace=False)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("ts-smoke")
    result = subprocess.run(
        [str(TSC), "-p", str(SMOKE_PROJECT), "--noEmit", "false", "--outDir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}\n{result.stderr}"
    # The output is ES modules; Node resolves bare imports from the nearest node_modules up.
    (out / "package.json").write_text('{"type": "module"}\n')
    (out / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    return out / "smoke" / "smoke.js"


def test_typescript_worker_streams_and_reads_back(server: Server, smoke_client: Path) -> None:
    result = subprocess.run(
        ["node", str(smoke_client), server.address, server.host.http_address],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"node smoke.js failed:\n{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout)
    assert summary["status"] == "COMPLETED"
    # Read back over the HTTP listener (Connect in JSON, gRPC-Web): gRPC's answers exactly.
    assert summary["overHttp"] == {"connectJson": True, "grpcWeb": True}
    assert summary["runningRuns"] == 0
    # GetMetricHistory's little-endian columns, read with a DataView: the repeated fields' points.
    assert summary["history"] == {
        "inventory": {
            "steps": [0, 1],
            "values": ["100", "NaN"],
            "stepsSentOnce": True,
            "same": True,
        },
        "profit": {"steps": [0, 1], "values": ["1.5", "-0"], "stepsSentOnce": True, "same": True},
    }
    assert summary["metrics"] == {
        # The NaN is stored but not summarised: the last finite step is 0, and present.
        "inventory": {"count": 2, "lastStep": 0, "lastValue": 100},
        "profit": {"count": 2, "lastStep": 1, "lastValue": 0},
        "void": {"count": 2, "lastStep": None, "lastValue": None},  # unset; NaN
    }

    run = server.runs.GetRun(runs_pb2.GetRunRequest(id=summary["runId"])).run
    assert run.status == runs_pb2.RUN_STATUS_COMPLETED
    assert run.worker_id == "ts-smoke-worker"
    assert dict(run.results) == {"total_profit": 1.5}
    inventory = server.telemetry.GetMetricHistory(
        telemetry_pb2.GetMetricHistoryRequest(run_id=run.id, metric="inventory")
    )
    assert list(inventory.steps) == [0, 1]
    assert inventory.values[0] == 100 and math.isnan(inventory.values[1])
    profit = server.telemetry.GetMetricHistory(
        telemetry_pb2.GetMetricHistoryRequest(run_id=run.id, metric="profit")
    )
    assert list(profit.values) == [1.5, 0.0]
    assert math.copysign(1.0, profit.values[1]) == -1.0  # -0 from JavaScript stays -0
