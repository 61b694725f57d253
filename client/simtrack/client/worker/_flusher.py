"""The flusher thread: buffer -> packing -> spool, when woken (a full buffer, a flush asked
for, closing) or on a timer: every ``flush_interval`` for a run that logs enough points, at
most ``max_flush_interval`` apart for one that logs a little (``Buffer.flush_due``).

It owns no lock: it takes the buffer under the buffer's, appends to the spool under the
stream's. Between two flushes it trims acknowledged messages from the spool and watches for
a stream that stopped answering.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from simtrack.client.worker import _packing
from simtrack.client.worker._buffer import Buffer
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._packing import Message
from simtrack.client.worker._session import Stream
from simtrack.errors import SimtrackError

__all__ = ["Flusher"]

log = logging.getLogger(__name__)


class Flusher:
    """Moves what the buffer holds into the spool, on its own thread.

    ``fail`` stops the helper (a broken spool: nothing can be made durable any more).
    """

    def __init__(
        self,
        run_id: str,
        options: WorkerOptions,
        buffer: Buffer,
        stream: Stream,
        *,
        stop: threading.Event,
        wake: threading.Event,
        fail: Callable[[SimtrackError], None],
    ) -> None:
        self.run_id = run_id
        self.options = options
        self._buffer = buffer
        self._stream = stream
        self._stop = stop
        self._wake = wake
        self._fail = fail
        self.abandoned = False  # died like a killed process: no last flush
        self.thread = threading.Thread(
            target=self._run, name=f"simtrack-flush-{run_id[:8]}", daemon=True
        )

    def _run(self) -> None:
        interval = self.options.flush_interval
        try:
            while not self._stop.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._buffer.flush_due(interval):
                    self.flush_once()
                self._stream.trim()
                self._stream.watchdog()
            if not self.abandoned:
                self.flush_once()  # keep what is buffered: the spool outlives us
        except Exception as exc:  # a broken spool: nothing can be made durable any more
            log.exception("run %s: flusher failed", self.run_id)
            self._fail(SimtrackError(f"worker spool failed: {exc}"))

    def flush_once(self) -> None:
        """Spool everything buffered now (on the flusher's thread, or once it is gone)."""
        taken = self._buffer.take()
        try:
            messages: list[Message] = []
            if taken.cols:
                packed, rejected = _packing.pack_metrics(
                    taken.cols,
                    taken.units,
                    points_per_series=self.options.points_per_series,
                    max_series=self.options.max_series_per_batch,
                    max_points=self.options.max_points_per_batch,
                )
                for error in rejected:
                    self._buffer.defer(error)
                messages.extend(packed)
            if taken.events:
                messages.extend(
                    _packing.pack_events(taken.events, max_events=self.options.max_events_per_batch)
                )
            if taken.progress is not None:
                messages.append(_packing.progress_message(taken.progress))
            if taken.final is not None:
                messages.append(_packing.status_message(taken.final))
            if messages:
                self._stream.append(messages, taken.final is not None)
        finally:
            self._buffer.spooled(taken)
