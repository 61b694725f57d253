"""A worker-only install: ``pip install .`` in a fresh virtualenv, without the ``server`` extra.

It must give a working client and worker (``simtrack demo`` streams a run into a real server)
and none of the server's dependencies; the operator commands are still listed, and say what to
install. The virtualenv is built once for the module (pip's cache makes it ~20-60 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simtrack.v1 import runs_pb2
from tests.support import Server, clean_env

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 120
SERVER_ONLY = ("sqlalchemy", "psycopg", "aiosqlite", "alembic", "pydantic_settings")
EXTRAS_ONLY = (*SERVER_ONLY, "prometheus_client", "grpc_health", "grpc_reflection", "matplotlib")


def _run(*command: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run from the virtualenv's folder: the checkout's own folders (alembic/) are not on the
    path there, as they would be from its root.
    """
    bin_dir = Path(command[0]).parent
    return subprocess.run(
        [str(part) for part in command],
        cwd=bin_dir.parent,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def worker_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a virtualenv with `pip install .` (base dependencies only)."""
    venv = tmp_path_factory.mktemp("worker") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT)
    bin_dir = venv / "bin"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if install.returncode != 0:
        reason = f"pip install . failed (no package index reachable?):\n{install.stderr}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return bin_dir


def test_a_worker_install_has_the_client_and_none_of_the_servers_dependencies(
    worker_venv: Path,
) -> None:
    check = textwrap.dedent(
        f"""
        import importlib.util
        from simtrack.client import AsyncWorker, Client, Worker
        from simtrack.errors import SimtrackError
        from simtrack.v1 import telemetry_pb2
        present = [m for m in {EXTRAS_ONLY!r} if importlib.util.find_spec(m) is not None]
        print("present:", present)
        """
    )
    result = _run(worker_venv / "python", "-c", check)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "present: []"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_worker_install_streams_a_run(worker_venv: Path, server: Server) -> None:
    result = _run(
        worker_venv / "simtrack",
        "demo",
        "--ticks",
        "5",
        "--tick-seconds",
        "0",
        "--spool-dir",
        str(worker_venv.parent / "spool"),
        SIMTRACK_TARGET=server.address,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = server.runs.ListRuns(runs_pb2.ListRunsRequest()).runs
    assert run.status == runs_pb2.RUN_STATUS_COMPLETED
    assert run.current_tick == 5


def test_operator_commands_are_listed(worker_venv: Path) -> None:
    listed = _run(worker_venv / "simtrack", "--help")
    assert listed.returncode == 0, listed.stderr
    for command in ("serve", "migrate", "tenants", "keys"):  # listed, not only named below
        assert re.search(rf"^ +{command} +\S", listed.stdout, re.MULTILINE), command
    assert "validate" in _run(worker_venv / "simtrack", "scenarios", "--help").stdout


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("serve", []),
        ("migrate", ["--database-url", "sqlite:///x.db"]),
        ("tenants", ["list"]),
        ("keys", ["create", "--tenant", "t", "--help"]),
        ("scenarios validate", ["a.yaml"]),
    ],
)
def test_operator_commands_say_what_to_install(
    worker_venv: Path, command: str, arguments: list[str]
) -> None:
    result = _run(worker_venv / "simtrack", *command.split(), *arguments)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"simtrack: `simtrack {command}` is an operator command")
    assert result.stderr.strip().endswith(": pip install 'simtrack[server]'"), result.stderr


def test_a_png_plot_says_what_to_install(worker_venv: Path) -> None:
    result = _run(worker_venv / "simtrack", "history", "run-id", "profit", "--png", "plot.png")

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == "simtrack: --png needs matplotlib: pip install 'simtrack[plot]'"
