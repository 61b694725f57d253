"""The worker helper: stream a run's telemetry to simtrack from inside a simulation.

::

    from simtrack.client import Worker

    with Worker("127.0.0.1:50051", run_id) as run:
        for tick in range(total):
            ...
            run.log_metrics(tick, {"profit": profit, "inventory": stock})  # never waits on I/O
            run.log_event(tick, "agent_action", {"price": 9.99})
            run.progress(tick + 1, total)
            if run.cancel_requested:
                break
    # completed; stopped after a cancel; failed (and re-raised) when an exception escaped

How it works
------------
* ``log_metrics`` appends to per-metric columns (steps, values, timestamps) in memory; it takes
  a lock for a few microseconds and returns. It does no I/O.
* A background *flusher* thread takes the columns when a size threshold is reached
  (``points_per_series`` points per metric, default 1,000) or on a timer: every
  ``flush_interval`` (0.2 s) when at least ``min_flush_points`` (500) points and events were
  logged since the last flush, otherwise once the oldest of them is ``max_flush_interval``
  (1 s) old. It packs them into ``MetricBatch`` messages (at most ``max_series_per_batch``
  series and ``points_per_series`` points per series each), gives each message the run's next
  sequence number and writes it to the *spool*, an SQLite file on disk
  (``simtrack.client.worker._spool``), before anything is sent.
* A background *stream* thread (the helper's thread) keeps ``StreamRun`` open:
  hello, then everything in the spool above the watermark the server's welcome reports, with at
  most ``max_in_flight`` (32) messages unacknowledged; each ack deletes what it covers from the
  spool. Commands arrive on this thread and callbacks run on it. When the stream breaks (or
  the server says it is going away) the thread reconnects with exponential backoff and full
  jitter (capped at ``backoff_cap``, 1 s; gRPC's own reconnect backoff is capped at 1 s on the
  channels the helper opens, so a restarted server has its workers back within a second or
  two), says hello again and resends whatever is not acknowledged. Heartbeats keep an idle
  stream alive at the interval the welcome asks for.
* Exiting the ``with`` block sends the final status and waits until the server acknowledged
  everything, then deletes the spool file. It waits as long as acks keep coming (a loaded
  server is slow, not gone) and gives up after ``close_timeout`` seconds without one, with a
  warning that says what it left in the spool (messages, points, whether the final status).

Durability: what is in the spool survives the death of the worker process (even ``kill -9``):
a later ``Worker`` for the same run with the same ``spool_dir``, or ``simtrack sync``
(:func:`sync_spool`), uploads what the server never acknowledged, exactly once. So does any
worker that starts with the same ``spool_dir``: it uploads the spools other runs left there
in the background (``upload_leftovers``), each spool by one process at a time (its file
lock). Only points logged in the last ``flush_interval`` before the death (0.2 s; the last
``max_flush_interval``, 1 s, for a run logging less than ``min_flush_points`` per
``flush_interval``; never more than ``max_buffered_points``) are in memory alone.

Flush policy, the trade-off: a message costs the server about as much as a few hundred points
in it, so a fleet of small writers (10 metrics at 10 ticks/s each) costs five times less server
CPU per point with one message a second than with five. The price, for such a run only: its
points show up to a second later in live views, and a second of them (not 0.2 s) is in memory
alone. ``WorkerOptions(max_flush_interval=0.2)`` restores the 0.2 s cadence for every run;
``Worker.flush()`` and the end of the run never wait for the timer.

Backpressure: memory is bounded. Points logged but not yet written to the spool are counted;
when they reach ``max_buffered_points`` (default 100,000), ``log_metrics`` / ``log_event``
**block** until the flusher has written the previous batch to the spool (milliseconds, unless
the disk is stuck), so the buffer never exceeds that bound by more than one call's points. The
network never blocks the caller: a slow or absent server only makes the spool file grow.

Errors: transient stream failures are retried for ever (the data waits in the spool). Final
ones (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION,
ABORTED -- another worker took the run over --, UNIMPLEMENTED, ...) stop the helper: the mapped
:class:`~simtrack.errors.SimtrackError` is raised by the next ``log_*`` call and on exit, and
the unsent messages stay in the spool. A key revoked while the stream is open ends it with
UNAUTHENTICATED (within the server's key cache interval); ``simtrack sync`` with a valid key
uploads what waits in the spool.

Layout (private modules; each lock has one owner)
--------------------------------------------------
``_fronts`` (Worker, AsyncWorker) over ``_engine`` (wiring, failure, shutdown), which composes
``_buffer`` (log_* calls and backpressure: the buffer's lock), ``_session`` (StreamRun calls:
hello, welcome, window, acks, heartbeats, backoff; the sequencing condition), ``_commands``
(cancel / pause / resume and callbacks: their lock) and ``_flusher`` (buffer -> spool);
``_packing`` (pure: values -> messages), ``_spool`` (the durable SQLite spool), ``_sync``
(:func:`sync_spool`), ``_leftovers`` (other runs' spools, uploaded at start-up), ``_options``.
The channel and the call metadata come from ``simtrack.client._channel``, shared with
:class:`~simtrack.client.Client`.
"""

from simtrack.client.worker._engine import Leftover
from simtrack.client.worker._fronts import AsyncWorker, Worker
from simtrack.client.worker._options import Command, WorkerOptions
from simtrack.client.worker._sync import SyncedRun, SyncError, sync_spool

__all__ = [
    "AsyncWorker",
    "Command",
    "Leftover",
    "SyncError",
    "SyncedRun",
    "Worker",
    "WorkerOptions",
    "sync_spool",
]
