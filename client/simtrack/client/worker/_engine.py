"""One run's helper, wired: buffer, commands, stream session and flusher; its failure and
its shutdown.

``mode="worker"`` is a live run; ``mode="sync"`` only uploads what a spool holds. Threads: the
caller's (``log_*``, into the buffer), the flusher (buffer -> spool, trim, stall watchdog), the
stream thread (connect, read responses, run command callbacks) and gRPC's own request thread
(spool -> wire). Each lock belongs to one module: the buffer's, the stream's (sequencing and
the final error) and the commands' (callbacks); the spool has its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from simtrack.client._channel import Metadata, stream_run
from simtrack.client.worker import _clock
from simtrack.client.worker._buffer import Buffer
from simtrack.client.worker._commands import Commands
from simtrack.client.worker._flusher import Flusher
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._session import Stream
from simtrack.client.worker._spool import Spool
from simtrack.errors import SimtrackError
from simtrack.v1 import telemetry_pb2

__all__ = ["Engine", "Leftover"]

log = logging.getLogger(__name__)

_KEY_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})  # a valid key would do


@dataclass(frozen=True)
class Leftover:
    """What a closed worker (or upload) left in its spool: unacknowledged messages."""

    messages: int
    points: int
    final_status: bool  # the run's final status is among them
    path: Path

    def __str__(self) -> str:
        final = " and the final status" if self.final_status else ""
        return (
            f"{self.messages} message(s) ({self.points} points{final}) not acknowledged, "
            f"kept in {self.path}"
        )


class Engine:
    """Batching, spool and stream of one run; Worker and AsyncWorker are fronts over it.

    The fronts call :attr:`buffer` (``log_*``) and :attr:`commands` directly.
    """

    def __init__(
        self,
        channel: Any,
        run_id: str,
        *,
        metadata: Metadata,
        worker_id: str,
        spool: Spool,
        options: WorkerOptions,
        mode: Literal["worker", "sync"] = "worker",
    ) -> None:
        self.run_id = run_id
        self.spool = spool
        self.options = options
        self._mode = mode
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.left: Leftover | None = None  # what shutdown left in the spool
        self.commands = Commands(run_id, mode=mode, halted=self._halted)
        self.stream = Stream(
            stream_run(channel),
            run_id,
            metadata=metadata,
            worker_id=worker_id,
            spool=spool,
            options=options,
            mode=mode,
            commands=self.commands,
            stop=self._stop,
            wake=self._wake,
            fail=self.fail,
        )
        self.buffer = Buffer(
            run_id, options, wake=self._wake, stop=self._stop, failed=lambda: self.stream.error
        )
        self.flusher = Flusher(
            run_id,
            options,
            self.buffer,
            self.stream,
            stop=self._stop,
            wake=self._wake,
            fail=self.fail,
        )

    def start(self) -> None:
        self.flusher.thread.start()
        self.stream.thread.start()

    @property
    def error(self) -> SimtrackError | None:
        return self.stream.error

    def _halted(self) -> bool:
        return self.stream.error is not None or self._stop.is_set()

    def fail(self, error: SimtrackError) -> None:
        """Stop the helper for good: ``error`` is raised by the next ``log_*`` and on exit."""
        log.error("run %s: %s: %s", self.run_id, error.code_name, error.message)
        if error.code_name in _KEY_REFUSED and self._mode == "worker":
            log.error(
                "run %s: what the server did not acknowledge stays in %s: `simtrack sync` "
                "with a valid API key uploads it",
                self.run_id,
                self.spool.path,
            )
        self.stream.set_error(error)
        self._stop.set()
        self._wake.set()
        self.buffer.release(failed=True)
        self.stream.cancel_call()

    # ------------------------------------------------------------------ closing

    def request_final(self, final: telemetry_pb2.FinalStatus | None) -> None:
        """No more log_* calls; spool ``final`` after what is buffered."""
        self.buffer.close(final)

    def flush(self, timeout: float | None) -> bool:
        """Spool what is buffered and wait until the server acknowledged all of it."""
        deadline = None if timeout is None else _clock.monotonic() + timeout
        if not self.buffer.wait_spooled(deadline, self.flusher.thread.is_alive):
            return False
        return self.stream.wait_acked(deadline)

    def wait_finished(self, stall: float) -> bool:
        """Wait for the last acknowledgement, giving up after ``stall`` s without one."""
        return self.stream.wait_finished(stall)

    def shutdown(self, *, graceful: bool) -> bool:
        """Stop the threads and close the spool; True if the spool file was deleted."""
        streamer, flusher = self.stream.thread, self.flusher.thread
        if graceful:  # let the server end the call after our half-close
            streamer.join(timeout=2.0)
        self._stop.set()
        self._wake.set()
        self.stream.cancel_call()
        for thread in (streamer, flusher):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10.0)
        abandoned = self.flusher.abandoned
        if not abandoned:
            if not flusher.is_alive():
                # Never started, or a log_* call that raced a final error's stop of the
                # flusher (after its last flush) left points in the buffer: spool them too.
                self.flusher.flush_once()
            self.spool.trim(self.stream.acked)
        self.buffer.release(failed=False)
        self.left = self._leftover()
        return self.spool.close(delete_if_empty=not abandoned)

    def _leftover(self) -> Leftover:
        """What the spool holds beyond the last acknowledgement (read before it is closed)."""
        messages, points, _ = self.spool.stats()
        final = messages > 0 and self.spool.has_final_status()
        return Leftover(messages, points, final, self.spool.path)

    def abandon(self) -> None:
        """Die like a killed process would: nothing more is flushed or sent (for tests)."""
        self.flusher.abandoned = True
        self.shutdown(graceful=False)

    def uploaded(self) -> tuple[list[tuple[str, int]], int | None]:
        """Sync mode: (kind, points) of each acknowledged message, and how many there were."""
        return self.stream.uploaded()

    def pending(self) -> tuple[int, int]:
        """(messages, points) in the spool and not acknowledged (as left, once it is closed)."""
        left = self.left
        if left is None:
            left = self._leftover()
        return left.messages, left.points
