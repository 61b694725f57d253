"""The fronts: :class:`Worker` and :class:`AsyncWorker`, thin handles over one run's engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import struct_pb2

from simtrack.client._channel import call_metadata, open_channel
from simtrack.client._convert import to_struct
from simtrack.client.worker import _packing
from simtrack.client.worker._engine import Engine
from simtrack.client.worker._leftovers import LEFTOVERS, LeftoverScan
from simtrack.client.worker._options import Command, CommandCallback, WorkerOptions
from simtrack.client.worker._packing import MetricKindName
from simtrack.client.worker._session import default_worker_id
from simtrack.client.worker._spool import Spool, SpoolLocked, default_spool_dir
from simtrack.errors import FailedPrecondition, SimtrackError

__all__ = ["AsyncWorker", "RunHandle", "Worker"]

log = logging.getLogger(__name__)


def _open_spool(root: Path, run_id: str) -> Spool:
    """The run's spool, once an upload of it (by ``simtrack sync`` or another worker) is over.

    An upload lets go by itself (when done, or after ``close_timeout`` without an ack); a
    worker streaming the run does not: SpoolLocked.
    """
    waiting = False
    while True:
        try:
            return Spool(root, run_id)
        except SpoolLocked as exc:
            if not exc.by_upload:
                raise
            if not waiting:
                log.info("run %s: waiting for the upload of its spool (%s)", run_id, exc.holder)
                waiting = True
        time.sleep(0.1)


class RunHandle:
    """What the body of a ``with Worker(...)`` / ``async with AsyncWorker(...)`` block uses."""

    def __init__(
        self,
        target: str | grpc.Channel,
        run_id: str,
        api_key: str | None = None,
        worker_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        options: WorkerOptions | None = None,
        flush_interval: float | None = None,
        max_buffered_points: int | None = None,
        close_timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        options = options or WorkerOptions()
        overrides: dict[str, Any] = {
            "flush_interval": flush_interval,
            "max_buffered_points": max_buffered_points,
            "close_timeout": close_timeout,
        }
        options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
        self.run_id = run_id
        self.options = options
        self._owns_channel = isinstance(target, str)
        self._channel = open_channel(target, credentials)
        spool_root = Path(spool_dir).expanduser() if spool_dir is not None else default_spool_dir()
        try:
            spool = _open_spool(spool_root, run_id)
        except SpoolLocked as exc:
            self._close_channel()
            raise FailedPrecondition(f"{exc}: another worker is streaming this run") from None
        except BaseException:
            self._close_channel()
            raise
        if spool.has_final_status():
            spool.close()
            self._close_channel()
            raise FailedPrecondition(
                f"run {run_id} already ended: its final status waits in {spool.path}; "
                "upload it with `simtrack sync`"
            )
        self._engine = Engine(
            self._channel,
            run_id,
            metadata=call_metadata(api_key),
            worker_id=worker_id or default_worker_id(),
            spool=spool,
            options=options,
        )
        self._results: struct_pb2.Struct | None = None
        self._started = False
        self._finished = False
        self._leftovers: LeftoverScan | None = None
        if options.upload_leftovers and isinstance(target, str):
            self._leftovers = LeftoverScan(
                target, credentials, call_metadata(api_key), spool_root, run_id, options
            )

    @property
    def spool_path(self) -> Path:
        """The run's spool file."""
        return self._engine.spool.path

    def log_metrics(
        self, step: int, values: Mapping[str, float], *, timestamp: float | None = None
    ) -> None:
        """Buffer one point per metric at ``step`` (non-blocking but for backpressure).

        ``values`` maps metric names (1-200 characters) to numbers; ``timestamp`` (Unix seconds)
        defaults to now. Blocks only while ``max_buffered_points`` points wait to be spooled.
        Raises the helper's final error, if it had one, or an InvalidArgument for a point found
        unusable (not a number) since the last call.
        """
        self._engine.buffer.log_metrics(step, values, timestamp)

    def log_event(
        self,
        step: int,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        agent_id: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Buffer an event (``type`` 1-100 characters, ``payload`` a JSON object)."""
        self._engine.buffer.log_event(step, type, payload, agent_id=agent_id, timestamp=timestamp)

    def progress(self, tick: int, total: int = 0, percent: float = 0.0) -> None:
        """Report progress (the latest call per flush is sent)."""
        self._engine.buffer.progress(tick, total, percent)

    def define_metric(self, name: str, unit: str = "", kind: MetricKindName = "gauge") -> None:
        """Give a metric a unit and kind; call it before the metric's first point."""
        self._engine.buffer.define_metric(name, unit, kind)

    def set_results(self, results: Mapping[str, Any]) -> None:
        """Results (a JSON object) to store on the run with its final status."""
        self._results = to_struct(results, "status.results")

    def on_command(self, name: str, callback: CommandCallback) -> None:
        """Call ``callback(command)`` for each command ``name`` (on the helper's thread).

        Keep callbacks short: acks are read on the same thread. "cancel", "pause" and "resume"
        also set :attr:`cancel_requested` / :attr:`paused`; a command with no callback and no
        built-in meaning is logged and otherwise ignored.
        """
        self._engine.commands.on_command(name, callback)

    @property
    def cancel_requested(self) -> bool:
        """A cancel command arrived: stop soon; leaving the block then reports *stopped*."""
        return self._engine.commands.cancel_requested

    @property
    def paused(self) -> bool:
        """A pause command arrived and no resume since."""
        return self._engine.commands.paused

    @property
    def error(self) -> SimtrackError | None:
        """The error that stopped the helper, if any."""
        return self._engine.error

    def pending(self) -> tuple[int, int]:
        """(messages, points) written to the spool and not yet acknowledged."""
        return self._engine.pending()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._engine.start()
            if self._leftovers is not None:
                LEFTOVERS.start(self._leftovers)

    def _finish(
        self,
        exc: BaseException | None,
        timeout: float | None = None,
    ) -> None:
        """Send the final status, wait for the acks, stop. Raises the helper's error, if any."""
        if self._finished:
            return
        self._finished = True
        engine = self._engine
        if not self._started:  # never streamed: keep what was logged in the spool, send nothing
            engine.request_final(None)
            engine.shutdown(graceful=False)
            self._close_channel()
            return
        stall = self.options.close_timeout if timeout is None else timeout
        final = None
        if engine.error is None:
            final = _packing.final_status(
                exc, cancel_requested=engine.commands.cancel_requested, results=self._results
            )
        engine.request_final(final)
        finished = engine.wait_finished(stall) if final is not None else False
        deleted = engine.shutdown(graceful=finished)
        self._close_channel()
        if not deleted and engine.error is None and engine.left is not None:
            log.warning(
                "run %s: no acknowledgement for %g s while closing: %s%s; the next worker "
                "started with this spool directory, or `simtrack sync`, uploads them",
                self.run_id,
                stall,
                engine.left,
                "" if engine.left.final_status else " (the run stays running until then)",
            )
        if engine.error is not None and engine.error is not exc:
            if exc is None:
                raise engine.error.with_traceback(None)
            log.error("run %s: the helper failed too: %s", self.run_id, engine.error)

    def _close_channel(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _simulate_crash(self) -> None:
        """Stop like a killed process: no final flush, no final status (tests only)."""
        self._finished = True
        self._engine.abandon()
        self._close_channel()


class Worker(RunHandle):
    """A run's telemetry stream, used as a context manager (see :mod:`simtrack.client.worker`).

    ``target`` is ``host:port`` (or a ``grpc.Channel`` to share), ``api_key`` goes out as
    ``authorization: Bearer <key>``, ``worker_id`` defaults to ``host:pid``, ``spool_dir``
    to ``$SIMTRACK_SPOOL_DIR`` or ``~/.cache/simtrack/spool``. ``options``
    (:class:`WorkerOptions`) tunes batching, backpressure and reconnects;
    ``flush_interval``, ``max_buffered_points`` and ``close_timeout`` override its fields.

    Opening a Worker for a run whose spool holds unacknowledged messages (a worker of it died)
    resends them first. Leaving the block sends the final status: *completed*; *stopped* when a
    cancel was requested; *failed* with the exception's message and traceback when one escapes
    (it is re-raised). A final helper error (e.g. PermissionDenied) is raised on exit too.
    """

    def __enter__(self) -> Worker:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    def start(self) -> Worker:
        """Start streaming (what ``with`` does on entry)."""
        self._start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Finish the run as *completed* (or *stopped* after a cancel) and wait for the acks."""
        self._finish(None, timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Spool everything logged so far and wait until the server acknowledged it.

        True when everything is acknowledged, False on timeout or after a helper error.
        """
        return self._engine.flush(timeout)

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while the run is paused; True when it may go on (resumed or cancelled)."""
        return self._engine.commands.wait_if_paused(timeout)


class AsyncWorker(RunHandle):
    """:class:`Worker` for asyncio code: ``async with AsyncWorker(...) as run:``.

    The same engine runs on the same background threads; ``log_metrics`` / ``log_event`` /
    ``progress`` stay plain calls (they do no I/O; under backpressure they block the loop for
    the few milliseconds the flusher needs). ``on_command`` also accepts coroutine functions,
    which run on the event loop that entered the block; an error they raise is logged, like a
    plain callback's. The task's cancellation (what Ctrl-C becomes under ``asyncio.run``) ends
    the run *stopped*, as ``KeyboardInterrupt`` does with :class:`Worker`.
    """

    _loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncWorker:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._finish, exc)

    def on_command(
        self, name: str, callback: Callable[[Command], object | Awaitable[object]]
    ) -> None:
        """Like :meth:`Worker.on_command`; what a callback returns that is awaitable (a
        coroutine function's coroutine) runs on the event loop. An error is logged either way.
        """

        def schedule(command: Command) -> None:
            result = callback(command)  # a plain callback runs here, on the helper's thread
            if inspect.isawaitable(result):
                self._run_on_loop(command, result)

        super().on_command(name, schedule)

    def _run_on_loop(self, command: Command, awaitable: Awaitable[object]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never to run: no "never awaited" warning on top
            log.error(
                "run %s: no event loop to run the callback for command %r",
                self.run_id,
                command.name,
            )
            return

        async def call() -> object:
            return await awaitable

        def report(future: concurrent.futures.Future[object]) -> None:
            if not future.cancelled() and (error := future.exception()) is not None:
                log.error(
                    "run %s: callback for command %r failed",
                    self.run_id,
                    command.name,
                    exc_info=error,
                )

        asyncio.run_coroutine_threadsafe(call(), loop).add_done_callback(report)

    async def flush(self, timeout: float | None = None) -> bool:
        """Spool everything logged so far and wait until the server acknowledged it."""
        return await asyncio.to_thread(self._engine.flush, timeout)

    async def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Wait while the run is paused; True when it may go on."""
        return await asyncio.to_thread(self._engine.commands.wait_if_paused, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Finish the run (completed, or stopped after a cancel) and wait for the acks."""
        await asyncio.to_thread(self._finish, None, timeout)
