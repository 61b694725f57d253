"""Uploading what spools hold (``simtrack sync``, and a worker's leftovers at start-up)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from simtrack.client._channel import Metadata, call_metadata, open_channel
from simtrack.client.worker._engine import Engine, Leftover
from simtrack.client.worker._options import WorkerOptions
from simtrack.client.worker._session import default_worker_id
from simtrack.client.worker._spool import Spool, SpoolLocked, default_spool_dir, spooled_runs
from simtrack.errors import SimtrackError, Unavailable

__all__ = ["SyncError", "SyncedRun", "sync_spool", "upload_spool"]


@dataclass(frozen=True)
class SyncedRun:
    """What uploading one run's spool did (:func:`sync_spool`, or a worker at start-up)."""

    run_id: str
    #: Messages the server acknowledged in this upload, and what they held.
    messages: int = 0
    metric_batches: int = 0
    points: int = 0
    event_batches: int = 0
    events: int = 0
    final_status: bool = False
    #: Messages the server had committed before (a lost ack): not sent again.
    already_stored: int = 0
    #: What stays in the spool; None when the spool was removed (everything acknowledged).
    left: Leftover | None = None
    #: Why not everything was uploaded.
    error: Exception | None = None
    #: Another process holds the spool (a live worker, or another upload): not touched.
    in_use: bool = False

    @classmethod
    def of(
        cls,
        run_id: str,
        uploaded: list[tuple[str, int]],
        *,
        already_stored: int,
        left: Leftover | None,
        error: Exception | None,
    ) -> SyncedRun:
        def count(kind: str) -> tuple[int, int]:
            sizes = [points for k, points in uploaded if k == kind]
            return len(sizes), sum(sizes)

        metric_batches, points = count("metrics")
        event_batches, events = count("events")
        return cls(
            run_id,
            messages=len(uploaded),
            metric_batches=metric_batches,
            points=points,
            event_batches=event_batches,
            events=events,
            final_status=count("status")[0] > 0,
            already_stored=already_stored,
            left=left,
            error=error,
        )

    def __str__(self) -> str:
        if self.in_use:
            return f"{self.run_id}: in use by another process (a live worker or upload); skipped"
        final = ", the final status" if self.final_status else ""
        text = (
            f"{self.run_id}: {self.messages} message(s) uploaded: {self.metric_batches} metric "
            f"batch(es) ({self.points} points), {self.event_batches} event batch(es) "
            f"({self.events} events){final}"
        )
        if self.already_stored:
            text += f"; {self.already_stored} were already stored"
        if self.error is not None:
            reason = getattr(self.error, "code_name", type(self.error).__name__)
            text += f"; {reason}: {self.error}"
        return text + (f"; {self.left}" if self.left is not None else "; spool removed")


class SyncError(SimtrackError):
    """:func:`sync_spool` could not upload everything; ``reports`` says per run what it did."""

    def __init__(self, reports: dict[str, SyncedRun]) -> None:
        self.reports = reports
        self.errors = {run: r.error for run, r in reports.items() if r.error is not None}
        text = "; ".join(f"{run}: {err}" for run, err in self.errors.items())
        super().__init__(f"could not sync {len(self.errors)} run(s): {text}")


def sync_spool(
    target: str | grpc.Channel,
    spool_dir: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    *,
    timeout: float = 60.0,
    options: WorkerOptions | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> dict[str, SyncedRun]:
    """Upload every run left in a spool directory; what was done, per run.

    Runs whose spool another process holds (a live worker, another upload) are skipped and
    reported ``in_use``. A spool is removed only once the server acknowledged every message in
    it; each run's upload gives up after ``timeout`` seconds without an acknowledgement.
    Nothing is added to a run: if its worker died before sending a final status, the run ends
    by the server's heartbeat timeout (or by a new worker for it). Raises :class:`SyncError`
    (with every run's report) when something could not be uploaded.
    """
    root = Path(spool_dir).expanduser() if spool_dir is not None else default_spool_dir()
    options = options or WorkerOptions()
    channel = open_channel(target, credentials)
    try:
        reports = {
            run_id: upload_spool(
                channel,
                root,
                run_id,
                metadata=call_metadata(api_key),
                options=options,
                stall=timeout,
            )
            for run_id in spooled_runs(root)
        }
    finally:
        if isinstance(target, str):
            channel.close()
    if any(report.error is not None for report in reports.values()):
        raise SyncError(reports)
    return reports


def upload_spool(
    channel: Any,
    root: Path,
    run_id: str,
    *,
    metadata: Metadata,
    options: WorkerOptions,
    stall: float,
) -> SyncedRun:
    """Upload what one run's spool holds (unless another process holds it)."""
    try:
        spool = Spool(root, run_id, holder="upload")
    except SpoolLocked:
        return SyncedRun(run_id, in_use=True)
    except (ValueError, OSError) as exc:
        return SyncedRun(run_id, error=exc)
    waiting = spool.stats()[0]
    if waiting == 0:
        spool.close(delete_if_empty=True)
        return SyncedRun(run_id)
    engine = Engine(
        channel,
        run_id,
        metadata=metadata,
        worker_id=f"sync:{default_worker_id()}",
        spool=spool,
        options=options,
        mode="sync",
    )
    engine.start()
    finished = engine.wait_finished(stall)
    deleted = engine.shutdown(graceful=finished)
    error: Exception | None = engine.error
    if error is None and not finished:
        error = Unavailable(f"no acknowledgement for {stall:g} s")
    uploaded, to_send = engine.uploaded()
    return SyncedRun.of(
        run_id,
        uploaded,
        already_stored=0 if to_send is None else waiting - to_send,
        left=None if deleted else engine.left,
        error=error,
    )
