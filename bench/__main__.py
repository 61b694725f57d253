"""``python -m bench {ingest,history,codec,compaction,fleet,query} [--quick]``: run a benchmark,
print its figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ingest = commands.add_parser(
        "ingest", help="StreamRun ingest, its limits, cancel latency and idle-stream memory"
    )
    ingest.add_argument(
        "--quick", action="store_true", help="small sizes: finishes in under 60 seconds"
    )
    ingest.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL superuser URL used to create and drop the benchmark database",
    )
    ingest.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs (path printed at the end)"
    )
    ingest.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy during each case; stacks and top functions to DIR",
    )
    history = commands.add_parser(
        "history", help="reading a metric back: pages, downsampling, beside a raw database read"
    )
    history.add_argument("--quick", action="store_true", help="200,000 points, not 1,000,000")
    history.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL superuser URL used to create and drop the benchmark database",
    )
    codec = commands.add_parser(
        "codec", help="chunk codecs on a corpus of simulation metrics: bytes per point, speed"
    )
    codec.add_argument("--quick", action="store_true", help="20,000 points a series, not 100,000")
    compaction = commands.add_parser(
        "compaction",
        help="compacting a fleet's 2-point chunks: points/s, bytes per point, the loop's lag",
    )
    compaction.add_argument(
        "--quick", action="store_true", help="100,000 points and a 20 s fleet, not 1,000,000 / 60 s"
    )
    compaction.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL superuser URL used to create and drop the benchmark database",
    )
    fleet = commands.add_parser(
        "fleet", help="a fleet of paced worker streams: rate, server CPU, ack latency, compaction"
    )
    fleet.add_argument(
        "--quick",
        action="store_true",
        help="200 streams for 20 s, not 1,000 for 150 s (each metric passes 1,000 points at "
        "100 s: compaction runs during the fleet)",
    )
    fleet.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL superuser URL used to create and drop the benchmark database",
    )
    fleet.add_argument(
        "--sqlite",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also on SQLite (default: in full mode only)",
    )
    query = commands.add_parser(
        "query",
        help="with 10^8 points stored: downsampled views, pages, filtered lists, GetRun vs the "
        "unary limit",
    )
    query.add_argument(
        "--quick",
        action="store_true",
        help="10^7 points, not 10^8, and 1,000 listed runs, not 10,000: under 90 seconds",
    )
    query.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL superuser URL used to create and drop the benchmark database",
    )
    args = parser.parse_args(argv)
    if args.command == "query":
        from bench.query import run_query

        return run_query(quick=args.quick, admin_url=args.admin_url)
    if args.command == "fleet":
        from bench.fleet import run_fleet_bench

        return run_fleet_bench(quick=args.quick, admin_url=args.admin_url, sqlite=args.sqlite)
    if args.command == "compaction":
        from bench.compaction import run_compaction

        return run_compaction(quick=args.quick, admin_url=args.admin_url)
    if args.command == "codec":
        from bench.codec import run_codec

        return run_codec(quick=args.quick)
    if args.command == "history":
        from bench.history import run_history

        return run_history(quick=args.quick, admin_url=args.admin_url)
    if args.command == "ingest":
        from bench.ingest import run_ingest

        return run_ingest(
            quick=args.quick,
            admin_url=args.admin_url,
            keep_logs=args.keep_logs,
            profile=args.profile,
        )
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
