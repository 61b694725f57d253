"""The real server inside the test process: ``app.start`` (what ``simtrack serve`` runs) on a
thread with an event loop of its own, on a real loopback port and a real database.

It starts in a fraction of a process's time (no interpreter, no imports), which is what the API
tests need; what only a process has (signals, a crash, exit codes, its stderr) stays with
:class:`~tests.support.processes.ServerProcess`. The server's log records (those of its thread
and of its loop's worker threads) are kept as text, so teardown can look for tracebacks in
them as it does in a process's stderr.

Nothing the server keeps is global: its metrics live in a registry of its own, and the caller
(the principal, a tenancy contextvar) starts unset in the server's thread, as in a process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from simtrack.server import app
from simtrack.server.config import Settings
from tests.support.processes import (
    HEALTH_CHECK_INTERVAL,
    LOOPBACK_ANY_PORT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    ServerFailed,
)

_numbers = itertools.count()
log = logging.getLogger("simtrack.inprocess")  # under "simtrack": INFO, as the server's own
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as `simtrack serve` logs


class ExplicitSettings(Settings):
    """Settings from the arguments only: no SIMTRACK_* variables, no YAML file (as the process
    fixture removes a developer's SIMTRACK_* settings from the server's environment).
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _LogLevel:
    """Lets the server's INFO records through (as ``simtrack serve`` does) while any in-process
    server runs; the previous level comes back after the last one.
    """

    _lock = threading.Lock()
    _users = 0
    _saved = logging.NOTSET

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._saved = logging.getLogger("simtrack").level
                logging.getLogger("simtrack").setLevel(logging.INFO)
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                logging.getLogger("simtrack").setLevel(cls._saved)


# grpc.aio's one completion queue wakes every event loop bound to it (grpc/grpc#25364): in a
# test process, the loops of servers on threads and of the tests' clients. An event meant for
# a loop that has since closed then fails in another loop's callback ("Event loop is closed").
# A server process has one loop: this is the test process's, not a server's, fault.
_CROSS_LOOP = "PollerCompletionQueue._handle_events"


class _Capture(logging.Handler):
    """Formats the records logged by one server's threads into ``lines``."""

    def __init__(self, thread_prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.thread_prefix = thread_prefix
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio" and _CROSS_LOOP in record.getMessage():
            return False
        return (record.threadName or "").startswith(self.thread_prefix)

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record) + "\n"
        with self.lock or threading.Lock():
            self.lines.append(text)


class InProcessServer:
    """``app.start(settings)`` on a thread of its own; ``stop`` ends it as SIGTERM would."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        listen: str = LOOPBACK_ANY_PORT,
    ) -> None:
        self.database_url = database_url
        values: dict[str, Any] = {
            "database_url": database_url,
            "listen": listen,
            "http_listen": LOOPBACK_ANY_PORT,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "compaction_interval": 0,  # as the process servers run (tests/support/processes.py)
            "artifacts_dir": workdir / "simtrack-artifacts",  # a process's is under its cwd
        }
        for name, value in (env or {}).items():
            assert name.startswith("SIMTRACK_"), f"not a setting: {name}"
            values[name.removeprefix("SIMTRACK_").lower()] = value
        self.settings = ExplicitSettings(**values)
        self.name = f"simtrack-inprocess-{next(_numbers)}"
        self.address = ""
        self.http_address = ""  # host:port of the API over HTTP ("": off)
        self.exit_code: int | None = None
        self.leaked: list[str] = []  # tasks of the server still running after its stop
        self._capture = _Capture(self.name)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def artifacts_dir(self) -> Path:
        return self.settings.artifacts_dir

    @property
    def stderr(self) -> str:
        """What the server has logged so far (tracebacks included), as a process's stderr."""
        with self._capture.lock or threading.Lock():
            return "".join(self._capture.lines)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Start serving; the ``host:port`` it listens on. ServerFailed if it cannot start."""
        _LogLevel.acquire()
        logging.getLogger().addHandler(self._capture)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServerFailed(f"{self.name} did not start within {timeout}s:\n{self.stderr}")
        if not self.address:
            self._thread.join(timeout)
            self._release_logging()
            raise ServerFailed(f"{self.name} did not start:\n{self.stderr}")
        return self.address

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop gracefully (as on SIGTERM: going-away to streams, commit, close); 0 if that
        went cleanly, 1 if it raised (the traceback is then in ``stderr``). Idempotent.
        """
        if self._thread is None or self.exit_code is not None:
            return self.exit_code or 0
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout + self.settings.shutdown_grace)
        if self._thread.is_alive():
            raise ServerFailed(f"{self.name} did not stop within {timeout}s:\n{self.stderr}")
        self._release_logging()
        return self.exit_code or 0

    def kill(self) -> None:
        raise ServerFailed("an in-process server cannot be killed: use a `simtrack serve` process")

    def _release_logging(self) -> None:
        if self._capture in logging.getLogger().handlers:
            logging.getLogger().removeHandler(self._capture)
            _LogLevel.release()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
            self.exit_code = 1 if self.leaked else 0
        except BaseException:  # noqa: BLE001 - reported through the log, as a process would
            log.error("%s failed:\n%s", self.name, traceback.format_exc())
            self.exit_code = 1
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        # Its worker threads' names tell its log records apart from other servers'.
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix=self.name))
        running = await app.start(self.settings)
        self._loop, self._stop = loop, asyncio.Event()
        host = self.settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{running.port}"
        if running.http is not None:
            self.http_address = "{}:{}".format(*running.http.address)
        log.info("%s serving on %s", self.name, self.address)
        self._ready.set()
        await self._stop.wait()
        await running.stop(self.settings.shutdown_grace)
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
        if left:
            # The calls grpc's stop cancelled may still be cleaning up (a query cancelled on the
            # database takes a round trip, longer on a loaded machine), as a process's
            # asyncio.run would let them; a task still running after that is a leak.
            await asyncio.wait(left, timeout=5)
            left = [task for task in left if not task.done()]
        if left:  # a leak: something the server started outlived its stop
            self.leaked = [repr(task) for task in left]
            log.error("tasks left running after stop: %s", self.leaked)
