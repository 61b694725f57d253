"""How the ``simtrack`` commands print what a server answered: rich tables, or JSON for scripts.

Enum values print short (``RUN_STATUS_RUNNING`` as ``running``), times to the second, structs as
compact JSON; ``--json`` prints the protos as JSON with proto field names.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.table import Table

from simtrack.console import show
from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2, telemetry_pb2

if TYPE_CHECKING:
    from google.protobuf.descriptor import EnumDescriptor

Column = tuple[str, Callable[[Any], object]]

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


def label(enum: EnumDescriptor, value: int) -> str:
    """``RUN_STATUS_RUNNING`` -> ``running``: buf's lint makes every value carry its enum's name."""
    known = enum.values_by_number.get(value)
    if known is None:  # a value newer than these stubs
        return str(value)
    return known.name.removeprefix(_WORD_START.sub("_", enum.name).upper() + "_").lower()


def run_status(run: runs_pb2.Run) -> str:
    return label(runs_pb2.RunStatus.DESCRIPTOR, run.status)


def time_text(value: timestamp_pb2.Timestamp) -> str:
    if not (value.seconds or value.nanos):
        return "-"
    return value.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def duration_text(value: duration_pb2.Duration) -> str:
    """A duration as a person reads it: ``850 ms``, ``3.03 s``, ``4 min 12 s``, ``2 h 05 min``,
    ``3 d 04 h`` (a timedelta prints ``0:00:03.029475``).
    """
    seconds = value.ToTimedelta().total_seconds()
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    if seconds < 59.95:  # (else "60 s")
        return f"{sign}{seconds:.3g} s"
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{sign}{days} d {hour:02d} h"
    if hours:
        return f"{sign}{hours} h {minute:02d} min"
    return f"{sign}{minutes} min {second:02d} s"


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def compact(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


AGENT_COLUMNS: Sequence[Column] = (
    ("id", lambda a: a.id),
    ("name", lambda a: a.name),
    ("framework", lambda a: label(agents_pb2.Framework.DESCRIPTOR, a.framework)),
    ("config", lambda a: compact(a.config)),
    ("created", lambda a: time_text(a.create_time)),
)
EXPERIMENT_COLUMNS: Sequence[Column] = (
    ("id", lambda e: e.id),
    ("name", lambda e: e.name),
    ("scenario", lambda e: e.scenario_id),
    ("status", lambda e: label(experiments_pb2.ExperimentStatus.DESCRIPTOR, e.status)),
    ("created", lambda e: time_text(e.create_time)),
)
RUN_COLUMNS: Sequence[Column] = (
    ("id", lambda r: r.id),
    ("#", lambda r: r.run_number),
    ("scenario", lambda r: r.scenario_id),
    ("status", run_status),
    ("progress", lambda r: f"{r.progress_percent:.0f}%"),
    ("tick", lambda r: f"{r.current_tick}/{r.total_ticks}"),
    ("created", lambda r: time_text(r.create_time)),
)
SCENARIO_COLUMNS: Sequence[Column] = (
    ("id", lambda s: s.id),
    ("name", lambda s: s.name),
    ("tier", lambda s: s.difficulty_tier),
    ("ticks", lambda s: s.duration_ticks),
    ("tags", lambda s: ", ".join(s.tags)),
)
METRIC_COLUMNS: Sequence[Column] = (
    ("name", lambda m: m.name),
    ("unit", lambda m: m.unit),
    ("kind", lambda m: label(telemetry_pb2.MetricKind.DESCRIPTOR, m.kind)),
    ("points", lambda m: m.count),
    ("last step", lambda m: m.last_step if m.HasField("last_step") else "-"),
    ("last value", lambda m: f"{m.last_value:g}"),
    ("min", lambda m: f"{m.min:g}"),
    ("max", lambda m: f"{m.max:g}"),
)
LATEST_COLUMNS: Sequence[Column] = (
    ("metric", lambda m: m.name),
    ("step", lambda m: m.step if m.HasField("step") else "-"),
    ("value", lambda m: f"{m.value:g}"),
    ("min", lambda m: f"{m.min:g}"),
    ("max", lambda m: f"{m.max:g}"),
)
EVENT_COLUMNS: Sequence[Column] = (
    ("seq", lambda e: e.seq),
    ("step", lambda e: e.event.step),
    ("time", lambda e: time_text(e.event.time)),
    ("type", lambda e: e.event.type),
    ("agent", lambda e: e.event.agent_id),
    ("payload", lambda e: compact(e.event.payload)),
)

LEADERBOARD_COLUMNS: Sequence[Column] = (
    ("rank", lambda e: e.rank),
    ("value", lambda e: f"{e.value:g}"),
    ("run", lambda e: e.run.id),
    ("#", lambda e: e.run.run_number),
    ("status", lambda e: run_status(e.run)),
    ("agent", lambda e: e.agent_id),
)
VALIDATION_COLUMNS: Sequence[Column] = (
    ("validator", lambda v: v.validator),
    ("kind", lambda v: v.kind),
    ("passed", lambda v: "yes" if v.passed else "no"),
    ("score", lambda v: f"{v.score:g}" if v.HasField("score") else "-"),
    ("details", lambda v: compact(v.details)),
)
STATUS_COLUMNS: Sequence[Column] = (
    ("status", lambda c: label(runs_pb2.RunStatus.DESCRIPTOR, c.status)),
    ("runs", lambda c: c.count),
)


_NUMBER = re.compile(r"-|[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|nan|inf)", re.IGNORECASE)


def table(items: Iterable[Any], columns: Sequence[Column]) -> Table:
    """``items`` in rows of ``columns``; a column of numbers (or ``-``) is aligned right, so its
    digits line up.
    """
    rows = [[str(cell(item)) for _, cell in columns] for item in items]
    grid = Table()
    for index, (name, _) in enumerate(columns):
        numbers = bool(rows) and all(_NUMBER.fullmatch(row[index]) for row in rows)
        # Ids are for copying: other columns wrap first when the terminal is narrow.
        grid.add_column(name, no_wrap=name in ("id", "run"), justify="right" if numbers else "left")
    for row in rows:
        grid.add_row(*row)
    return grid


def print_list(
    args: argparse.Namespace, items: Iterable[Message], columns: Sequence[Column]
) -> int:
    if args.json:
        print(json.dumps([as_dict(item) for item in items], indent=2))
    else:
        show(table(items, columns))
    return 0


def print_one(args: argparse.Namespace, message: Message) -> int:
    fields = as_dict(message)
    if args.json:
        print(json.dumps(fields, indent=2))
        return 0
    table = Table("field", "value", show_header=False)
    for name, value in fields.items():
        table.add_row(name, value if isinstance(value, str) else json.dumps(value))
    show(table)
    return 0


def print_created(args: argparse.Namespace, message: Message) -> int:
    """The new object's id (for ``$(...)`` in scripts), or all of it with --json."""
    if args.json:
        return print_one(args, message)
    print(as_dict(message)["id"])
    return 0
