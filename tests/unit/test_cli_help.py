"""``simtrack --help``: what a newcomer reads first."""

from __future__ import annotations

import re

from simtrack.client.cli import FIRST_STEPS, build_parser


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
