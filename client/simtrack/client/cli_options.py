"""The options the ``simtrack`` client commands share, and how a command reads them: the
server to talk to, JSON objects, which points (``history``, ``compare``), and a list's order and
limit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Iterable
from typing import Any, TypedDict, TypeVar

from simtrack.errors import InvalidArgument


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--target`` and ``--api-key``, defaulting to the environment (shared by every client
    command, ``sync`` included).
    """
    parser.add_argument(
        "--target",
        default=os.environ.get("SIMTRACK_TARGET", "127.0.0.1:50051"),
        help="server host:port (default: $SIMTRACK_TARGET or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SIMTRACK_API_KEY"),
        help="API key (default: $SIMTRACK_API_KEY)",
    )


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object given as ``option``; InvalidArgument naming the option otherwise."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument.of(option, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgument.of(option, f"must be a JSON object, not {type(value).__name__}")
    return value


class Points(TypedDict):
    """Which points ``history`` and ``compare`` ask for (their shared options)."""

    start_step: int | None
    end_step: int | None
    max_points: int


def points(args: argparse.Namespace) -> Points:
    return Points(start_step=args.start_step, end_step=args.end_step, max_points=args.max_points)


def add_points_options(parser: argparse.ArgumentParser, max_points: str) -> None:
    """``--start-step``, ``--end-step`` and ``--max-points``."""
    parser.add_argument("--start-step", type=int, help="first step (inclusive)")
    parser.add_argument("--end-step", type=int, help="last step (inclusive)")
    parser.add_argument("--max-points", type=int, default=0, help=max_points)


LIST_PAGE_MAX = 1000  # the List calls' largest page_size
T = TypeVar("T")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def limit_page_size(args: argparse.Namespace) -> int:
    """Pages no larger than ``--limit`` needs (0: the server's default)."""
    return min(args.limit, LIST_PAGE_MAX) if args.limit else 0


def limited(args: argparse.Namespace, items: Iterable[T]) -> Iterable[T]:
    """The first ``--limit`` of ``items`` (all without it): the listing stops there (the
    page it asked for ahead is cancelled).
    """
    return items if args.limit is None else itertools.islice(items, args.limit)


def add_limit_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--limit",
        type=positive,
        metavar="N",
        help="the first N only (default: all), e.g. the best 10 with --order-by",
    )


def add_order_by_option(command: argparse.ArgumentParser, example: str, default: str) -> None:
    command.add_argument(
        "--order-by", default="", help=f"AIP-132, e.g. '{example}' (default: {default})"
    )
