"""The ``simtrack`` commands that talk to a running server, through :class:`Client`.

Every command takes ``--target`` and ``--api-key``; list and get commands take ``--json``, which
prints the protos as JSON (proto field names) for scripts. A server's refusal is one line on
stderr, ``simtrack: <code>: <message>``, and exit status 1: a typo is not a traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO, TypeAlias

from google.protobuf.message import Message
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from simtrack.client import cli_compare
from simtrack.client.cli_history import PLOT_INSTALL, summary, to_stdout, write_csv, write_png
from simtrack.client.cli_options import (
    add_limit_option,
    add_order_by_option,
    add_points_options,
    add_server_options,
    json_object,
    limit_page_size,
    limited,
    points,
)
from simtrack.client.cli_output import (
    AGENT_COLUMNS,
    EVENT_COLUMNS,
    EXPERIMENT_COLUMNS,
    LATEST_COLUMNS,
    LEADERBOARD_COLUMNS,
    METRIC_COLUMNS,
    RUN_COLUMNS,
    SCENARIO_COLUMNS,
    STATUS_COLUMNS,
    VALIDATION_COLUMNS,
    Column,
    as_dict,
    duration_text,
    print_created,
    print_list,
    print_one,
    run_status,
    table,
)
from simtrack.client.client import FRAMEWORKS, Client
from simtrack.console import show
from simtrack.errors import SimtrackError
from simtrack.v1 import runs_pb2

__all__ = ["Subcommands", "add_api_commands"]

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace, Client], int]

_FINAL = {
    runs_pb2.RUN_STATUS_COMPLETED,
    runs_pb2.RUN_STATUS_FAILED,
    runs_pb2.RUN_STATUS_STOPPED,
}


# -- commands ----------------------------------------------------------------------------------


def _connected(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler`` with a client of ``--target``; what goes wrong is one line on stderr."""
    try:
        with Client(args.target, args.api_key) as client:
            return handler(args, client)
    except SimtrackError as exc:
        message = " ".join(exc.message.split())  # gRPC's details may span lines
        print(f"simtrack: {exc.code_name}: {message}", file=sys.stderr)
    except BrokenPipeError:
        raise  # the reader of standard output went away: `main` ends quietly
    except OSError as exc:  # --csv / --png could not be written
        print(f"simtrack: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


def _agents_create(args: argparse.Namespace, client: Client) -> int:
    config = json_object(args.config, "--config")
    return print_created(args, client.create_agent(args.name, args.framework, config))


def _experiments_create(args: argparse.Namespace, client: Client) -> int:
    params = json_object(args.params, "--params")
    experiment = client.create_experiment(args.name, args.agent, args.scenario, params)
    return print_created(args, experiment)


def _runs_create(args: argparse.Namespace, client: Client) -> int:
    params = json_object(args.params, "--params")
    return print_created(args, client.create_run(args.experiment, params))


def _runs_cancel(args: argparse.Namespace, client: Client) -> int:
    run = client.cancel_run(args.id, args.reason).run
    status = run_status(run)
    waiting = "" if run.status in _FINAL else " (its worker was told to stop)"
    print(f"run {run.id}: {status}{waiting}")
    return 0


def _runs_pause(args: argparse.Namespace, client: Client) -> int:
    print(f"run {args.id}: {run_status(client.pause_run(args.id).run)}")
    return 0


def _runs_resume(args: argparse.Namespace, client: Client) -> int:
    print(f"run {args.id}: {run_status(client.resume_run(args.id).run)}")
    return 0


def _runs_watch(args: argparse.Namespace, client: Client) -> int:
    """Follow a run until it ends: 0 when it completed, 1 when it failed or was stopped."""
    console = Console()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[ticks]}"),
        console=console,
    )
    task = progress.add_task(f"run {args.id}", total=100, ticks="")
    updates = client.watch_run(args.id)
    # The first update is the current state: an unknown run fails here, before any display.
    first = next(updates, None)
    run: runs_pb2.Run | None = None
    with Live(progress, console=console, refresh_per_second=8) as live:
        for update in itertools.chain([first] if first else [], updates):
            run = update.run
            progress.update(
                task,
                completed=run.progress_percent,
                description=f"run {run.run_number} {run_status(run)}",
                ticks=f"tick {run.current_tick}/{run.total_ticks}",
            )
            if update.metrics:
                live.update(Group(progress, table(update.metrics, LATEST_COLUMNS)))
    if not console.is_terminal:
        console.line()  # Live ends a file's (or pipe's) last line only on a terminal
    if run is None or run.status not in _FINAL:
        print("simtrack: the server ended the watch before the run ended", file=sys.stderr)
        return 1
    error = f": {run.error_message}" if run.error_message else ""
    # Plain: one line however long, and the error message's brackets are not rich markup.
    print(f"run {run.id} {run_status(run)}{error}")
    return 0 if run.status == runs_pb2.RUN_STATUS_COMPLETED else 1


def _metrics(args: argparse.Namespace, client: Client) -> int:
    metrics = client.list_metrics(args.run_id, order_by=args.order_by)
    return print_list(args, limited(args, metrics), METRIC_COLUMNS)


def _events(args: argparse.Namespace, client: Client) -> int:
    events = client.list_events(args.run_id, args.filter, args.order_by)
    return print_list(args, limited(args, events), EVENT_COLUMNS)


def _validations(args: argparse.Namespace, client: Client) -> int:
    validations = client.list_validations(args.run_id, args.filter, args.order_by)
    return print_list(args, limited(args, validations), VALIDATION_COLUMNS)


def _leaderboard(args: argparse.Namespace, client: Client) -> int:
    board = client.leaderboard(
        args.scenario,
        args.metric,
        aggregate=args.aggregate,
        lowest_first=args.lowest_first,
        limit=args.limit,
        experiment_id=args.experiment or "",
        include_unfinished=args.all,
    )
    return print_list(args, board.entries, LEADERBOARD_COLUMNS)


def _stats(args: argparse.Namespace, client: Client) -> int:
    stats = client.run_stats(args.filter)
    if args.json:
        return print_one(args, stats)
    show(table(stats.by_status, STATUS_COLUMNS))
    console = Console(soft_wrap=True)  # its lines whole, piped too
    rate = "-" if math.isnan(stats.success_rate) else f"{stats.success_rate:.1%}"
    console.print(f"runs: {stats.total}, success rate: {rate}")
    if stats.HasField("durations"):
        d = stats.durations
        parts = (
            f"{name} {duration_text(getattr(d, name))}" for name in ("mean", "p50", "p95", "max")
        )
        console.print(f"durations of {d.count} ended runs: " + ", ".join(parts))
    return 0


def _demo(args: argparse.Namespace, client: Client) -> int:
    from simtrack.client.demo import run_demo

    return run_demo(
        client,
        args.scenario,
        ticks=args.ticks,
        tick_seconds=args.tick_seconds,
        spool_dir=args.spool_dir,
    )


def _cannot_plot(args: argparse.Namespace) -> bool:
    """Whether --png asks for matplotlib where it is not installed (said on stderr)."""
    if args.png and importlib.util.find_spec("matplotlib") is None:
        print(f"simtrack: --png needs matplotlib: {PLOT_INSTALL}", file=sys.stderr)
        return True
    return False


def _history(args: argparse.Namespace, client: Client) -> int:
    if _cannot_plot(args):
        return 2
    history = client.metric_history(args.run_id, args.metric, **points(args))
    print(summary(args.metric, history), file=_notes(args))
    _write_files(
        args,
        lambda path: write_csv(path, history),
        lambda path: write_png(path, history, args.metric, f"run {args.run_id}"),
    )
    return 0


def _compare(args: argparse.Namespace, client: Client) -> int:
    if _cannot_plot(args):
        return 2
    found = client.compare_runs(args.run_ids, args.metric, **points(args))
    _write_files(
        args,
        lambda path: cli_compare.write_csv(path, found),
        lambda path: cli_compare.write_png(path, found, cli_compare.title_of(found)),
    )
    if not (args.csv or args.png):
        show(cli_compare.summary_table(found))
    return 0


def _notes(args: argparse.Namespace) -> TextIO:
    """Where a command's words go: standard error when the CSV goes to standard output."""
    return sys.stderr if to_stdout(args.csv) else sys.stdout


def _write_files(
    args: argparse.Namespace, csv: Callable[[Path], None], png: Callable[[Path], None]
) -> None:
    """``--csv`` and ``--png``, where asked, each said written (but a CSV on standard output)."""
    if args.csv:
        csv(args.csv)
        if not to_stdout(args.csv):
            print(f"wrote {args.csv}")
    if args.png:
        png(args.png)
        print(f"wrote {args.png}", file=_notes(args))


def _runs_list(args: argparse.Namespace, client: Client) -> int:
    """``runs list``: the runs, with a column for each ``--metric`` (one call a page)."""
    rows = limited(
        args, client.runs_table(args.filter, args.order_by, args.metric, limit_page_size(args))
    )
    if args.json:
        listed = [
            {**as_dict(run), "latest_metrics": {n: as_dict(m) for n, m in found.items()}}
            for run, found in rows
        ]
        print(json.dumps(listed, indent=2))
        return 0
    columns = [*map(_of_run, RUN_COLUMNS), *map(_latest_column, args.metric)]
    show(table(rows, columns))
    return 0


RunRow: TypeAlias = tuple[runs_pb2.Run, dict[str, runs_pb2.LatestMetric]]


def _of_run(column: Column) -> Column:
    """A run's column, read from a ``runs_table`` row."""
    title, cell = column
    return title, lambda row: cell(row[0])


def _latest_column(name: str) -> Column:
    """The metric's latest value: blank when the run has none (or no finite one)."""

    def cell(row: RunRow) -> str:
        metric = row[1].get(name)
        return "" if metric is None or not metric.HasField("step") else f"{metric.value:g}"

    return name, cell


# -- the parser --------------------------------------------------------------------------------


def _command(
    group: Subcommands, name: str, help: str, handler: Handler, *, with_json: bool = True
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help, description=help)
    add_server_options(parser)
    if with_json:
        parser.add_argument("--json", action="store_true", help="print JSON (proto field names)")
    parser.set_defaults(func=functools.partial(_connected, handler))
    return parser


def _group(commands: Subcommands, name: str, help: str) -> Subcommands:
    parser = commands.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True)


def _list_and_get(
    group: Subcommands,
    what: str,
    columns: Sequence[Column],
    lister: Callable[..., Iterable[Message]],
    getter: Callable[[Client, str], Message],
    filter_example: str,
    order_example: str,
    default_order: str = "oldest first",
    list_them: Handler | None = None,
) -> argparse.ArgumentParser:
    """``list`` (by ``lister``, or ``list_them`` when given) and ``get`` commands of ``what``;
    the ``list`` parser, for options of its own.
    """

    def list_all(args: argparse.Namespace, client: Client) -> int:
        listed = lister(
            client, args.filter, order_by=args.order_by, page_size=limit_page_size(args)
        )
        return print_list(args, limited(args, listed), columns)

    listing = _command(group, "list", f"list {what}s", list_them or list_all)
    add_order_by_option(listing, order_example, default_order)
    listing.add_argument(
        "--filter",
        default="",
        help=f"AIP-160: = != < <= > >= IN, AND OR NOT, (), * wildcards; e.g. '{filter_example}'",
    )
    add_limit_option(listing)
    show = _command(
        group,
        "get",
        f"show one {what}",
        lambda args, client: print_one(args, getter(client, args.id)),
    )
    show.add_argument("id")
    return listing


def add_api_commands(commands: Subcommands) -> dict[str, Subcommands]:
    """Add the commands for a running server's agents, experiments, runs, telemetry and
    scenarios to ``simtrack``'s subcommands; return the groups (``scenarios``…) by name, for
    the server's subcommands to join.
    """
    agents = _group(commands, "agents", "agents under test")
    _list_and_get(
        agents,
        "agent",
        AGENT_COLUMNS,
        Client.list_agents,
        Client.get_agent,
        'framework = "custom"',
        "name",
    )
    create = _command(agents, "create", "create an agent; prints its id", _agents_create)
    create.add_argument("name")
    create.add_argument("--framework", choices=list(FRAMEWORKS), default="baseline")
    create.add_argument("--config", help="a JSON object")

    experiments = _group(commands, "experiments", "experiments: an agent on a scenario")
    _list_and_get(
        experiments,
        "experiment",
        EXPERIMENT_COLUMNS,
        Client.list_experiments,
        Client.get_experiment,
        'status = "running"',
        "params.seed desc",
    )
    create = _command(
        experiments, "create", "create an experiment; prints its id", _experiments_create
    )
    create.add_argument("name")
    create.add_argument("--agent", required=True, help="agent id")
    create.add_argument("--scenario", required=True, help="scenario id, e.g. tier0-tutorial")
    create.add_argument("--params", help="a JSON object")

    runs = _group(commands, "runs", "runs of experiments")
    listing = _list_and_get(
        runs,
        "run",
        RUN_COLUMNS,
        Client.list_runs,
        Client.get_run,
        "status IN (completed, stopped) AND params.lr > 0.01 AND metrics.total_profit >= 1000",
        "metrics.total_profit desc, create_time",
        list_them=_runs_list,
    )
    listing.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="a column with the metric's latest value (repeatable, up to 20)",
    )
    create = _command(runs, "create", "create a (pending) run; prints its id", _runs_create)
    create.add_argument("--experiment", required=True, help="experiment id")
    create.add_argument("--params", help="a JSON object, merged over the experiment's")
    cancel = _command(runs, "cancel", "ask a run's worker to stop", _runs_cancel, with_json=False)
    cancel.add_argument("id")
    cancel.add_argument("--reason", default="", help="passed on to the worker")
    pause = _command(
        runs, "pause", "pause a running run (its worker holds)", _runs_pause, with_json=False
    )
    pause.add_argument("id")
    resume = _command(
        runs, "resume", "set a paused run running again", _runs_resume, with_json=False
    )
    resume.add_argument("id")
    watch = _command(
        runs,
        "watch",
        "follow a run live until it ends (exit 1 unless it completed)",
        _runs_watch,
        with_json=False,
    )
    watch.add_argument("id")

    metrics = _command(commands, "metrics", "a run's metrics with their summaries", _metrics)
    metrics.add_argument("run_id")
    add_order_by_option(metrics, "last_value desc", "by name")
    add_limit_option(metrics)

    history = _command(
        commands,
        "history",
        "one metric's points: summary, CSV, PNG plot",
        _history,
        with_json=False,
    )
    history.add_argument("run_id")
    history.add_argument("metric")
    add_points_options(history, "downsample on the server (0: every point)")
    history.add_argument(
        "--csv", type=Path, help="write the points here (step,value,timestamp; -: standard output)"
    )
    history.add_argument("--png", type=Path, help="write a line plot here")

    compare = _command(
        commands,
        "compare",
        "metrics of several runs on a shared step grid: table, CSV, PNG plot",
        _compare,
        with_json=False,
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN", help="run ids (1-100)")
    compare.add_argument(
        "--metric", action="append", required=True, help="a metric name; repeat for more (1-20)"
    )
    add_points_options(
        compare, "per series, downsampled on the server (0: 1,000, fewer for many series)"
    )
    compare.add_argument(
        "--csv",
        type=Path,
        help="write the points here, one row each (run_id,run,experiment,run_number,metric,"
        "unit,step,value,timestamp; -: standard output)",
    )
    compare.add_argument("--png", type=Path, help="write a plot here: a panel per metric")

    events = _command(commands, "events", "a run's events in the order sent", _events)
    events.add_argument("run_id")
    events.add_argument("--filter", default="", help="e.g. 'type = \"agent_action\"'")
    add_order_by_option(events, "step desc", "the order sent")
    add_limit_option(events)

    validations = _command(
        commands, "validations", "a run's verdicts (success criteria, validators)", _validations
    )
    validations.add_argument("run_id")
    validations.add_argument("--filter", default="", help="e.g. 'passed = \"false\"'")
    add_order_by_option(validations, "score desc", "oldest first")
    add_limit_option(validations)

    leaderboard = _command(
        commands, "leaderboard", "a scenario's best runs by a metric", _leaderboard
    )
    leaderboard.add_argument("scenario")
    leaderboard.add_argument("metric")
    leaderboard.add_argument("--aggregate", choices=["latest", "min", "max"], default="latest")
    leaderboard.add_argument("--lowest-first", action="store_true", help="lower is better")
    leaderboard.add_argument("--limit", type=int, default=10)
    leaderboard.add_argument("--experiment", help="only this experiment's runs")
    leaderboard.add_argument("--all", action="store_true", help="unfinished runs compete too")

    stats = _command(commands, "stats", "runs by status, success rate, durations", _stats)
    stats.add_argument("--filter", default="", help="as runs list, e.g. 'scenario_id = \"x\"'")

    demo = _command(
        commands,
        "demo",
        "run a small built-in simulation of a scenario, streamed like a real worker",
        _demo,
        with_json=False,
    )
    demo.add_argument("--scenario", default="tier0-tutorial", help="default: tier0-tutorial")
    demo.add_argument("--ticks", type=int, help="default: the scenario's duration")
    demo.add_argument(
        "--tick-seconds", type=float, default=0.05, help="pause per tick (default: 0.05)"
    )
    demo.add_argument("--spool-dir", help="the worker's spool (default: as for any worker)")

    scenarios = _group(commands, "scenarios", "the server's scenario catalogue")
    _list_and_get(
        scenarios,
        "scenario",
        SCENARIO_COLUMNS,
        Client.list_scenarios,
        Client.get_scenario,
        "difficulty_tier = 2",
        "difficulty_tier desc, name",
        "by id",
    )
    return {"agents": agents, "experiments": experiments, "runs": runs, "scenarios": scenarios}
