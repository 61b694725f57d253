"""The operator's subcommands of ``simtrack``: serve, migrate, tenants, keys, scenarios validate.

They work on the server's settings and database directly, not through a running server, so they
need the server's dependencies (``pip install 'simtrack[server]'``). The ``simtrack`` command
(:mod:`simtrack.client.cli`) finds them through the ``simtrack.subcommands`` entry points
declared in pyproject.toml — each entry point's name is the command it adds, ``scenarios.validate``
a subcommand of the client's ``scenarios`` — and says what to install when they cannot load.

Loading this module imports the settings only (pydantic-settings: an import that fails without
the server's dependencies); the database, gRPC server and migrations load when a command runs,
so the client's own commands do not pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from pydantic import ValidationError
from rich.table import Table

from simtrack.console import show
from simtrack.server.config import CONFIG_FILE_VARIABLE, Settings

if TYPE_CHECKING:
    from simtrack.server.domain.access import AccessAdmin

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AdminAction = Callable[["AccessAdmin"], Awaitable[int]]


def _settings(args: argparse.Namespace) -> Settings:
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


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="default: $SIMTRACK_DATABASE_URL")
    parser.add_argument("--config", help="YAML settings file (default: $SIMTRACK_CONFIG)")


# -- serve, migrate ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from simtrack.server.app import StartupError, serve

    settings = _settings(args)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"simtrack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from simtrack.server.db import migrate

    url = _settings(args).database_url
    if args.revision.startswith("-") or args.downgrade:
        migrate.downgrade(url, args.revision)
    else:
        migrate.upgrade(url, args.revision)
    print(f"simtrack: database migrated to {args.revision}")
    if args.app_role:
        migrate.grant_app_role(url, args.app_role, os.environ.get("SIMTRACK_APP_ROLE_PASSWORD"))
        print(f"simtrack: role {args.app_role!r} may now serve this database")
    return 0


def add_serve(commands: Subcommands) -> None:
    serve = commands.add_parser(
        "serve", help="run the service: gRPC, the same API over HTTP, the dashboard"
    )
    serve.add_argument("--listen", help="host:port (default: $SIMTRACK_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--database-url", help="default: $SIMTRACK_DATABASE_URL or sqlite:///simtrack.db"
    )
    serve.add_argument("--config", help="YAML settings file (default: $SIMTRACK_CONFIG)")
    serve.set_defaults(func=cmd_serve)


def add_migrate(commands: Subcommands) -> None:
    migrate = commands.add_parser("migrate", help="bring the database schema to a revision")
    migrate.add_argument("revision", nargs="?", default="head", help="default: head")
    migrate.add_argument("--downgrade", action="store_true", help="go down to REVISION (e.g. base)")
    _add_settings_options(migrate)
    migrate.add_argument(
        "--app-role",
        help="PostgreSQL: create/grant this login role for the server to connect as "
        "(password from $SIMTRACK_APP_ROLE_PASSWORD, if set)",
    )
    migrate.set_defaults(func=cmd_migrate)


# -- tenants, keys -----------------------------------------------------------------------------


def _admin(args: argparse.Namespace, action: AdminAction) -> int:
    """Run an operator's action on the database directly (not through a server)."""
    from simtrack.errors import SimtrackError
    from simtrack.server.db.engine import create_engine
    from simtrack.server.db.unit_of_work import SqlUnitOfWorkFactory, tenant_aware_sessions
    from simtrack.server.domain.access import AccessAdmin

    settings = _settings(args)

    async def run() -> int:
        engine = create_engine(settings.database_url)
        try:
            return await action(AccessAdmin(SqlUnitOfWorkFactory(tenant_aware_sessions(engine))))
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
    async def action(admin: AccessAdmin) -> int:
        tenant = await admin.create_tenant(args.name)
        print(tenant.id)
        return 0

    return _admin(args, action)


def cmd_tenants_list(args: argparse.Namespace) -> int:
    async def action(admin: AccessAdmin) -> int:
        table = Table("id", "name", "created")
        for tenant in await admin.tenants():
            table.add_row(tenant.id, tenant.name, _time(tenant.created_at))
        show(table)
        return 0

    return _admin(args, action)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from simtrack.server.core.tenancy import Role

    async def action(admin: AccessAdmin) -> int:
        created = await admin.create_key(args.tenant, Role(args.role), args.name)
        print(created.token)
        print(
            f"(key {created.key.prefix}, role {created.key.role}: shown once, store it now)",
            file=sys.stderr,
        )
        return 0

    return _admin(args, action)


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def action(admin: AccessAdmin) -> int:
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
        show(table)
        return 0

    return _admin(args, action)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def action(admin: AccessAdmin) -> int:
        key = await admin.revoke_key(args.prefix)
        print(f"key {key.prefix} revoked at {_time(key.revoked_at)}")
        return 0

    return _admin(args, action)


def _admin_parser(group: Subcommands, name: str, help: str) -> argparse.ArgumentParser:
    sub = group.add_parser(name, help=help)
    _add_settings_options(sub)
    return sub


def add_tenants(commands: Subcommands) -> None:
    tenants = commands.add_parser("tenants", help="manage tenants (operators)")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    create_tenant = _admin_parser(tenant_commands, "create", "create a tenant; prints its id")
    create_tenant.add_argument("name")
    create_tenant.set_defaults(func=cmd_tenants_create)
    _admin_parser(tenant_commands, "list", "list tenants").set_defaults(func=cmd_tenants_list)


def add_keys(commands: Subcommands) -> None:
    keys = commands.add_parser("keys", help="manage API keys (operators)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create_key = _admin_parser(key_commands, "create", "create a key; prints the token once")
    create_key.add_argument("--tenant", required=True, help="tenant name or id")
    create_key.add_argument("--role", choices=["reader", "writer", "admin"], default="writer")
    create_key.add_argument("--name", default="", help="a label, e.g. who holds the key")
    create_key.set_defaults(func=cmd_keys_create)
    list_keys = _admin_parser(key_commands, "list", "list keys (never their tokens)")
    list_keys.add_argument("--tenant", help="only this tenant's keys (name or id)")
    list_keys.set_defaults(func=cmd_keys_list)
    revoke_key = _admin_parser(key_commands, "revoke", "revoke a key by its prefix")
    revoke_key.add_argument("prefix")
    revoke_key.set_defaults(func=cmd_keys_revoke)


# -- scenarios validate ------------------------------------------------------------------------


def cmd_scenarios_validate(args: argparse.Namespace) -> int:
    """Check scenario files with the server's rules before a server loads (and skips) them."""
    from simtrack.server.scenario_catalogue import load_file

    invalid = 0
    for path in args.paths:
        spec, problems = load_file(path)
        if spec is not None:
            print(f"{path}: OK ({spec.id}, {spec.duration} ticks)")
        for problem in problems:
            print(f"{path}: {problem.field}: {problem.message}")
        invalid += spec is None
    return 1 if invalid else 0


def add_scenarios_validate(scenarios: Subcommands) -> None:
    validate = scenarios.add_parser("validate", help="check scenario YAML files (no server)")
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    validate.set_defaults(func=cmd_scenarios_validate)
