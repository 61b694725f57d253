"""The ``simtrack`` command.

``serve`` and ``migrate`` run server code, imported only when those commands run: the client
library itself never depends on the server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence


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
    return 0


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
    migrate.set_defaults(func=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
