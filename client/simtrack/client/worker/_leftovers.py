"""Uploading, in the background, the spools other runs left where a worker starts."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from simtrack.client._channel import Metadata, open_channel
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._spool import spool_path, spooled_runs
from simtrack.client.worker._sync import upload_spool
from simtrack.errors import Unavailable

__all__ = ["LEFTOVERS", "LeftoverScan", "LeftoverUploads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeftoverScan:
    """Where a starting worker looks for the spools of other runs, and how to upload them."""

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: Metadata
    root: Path
    own_run: str
    options: WorkerOptions


class LeftoverUploads:
    """Uploads, on a background thread, the spools other runs left in a spool directory.

    A worker that starts looks for them (``WorkerOptions.upload_leftovers``): what a closing
    that gave up left, or a killed worker. One scan per directory at a time in a process; a
    spool is uploaded or refused once per process (one whose upload stalled is tried again by
    the next worker that starts); the spool's file lock keeps two processes (or a worker of the
    run, or ``simtrack sync``) off a spool being uploaded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scanning: set[Path] = set()
        self._settled: set[Path] = set()  # spool files uploaded or refused by the server

    def start(self, scan: LeftoverScan) -> threading.Thread | None:
        with self._lock:
            if scan.root in self._scanning:
                return None
            runs = [
                run_id
                for run_id in spooled_runs(scan.root)
                if run_id != scan.own_run and spool_path(scan.root, run_id) not in self._settled
            ]
            if not runs:
                return None
            self._scanning.add(scan.root)
        thread = threading.Thread(
            target=self._upload, args=(scan, runs), name="simtrack-leftovers", daemon=True
        )
        thread.start()
        return thread

    def _upload(self, scan: LeftoverScan, runs: list[str]) -> None:
        channel = open_channel(scan.target, scan.credentials)
        try:
            for run_id in runs:
                report = upload_spool(
                    channel,
                    scan.root,
                    run_id,
                    metadata=scan.metadata,
                    options=scan.options,
                    stall=scan.options.close_timeout,
                )
                if report.in_use:
                    continue
                if not isinstance(report.error, Unavailable):  # done, or refused for good
                    with self._lock:
                        self._settled.add(spool_path(scan.root, run_id))
                if report.error is None:
                    log.info("uploaded the spool a previous worker left: %s", report)
                else:
                    log.warning(
                        "could not upload the spool a previous worker left: %s "
                        "(`simtrack sync` tries again)",
                        report,
                    )
        except Exception:  # a bug of ours must not reach the run; the spools stay
            log.exception("uploading the spools left in %s failed", scan.root)
        finally:
            channel.close()
            with self._lock:
                self._scanning.discard(scan.root)


LEFTOVERS = LeftoverUploads()
