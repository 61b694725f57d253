"""Tables printed to standard output: whole when piped, fitted where a width is given."""

from __future__ import annotations

import pytest
from rich.table import Table

from simtrack.console import show

LONG = "tier0-tutorial-" + "x" * 120  # wider than rich's 80 columns without a terminal


def a_table() -> Table:
    table = Table()
    for name in ("id", "scenario", "status"):
        table.add_column(name)
    table.add_row("1ed5ca95-8164-4876-aa1b-d3db63d1347e", LONG, "completed")
    return table


def test_a_piped_table_is_printed_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    show(a_table())
    [row] = [line for line in capsys.readouterr().out.splitlines() if "1ed5ca95" in line]
    assert LONG in row and "completed" in row


def test_columns_still_sets_the_width(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    show(a_table())
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 60
    assert LONG not in "".join(lines)  # wrapped or cut to fit, as the user asked
