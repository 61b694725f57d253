"""Commands the server pushes to a run: cancel, pause, resume and custom ones with callbacks.

The only owner of its lock (the registered callbacks): commands arrive on the stream thread,
callbacks are registered from the caller's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Literal

from google.protobuf import json_format

from simtrack.client.worker import _clock
from simtrack.client.worker._options import Command, CommandCallback
from simtrack.v1 import runs_pb2

__all__ = ["Commands"]

log = logging.getLogger(__name__)

_BUILTIN_COMMANDS = frozenset({"cancel", "pause", "resume"})


class Commands:
    """The run's cancel and pause state and the callbacks of its commands.

    ``halted`` says the helper stopped (a final error, or shut down): nothing to wait for.
    In ``mode="sync"`` (a spool's upload) commands are logged and ignored.
    """

    def __init__(
        self,
        run_id: str,
        *,
        mode: Literal["worker", "sync"],
        halted: Callable[[], bool],
    ) -> None:
        self.run_id = run_id
        self._mode = mode
        self._halted = halted
        self._lock = threading.Lock()
        self._callbacks: dict[str, list[CommandCallback]] = {}
        self._seen: set[str] = set()  # command ids (the stream thread's alone)
        self._cancel = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_if_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (and not cancelled); True when running again."""
        deadline = None if timeout is None else _clock.monotonic() + timeout
        while not self._resumed.is_set() and not self._cancel.is_set():
            if self._halted():
                break
            remaining = 0.2 if deadline is None else min(0.2, deadline - _clock.monotonic())
            if remaining <= 0:
                break
            self._resumed.wait(remaining)
        return self._resumed.is_set() or self._cancel.is_set()

    def on_command(self, name: str, callback: CommandCallback) -> None:
        with self._lock:
            self._callbacks.setdefault(name, []).append(callback)

    def welcome(self, pending: Iterable[runs_pb2.Command]) -> None:
        """A welcome's pending commands: the run's state (paused only if one is a pause)."""
        pending = list(pending)
        if all(command.name != "pause" for command in pending):
            self._resumed.set()  # the welcome tells the run's state: not paused
        for command in pending:
            self.dispatch(command)

    def dispatch(self, message: runs_pb2.Command) -> None:
        """Act on a command (once per id) and run its callbacks (on the stream thread)."""
        if message.id:
            if message.id in self._seen:
                return
            self._seen.add(message.id)
        command = Command(message.id, message.name, json_format.MessageToDict(message.args))
        if self._mode == "sync":
            log.info("run %s: command %r ignored while syncing a spool", self.run_id, command.name)
            return
        log.info("run %s: command %r (id %s)", self.run_id, command.name, command.id)
        if command.name == "cancel":
            self._cancel.set()
            self._resumed.set()  # a paused loop must see the cancel
        elif command.name == "pause":
            self._resumed.clear()
        elif command.name == "resume":
            self._resumed.set()
        with self._lock:
            callbacks = list(self._callbacks.get(command.name, ()))
        if not callbacks and command.name not in _BUILTIN_COMMANDS:
            log.warning(
                "run %s: unknown command %r (id %s, args %s): no callback registered",
                self.run_id,
                command.name,
                command.id,
                command.args,
            )
        for callback in callbacks:
            try:
                callback(command)
            except Exception:
                log.exception("run %s: callback for command %r failed", self.run_id, command.name)
