"""simtrack's Python client library and command line.

* :class:`Client`: typed calls over the generated stubs (errors as simtrack exceptions).
* :class:`Worker` / :class:`AsyncWorker`: stream a run's telemetry from a simulation, with a
  durable spool, reconnects and commands (see :mod:`simtrack.client.worker`).
* :func:`sync_spool`: upload what workers left in a spool directory (``simtrack sync``), with
  a :class:`SyncedRun` report per run.

The client never imports the server package.
"""

from simtrack.client.client import Client, ComparedSeries, Comparison, MetricHistory
from simtrack.client.rpc_errors import from_rpc_error
from simtrack.client.worker import (
    AsyncWorker,
    Command,
    SyncedRun,
    SyncError,
    Worker,
    WorkerOptions,
    sync_spool,
)

__all__ = [
    "AsyncWorker",
    "Client",
    "Command",
    "ComparedSeries",
    "Comparison",
    "MetricHistory",
    "SyncError",
    "SyncedRun",
    "Worker",
    "WorkerOptions",
    "from_rpc_error",
    "sync_spool",
]
