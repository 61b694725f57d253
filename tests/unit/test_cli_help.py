"""What a newcomer reads first: ``simtrack --help``, durations as people write them, and
columns of numbers that line up.
"""

from __future__ import annotations

import re

import pytest
from google.protobuf import duration_pb2

from simtrack.client.cli import FIRST_STEPS, build_parser
from simtrack.client.cli_output import duration_text, table


def test_the_first_steps_are_commands_that_exist() -> None:
    parser = build_parser()
    steps = re.findall(r"^  simtrack ([a-z]+(?: [a-z]+)?) ", FIRST_STEPS, re.MULTILINE)
    assert steps == ["serve", "demo", "runs list"]
    for step in steps:
        assert parser.parse_args(step.split()).command == step.split()[0]


def test_the_help_lists_every_command_and_ends_with_the_first_steps() -> None:
    shown = build_parser().format_help()
    assert shown.startswith("usage: simtrack [-h] [--log-level LOG_LEVEL] COMMAND ...")
    assert "``" not in shown  # no docstring markup
    for command in ("serve", "demo", "runs", "history", "compare", "stats", "keys", "sync"):
        assert re.search(rf"^    {command} +\S", shown, re.MULTILINE), command
    assert shown.rstrip().endswith("Each command tells more: simtrack COMMAND --help.")


@pytest.mark.parametrize(
    ("seconds", "nanos", "shown"),
    [
        (0, 0, "0 ms"),
        (0, 850_000_000, "850 ms"),
        (3, 29_475_000, "3.03 s"),
        (59, 960_000_000, "1 min 00 s"),
        (252, 0, "4 min 12 s"),
        (7_500, 0, "2 h 05 min"),
        (3 * 86_400 + 4 * 3_600 + 100, 0, "3 d 04 h"),
        (-3, 0, "-3 s"),
    ],
)
def test_durations_read_as_a_person_reads_them(seconds: int, nanos: int, shown: str) -> None:
    assert duration_text(duration_pb2.Duration(seconds=seconds, nanos=nanos)) == shown


def test_a_column_of_numbers_is_aligned_right_and_text_left() -> None:
    columns = (("name", lambda m: m[0]), ("last value", lambda m: m[1]), ("step", lambda m: m[2]))
    shown = table([("loss", "0.25", "-"), ("profit", "-1.5e+06", "12"), ("x", "nan", "3")], columns)
    assert [column.justify for column in shown.columns] == ["left", "right", "right"]
    assert table([], columns).columns[1].justify == "left"  # nothing to tell by
    mixed = table([("a", "1", "60/60")], columns)
    assert mixed.columns[2].justify == "left"
