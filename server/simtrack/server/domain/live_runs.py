"""Runs as workers drive them: attaching a worker, commands, watching, and liveness."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from simtrack.errors import FailedPrecondition, InvalidArgument, Unavailable
from simtrack.server.core.commands import CommandMessage
from simtrack.server.core.model import (
    RUN_FINAL,
    RunStatus,
    bounded_text,
    json_object,
    pause_moves,
    require_name,
    set_run_status,
    stands_vanished,
    utcnow,
)
from simtrack.server.core.tenancy import acting_for
from simtrack.server.db.models import Metric, Run
from simtrack.server.domain.experiments import refresh_experiment_status
from simtrack.server.domain.ports import Bus, UnitOfWorkFactory
from simtrack.server.domain.runs import WORKER_ID_MAX, load_run

log = logging.getLogger(__name__)

RESERVED_COMMANDS = frozenset({"cancel", "pause", "resume"})
COMMAND_ARGS_MAX = 4000  # bytes of JSON: commands travel in a PostgreSQL NOTIFY (8000 max)


_CANCEL_NAMESPACE = uuid.UUID("0b7e3c52-8a43-4f0e-bf6f-3f4f3ad1e7c2")


def _command(run_id: str, name: str, args: Mapping[str, Any]) -> CommandMessage:
    return CommandMessage(run_id, str(uuid.uuid4()), name, dict(args))


def _pause(run: Run, name: str) -> CommandMessage:
    """A pause, or the resume that ends it, keeps one id per pause (as a cancel does)."""
    # The instant, not its spelling: a datetime read back may carry another UTC offset.
    paused = f"{run.paused_at.timestamp():.6f}" if run.paused_at else ""
    command_id = str(uuid.uuid5(_CANCEL_NAMESPACE, f"{run.id}/{name}/{paused}"))
    return CommandMessage(run.id, command_id, name, {})


def pending_commands(run: Run) -> list[CommandMessage]:
    """What a worker that (re)connects is told in its welcome: the state the run is in.

    A requested cancel (it outweighs a pause); else a paused run's pause; else, for a run
    resumed since it was paused, that resume, so a worker that was away hears of it too.
    """
    if run.cancel_requested_at is not None:  # told until it ends the run (or always, late)
        return [_cancel(run)]
    if run.status in RUN_FINAL or run.paused_at is None:
        return []
    return [_pause(run, "pause" if run.status == RunStatus.PAUSED else "resume")]


def _cancel(run: Run) -> CommandMessage:
    """A run's cancel keeps one id, so a worker told again on reconnect can tell it is the same;
    and its reason, on every delivery.
    """
    # The instant, not its spelling: a datetime read back may carry another UTC offset.
    requested = f"{run.cancel_requested_at.timestamp():.6f}" if run.cancel_requested_at else ""
    command_id = str(uuid.uuid5(_CANCEL_NAMESPACE, f"{run.id}/{requested}"))
    reason = run.cancel_reason
    return CommandMessage(run.id, command_id, "cancel", {"reason": reason} if reason else {})


def _revive(run: Run, now: datetime) -> None:
    """A run failed as vanished whose worker is back alive: running again, verdict withdrawn."""
    run.status = RunStatus.RUNNING
    run.completed_at = None
    run.duration = None
    run.error_message = ""
    run.error_details = {}
    run.vanished_at = None
    run.revived_at = now


class LiveRuns:
    def __init__(self, uow: UnitOfWorkFactory, bus: Bus) -> None:
        self.uow = uow
        self.bus = bus
        # The liveness clock starts with the process: time while no server ran does not count.
        self.started_at = utcnow()

    async def attach(
        self, run_id: str, worker_id: str, *, replay: bool = False
    ) -> tuple[Run, list[CommandMessage]]:
        """A worker says hello: the run is running from now on (unless it already ended).

        An ended run may still be attached to: its late data is stored (a worker whose final
        ack was lost, a spool uploaded after the run was declared vanished). A live worker
        (not ``replay``) of a run failed only as vanished brings it back to running.
        """
        worker_id = bounded_text("hello.worker_id", worker_id, max_len=WORKER_ID_MAX)
        async with self.uow() as uow:
            run = await load_run(uow, run_id, "hello.run_id")
            run = await uow.runs.get(run.id, for_update=True) or run
            revive = not replay and stands_vanished(run)
            if run.status not in RUN_FINAL or revive:
                now = utcnow()
                if revive:
                    log.info("run %s: its worker, declared vanished, is back", run.id)
                    _revive(run, now)
                    await uow.metrics.unfinalize([run.id])  # its metrics change again
                if run.status == RunStatus.PENDING:
                    set_run_status(run, RunStatus.STARTING)
                if run.status != RunStatus.PAUSED:  # a paused run stays so: the welcome says it
                    set_run_status(run, RunStatus.RUNNING)
                run.worker_id = worker_id or run.worker_id
                run.last_seen_at = now
                await uow.runs.flush()
                await refresh_experiment_status(uow, run.experiment_id)
                await uow.commit()
        with contextlib.suppress(Unavailable):  # watchers re-read on their own timer anyway
            await self.bus.publish_runs([run.id])
        return run, pending_commands(run)

    async def cancel(self, run_id: str, reason: str) -> tuple[Run, CommandMessage]:
        """Ask the worker to stop; a run no worker has attached to stops at once."""
        reason = bounded_text("reason", reason, max_len=1000)
        async with self.uow() as uow:
            run = await load_run(uow, run_id)
            run = await uow.runs.get(run.id, for_update=True) or run
            if run.status in RUN_FINAL:
                raise FailedPrecondition(f"the run already ended ({run.status})")
            if run.status in (RunStatus.PENDING, RunStatus.STARTING):
                set_run_status(run, RunStatus.STOPPED)
                run.error_message = reason
            if run.cancel_requested_at is None:  # a second cancel is the same cancel
                run.cancel_requested_at = utcnow()
                run.cancel_reason = reason
            await uow.runs.flush()
            await refresh_experiment_status(uow, run.experiment_id)
            await uow.commit()
        command = _cancel(run)
        # If not pushed live, the sweeper still stops the run after the grace period.
        await self._push(command)
        return run, command

    async def pause(self, run_id: str) -> tuple[Run, CommandMessage]:
        """Pause a running run: its status says so until resumed, and its worker is told now
        and on every reconnect.
        """
        return await self._pause_or_resume(run_id, RunStatus.PAUSED)

    async def resume(self, run_id: str) -> tuple[Run, CommandMessage]:
        """Resume a paused run: running again, and its worker is told now or on reconnect."""
        return await self._pause_or_resume(run_id, RunStatus.RUNNING)

    async def _pause_or_resume(self, run_id: str, target: RunStatus) -> tuple[Run, CommandMessage]:
        async with self.uow() as uow:
            run = await load_run(uow, run_id)
            run = await uow.runs.get(run.id, for_update=True) or run
            if pause_moves(run.status, target):
                set_run_status(run, target)
                if target == RunStatus.PAUSED:
                    run.paused_at = utcnow()
                # The experiment's status does not change: paused counts as running.
                await uow.runs.flush()
                await uow.commit()
        command = _pause(run, "pause" if target == RunStatus.PAUSED else "resume")
        await self._push(command)
        return run, command

    async def _push(self, command: CommandMessage) -> None:
        """Tell the worker and the run's watchers now, if the bus lets us."""
        try:
            await self.bus.publish_command(command)
            await self.bus.publish_runs([command.run_id])
        except Unavailable as exc:
            # The command's state is committed: the worker is told on its next (re)connect.
            # Not a failure of this call.
            log.warning(
                "%s of run %s stored but not pushed live: %s", command.name, command.run_id, exc
            )

    async def send(self, run_id: str, name: str, args: Mapping[str, Any]) -> CommandMessage:
        """Push a command to the run's worker (live only: a worker not connected misses it)."""
        name = require_name("name", name, max_len=100)
        args = json_object("args", args)
        if len(str(args)) > COMMAND_ARGS_MAX:
            raise InvalidArgument.of("args", f"must be under {COMMAND_ARGS_MAX} bytes")
        async with self.uow() as uow:
            run = await load_run(uow, run_id)
        if run.status in RUN_FINAL:
            raise FailedPrecondition(f"the run already ended ({run.status})")
        command = _command(run.id, name, args)
        await self.bus.publish_command(command)
        return command

    async def send_custom(self, run_id: str, name: str, args: Mapping[str, Any]) -> CommandMessage:
        if name in RESERVED_COMMANDS:
            raise InvalidArgument.of("name", f"{name!r} has its own RPC ({name.title()}Run)")
        return await self.send(run_id, name, args)

    async def snapshot(self, run_id: str) -> tuple[Run, list[Metric]]:
        async with self.uow() as uow:
            run = await load_run(uow, run_id)
            return run, await uow.metrics.for_run(run.id)

    async def sweep(self, heartbeat_timeout: float, cancel_grace: float) -> list[str]:
        """Fail runs whose worker vanished; stop cancelled runs whose worker never confirmed.

        Runs across every tenant, one tenant at a time (row-level security sees one at once).
        """
        now = utcnow()
        silence = now - timedelta(seconds=heartbeat_timeout)
        # Every running run gets a full timeout from this process's start: a worker cannot be
        # heard while no server runs, and reconnects once one does.
        judge_silence = silence >= self.started_at
        changed: list[str] = []
        async with self.uow() as uow:
            tenants = [t.id for t in await uow.access.tenants()]
        for tenant_id in tenants:
            with acting_for(tenant_id):
                async with self.uow() as uow:
                    silent = await uow.runs.silent_since(silence) if judge_silence else []
                    for run in silent:
                        set_run_status(run, RunStatus.FAILED)
                        run.vanished_at = now
                        run.error_message = (
                            f"worker vanished: nothing heard for over {heartbeat_timeout:g}s"
                        )
                    late = await uow.runs.cancelled_before(now - timedelta(seconds=cancel_grace))
                    for run in late:
                        if run.status not in RUN_FINAL:
                            set_run_status(run, RunStatus.STOPPED)
                            run.error_message = run.error_message or (
                                run.cancel_reason or "cancelled (not confirmed)"
                            )
                    touched = {r.id: r for r in (*silent, *late)}
                    await uow.runs.flush()
                    await uow.metrics.finalize([r.id for r in touched.values()])
                    for experiment_id in {r.experiment_id for r in touched.values()}:
                        await refresh_experiment_status(uow, experiment_id)
                    await uow.commit()
                changed.extend(touched)
        if changed:
            await self.bus.publish_runs(changed)
        return changed
