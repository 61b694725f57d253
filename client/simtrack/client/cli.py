"""The ``simtrack`` command.

``serve`` and ``migrate`` run server code, imported only when those commands run: the client
library itself never depends on the server. The commands that talk to a running server (agents,
experiments, runs, metrics, history, events, scenarios) live in :mod:`simtrack.client.cli_api`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from simtrack.client.cli_api import add_api_commands, add_server_options


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> object:
    from pydantic import ValidationError

    from simtrack.server.config import CONFIG_FILE_VARIABLE, Settings

    if getattr(args, "config", None):
        os.environ[CONFIG_FILE_VARIABLE] = args.config
    overrides = {
        key: value
        for key, value in (
            ("database_url", args.database_url),
            ("listen", getattr(args, "listen", None)),
        )
        if value is not None
    }
    try:
        return Settings(**overrides)
    except (ValidationError, FileNotFoundError) as exc:
        raise SystemExit(f"simtrack: bad configuration: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from simtrack.server.app import StartupError, serve

    settings = _settings(args)
    try:
        asyncio.run(serve(settings))  # type: ignore[arg-type]
    except StartupError as exc:
        print(f"simtrack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from simtrack.server.db import migrate

    settings = _settings(args)
    url: str = settings.database_url  # type: ignore[attr-defined]
    if args.revision.startswith("-") or args.downgrade:
        migrate.downgrade(url, args.revision)
    else:
        migrate.upgrade(url, args.revision)
    print(f"simtrack: database migrated to {args.revision}")
    if args.app_role:
        migrate.grant_app_role(url, args.app_role, os.environ.get("SIMTRACK_APP_ROLE_PASSWORD"))
        print(f"simtrack: role {args.app_role!r} may now serve this database")
    return 0


def _admin(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    """Run an operator's action on the database directly (not through a server)."""
    from simtrack.errors import SimtrackError
    from simtrack.server.db.engine import create_engine
    from simtrack.server.db.uow import UnitOfWorkFactory, tenant_aware_sessions
    from simtrack.server.domain.access import AccessAdmin

    settings = _settings(args)

    async def run() -> int:
        engine = create_engine(settings.database_url)  # type: ignore[attr-defined]
        try:
            return await action(AccessAdmin(UnitOfWorkFactory(tenant_aware_sessions(engine))))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except SimtrackError as exc:
        print(f"simtrack: {exc.message}", file=sys.stderr)
        return 1


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def cmd_tenants_create(args: argparse.Namespace) -> int:
    async def action(admin: Any) -> int:
        tenant = await admin.create_tenant(args.name)
        print(tenant.id)
        return 0

    return _admin(args, action)


def cmd_tenants_list(args: argparse.Namespace) -> int:
    async def action(admin: Any) -> int:
        table = Table("id", "name", "created")
        for tenant in await admin.tenants():
            table.add_row(tenant.id, tenant.name, _time(tenant.created_at))
        Console().print(table)
        return 0

    return _admin(args, action)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from simtrack.server.domain.tenancy import Role

    async def action(admin: Any) -> int:
        created = await admin.create_key(args.tenant, Role(args.role), args.name)
        print(created.token)
        print(
            f"(key {created.key.prefix}, role {created.key.role}: shown once, store it now)",
            file=sys.stderr,
        )
        return 0

    return _admin(args, action)


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def action(admin: Any) -> int:
        table = Table("prefix", "tenant", "role", "name", "created", "last used", "revoked")
        for key in await admin.keys(args.tenant):
            table.add_row(
                key.prefix,
                key.tenant_id,
                str(key.role),
                key.name,
                _time(key.created_at),
                _time(key.last_used_at),
                _time(key.revoked_at),
            )
        Console().print(table)
        return 0

    return _admin(args, action)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def action(admin: Any) -> int:
        key = await admin.revoke_key(args.prefix)
        print(f"key {key.prefix} revoked at {_time(key.revoked_at)}")
        return 0

    return _admin(args, action)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simtrack", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help="host:port (default: $SIMTRACK_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--database-url", help="default: $SIMTRACK_DATABASE_URL or sqlite:///simtrack.db"
    )
    serve.add_argument("--config", help="YAML settings file (default: $SIMTRACK_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="bring the database schema to a revision")
    migrate.add_argument("revision", nargs="?", default="head", help="default: head")
    migrate.add_argument("--downgrade", action="store_true", help="go down to REVISION (e.g. base)")
    migrate.add_argument("--database-url", help="default: $SIMTRACK_DATABASE_URL")
    migrate.add_argument("--config", help="YAML settings file (default: $SIMTRACK_CONFIG)")
    migrate.add_argument(
        "--app-role",
        help="PostgreSQL: create/grant this login role for the server to connect as "
        "(password from $SIMTRACK_APP_ROLE_PASSWORD, if set)",
    )
    migrate.set_defaults(func=cmd_migrate)

    def admin_parser(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help)
        sub.add_argument("--database-url", help="default: $SIMTRACK_DATABASE_URL")
        sub.add_argument("--config", help="YAML settings file (default: $SIMTRACK_CONFIG)")
        return sub

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

    tenants = commands.add_parser("tenants", help="manage tenants (operators)")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    create_tenant = admin_parser(tenant_commands, "create", "create a tenant; prints its id")
    create_tenant.add_argument("name")
    create_tenant.set_defaults(func=cmd_tenants_create)
    admin_parser(tenant_commands, "list", "list tenants").set_defaults(func=cmd_tenants_list)

    keys = commands.add_parser("keys", help="manage API keys (operators)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create_key = admin_parser(key_commands, "create", "create a key; prints the token once")
    create_key.add_argument("--tenant", required=True, help="tenant name or id")
    create_key.add_argument("--role", choices=["reader", "writer", "admin"], default="writer")
    create_key.add_argument("--name", default="", help="a label, e.g. who holds the key")
    create_key.set_defaults(func=cmd_keys_create)
    list_keys = admin_parser(key_commands, "list", "list keys (never their tokens)")
    list_keys.add_argument("--tenant", help="only this tenant's keys (name or id)")
    list_keys.set_defaults(func=cmd_keys_list)
    revoke_key = admin_parser(key_commands, "revoke", "revoke a key by its prefix")
    revoke_key.add_argument("prefix")
    revoke_key.set_defaults(func=cmd_keys_revoke)
    add_api_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
