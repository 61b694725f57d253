"""The ``simtrack`` command.

The commands that talk to a running server (agents, experiments, runs, metrics, history, events,
scenarios) live in :mod:`simtrack.client.cli_api`; ``sync`` is here. The operator's commands
(serve, migrate, tenants, keys, scenarios validate) are the server's: they come from the
``simtrack.subcommands`` entry points, so the client never imports the server, and a worker-only
install (without the ``server`` extra) lists them and says what to install.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points

from simtrack.client.cli_api import Subcommands, add_api_commands
from simtrack.client.cli_options import add_server_options

SUBCOMMANDS_GROUP = "simtrack.subcommands"
SERVER_INSTALL = "pip install 'simtrack[server]'"
# An entry point of SUBCOMMANDS_GROUP: adds its command to the group it is given.
Register = Callable[[Subcommands], None]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload what workers left unacknowledged in a spool directory.

    One line per run: what was uploaded (batches, points, events, the final status) and whether
    the spool was removed; a run not fully uploaded goes to stderr with why, and the exit
    status is 1.
    """
    from simtrack.client import SyncError, sync_spool
    from simtrack.client.worker._spool import default_spool_dir

    spool_dir = args.spool_dir or default_spool_dir()
    try:
        reports = sync_spool(args.target, spool_dir, args.api_key, timeout=args.timeout)
    except SyncError as exc:
        reports = exc.reports
    failed = False
    for _, report in sorted(reports.items()):
        if report.error is None:
            print(report)
        else:
            failed = True
            print(f"simtrack: {report}", file=sys.stderr)
    if not reports:
        print(f"simtrack: nothing to sync in {spool_dir}")
    return 1 if failed else 0


DESCRIPTION = """\
Track simulation and benchmark runs: serve the API, stream runs into it, and find, compare
and look at their results."""
FIRST_STEPS = """\
first steps:
  simtrack serve          the service (SQLite file ./simtrack.db, gRPC on 127.0.0.1:50051,
                          the API over HTTP and the dashboard on http://127.0.0.1:8080/)
  simtrack demo           in another terminal: a simulated run streams in
  simtrack runs list      then look at it: runs get, metrics, history, compare, stats

Each command tells more: simtrack COMMAND --help."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simtrack",
        description=DESCRIPTION,
        epilog=FIRST_STEPS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_commands = _load_server_subcommands()
    _add_server_subcommands(server_commands, {"": commands})  # serve, migrate, tenants, keys

    sync = commands.add_parser(
        "sync", help="upload the telemetry workers left unacknowledged in their spool"
    )
    add_server_options(sync)
    sync.add_argument("--spool-dir", help="default: $SIMTRACK_SPOOL_DIR or ~/.cache/simtrack/spool")
    sync.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="give up on a run after this many seconds without an acknowledgement (default: 60)",
    )
    sync.set_defaults(func=cmd_sync)

    groups = add_api_commands(commands)
    _add_server_subcommands(server_commands, groups)  # scenarios validate
    return parser


def _load_server_subcommands() -> dict[str, Register | ModuleNotFoundError]:
    """The server's subcommands by name (``serve``, ``scenarios.validate``): each one's
    registration, or the missing module that keeps it from loading (no ``server`` extra).
    """
    found: dict[str, Register | ModuleNotFoundError] = {}
    for entry in entry_points(group=SUBCOMMANDS_GROUP):
        if entry.name in found:
            continue
        try:
            found[entry.name] = entry.load()
        except ModuleNotFoundError as exc:
            found[entry.name] = exc
    return found


def _add_server_subcommands(
    loaded: Mapping[str, Register | ModuleNotFoundError], groups: Mapping[str, Subcommands]
) -> None:
    """Add the subcommands whose group (before the last dot of the name; "" at the top) is in
    ``groups``.
    """
    for path, register in loaded.items():
        parent, _, name = path.rpartition(".")
        group = groups.get(parent)
        if group is None:
            continue
        if isinstance(register, ModuleNotFoundError):
            _add_unavailable(group, name, path, register)
        else:
            register(group)


def _add_unavailable(
    group: Subcommands, name: str, path: str, missing: ModuleNotFoundError
) -> None:
    """A command that takes any arguments and only says what to install."""
    command = "simtrack " + path.replace(".", " ")
    sub = group.add_parser(name, help=f"(not installed: {SERVER_INSTALL})", add_help=False)
    module = missing.name or str(missing)
    sub.set_defaults(func=functools.partial(_unavailable, command, module), any_arguments=True)


def _unavailable(command: str, module: str, args: argparse.Namespace) -> int:
    print(
        f"simtrack: `{command}` is an operator command that needs the server's dependencies, "
        f"which are not installed here (no module {module!r}): {SERVER_INSTALL}",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):  # what parse_args would do
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.log_level)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit, where a reader gone would print a traceback
    except BrokenPipeError:  # the reader went away (`simtrack ... | head`): end as tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
