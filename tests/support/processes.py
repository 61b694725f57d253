"""Launching ``simtrack``: the server as a subprocess (``simtrack serve``), the CLI as users do.

One launcher for the e2e tests and the benchmarks: start the command, drain its stderr on a
thread (optionally into a log file too), learn the address from ``simtrack serving on
HOST:PORT``, stop it with SIGTERM (SIGKILL after a timeout). Nothing here depends on pytest:
failures raise :class:`ServerFailed` with the server's log in the message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

SIMTRACK = Path(sys.executable).parent / "simtrack"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HEALTH_CHECK_INTERVAL = "0.2"
CLI_TIMEOUT = 60.0
LOOPBACK_ANY_PORT = "127.0.0.1:0"
SERVING = re.compile(r"simtrack serving on (?P<address>\S+:\d+)")
HTTP_SERVING = re.compile(r"simtrack http on (?P<address>\S+:\d+)")
# The CLI's entry point run by this interpreter: it sees this process's PYTHONPATH even where
# no ``simtrack`` script is installed next to it (the benchmarks run a worktree's code so).
_CLI_MAIN = "import sys; from simtrack.client.cli import main; sys.exit(main(sys.argv[1:]))"


class ServerFailed(Exception):
    """The server did not start, did not exit, or ignored SIGTERM; the message holds its log."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SIMTRACK_* settings (a developer's shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMTRACK_")}
    env.update(extra)
    return env


def simtrack_command(*args: str) -> list[str]:
    """``simtrack ARGS`` run by this interpreter (``python -c``), not the installed script."""
    return [sys.executable, "-c", _CLI_MAIN, *args]


def serve_command(
    database_url: str, listen: str = LOOPBACK_ANY_PORT, simtrack: Sequence[str] = (str(SIMTRACK),)
) -> list[str]:
    """``simtrack serve`` on ``listen`` and ``database_url``; ``simtrack``: how to run the CLI."""
    return [*simtrack, "serve", "--listen", listen, "--database-url", database_url]


class ServerProcess:
    """One server subprocess (``simtrack serve``, or any command logging ``simtrack serving on``);
    its stderr is drained into a buffer (and ``log_path``, if given) on a thread.
    """

    def __init__(
        self,
        command: Sequence[str],
        cwd: Path,
        env: dict[str, str],
        database_url: str = "",
        log_path: Path | None = None,
        name: str = "the server process",
        merge_stdout: bool = False,
    ) -> None:
        self.command = list(command)
        self.name = name  # for messages
        self.merge_stdout = merge_stdout  # its stdout into the same log (else discarded)
        self.cwd = cwd
        self.env = env
        self.database_url = database_url
        self.log_path = log_path
        self.ignored_sigterm = False
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._serving = threading.Event()
        self._address = ""
        self.http_address = ""  # host:port of the API over HTTP, once serving ("": off)
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    @classmethod
    def simtrack_serve(
        cls,
        database_url: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        listen: str = LOOPBACK_ANY_PORT,
    ) -> ServerProcess:
        """``simtrack serve`` as the tests run it: inherited SIMTRACK_* settings (a developer's
        shell) removed so they cannot change what is tested, then ``env`` on top.
        """
        # Compaction off unless a test turns it on: tests read chunks back as written.
        # HTTP on a free port of its own: servers run side by side.
        full_env = clean_env(
            SIMTRACK_HEALTH_CHECK_INTERVAL=HEALTH_CHECK_INTERVAL,
            SIMTRACK_COMPACTION_INTERVAL="0",
            SIMTRACK_HTTP_LISTEN=LOOPBACK_ANY_PORT,
        )
        full_env.update(env or {})
        command = serve_command(database_url, listen)
        return cls(command, cwd, full_env, database_url, name="simtrack serve")

    def start(self) -> None:
        log: IO[str] | None = None
        if self.log_path is not None:
            log = open(self.log_path, "w", errors="replace")  # noqa: SIM115 - the drain closes it
        self._process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.merge_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.merge_stdout else subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._drain = threading.Thread(target=self._read_stderr, args=(log,), daemon=True)
        self._drain.start()

    def _read_stderr(self, log: IO[str] | None) -> None:
        output = self.process.stdout if self.merge_stdout else self.process.stderr
        assert output is not None
        try:
            for line in output:
                with self._lock:
                    self._lines.append(line)
                if log is not None:
                    log.write(line)
                    log.flush()
                if http := HTTP_SERVING.search(line):
                    self.http_address = http["address"]
                match = SERVING.search(line)
                if match and not self._serving.is_set():
                    self._address = match["address"]
                    self._serving.set()
        finally:
            if log is not None:
                log.close()

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def artifacts_dir(self) -> Path:
        """Where the server keeps artifact files (a relative setting is under its cwd)."""
        return self.cwd / self.env.get("SIMTRACK_ARTIFACTS_DIR", "simtrack-artifacts")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        """Everything the server has logged so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_serving(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The ``host:port`` the server listens on, once it says it is serving."""
        deadline = time.monotonic() + timeout
        while not self._serving.wait(0.05):
            if self.process.poll() is not None:
                self._finish_drain()
                if self._serving.is_set():
                    break
                raise ServerFailed(
                    f"{self.name} exited with {self.process.returncode} before serving:\n"
                    f"{self.stderr}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.name} did not report serving within {timeout}s:\n{self.stderr}"
                )
        return self._address

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Wait for the process to end by itself (e.g. a refused start); its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ServerFailed(
                f"{self.name} still running after {timeout}s:\n{self.stderr}"
            ) from None
        self._finish_drain()
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` (``ignored_sigterm`` tells); the exit code.

        Idempotent; a process never started counts as exited with 0.
        """
        if self._process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.ignored_sigterm = True
                self.kill()
        self._finish_drain()
        return self.process.returncode

    def kill(self) -> None:
        """``kill -9`` now (a crash), and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def _finish_drain(self) -> None:
        if self._drain is not None:
            self._drain.join(5)


SimtrackCli = Callable[..., "subprocess.CompletedProcess[str]"]


class CliFailed(Exception):
    """``simtrack ARGS`` exited with an error where success was expected."""


def run_simtrack(
    *args: str, database_url: str | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``simtrack ARGS [--database-url URL]`` as a user runs it; CliFailed on a bad exit.

    ``env``: SIMTRACK_* settings for the command (e.g. SIMTRACK_TARGET for the client commands).
    """
    database = ["--database-url", database_url] if database_url is not None else []
    shell = clean_env(**env)
    shell.pop("COLUMNS", None)  # piped, as a user's `| grep`: tables at their own width
    result = subprocess.run(
        [str(SIMTRACK), *args, *database],
        env=shell,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        raise CliFailed(
            f"simtrack {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result
