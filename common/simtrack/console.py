"""Where the ``simtrack`` commands, the client's and the operator's alike, print their tables.

At a terminal, rich fits a table to its width. Piped (``simtrack runs list | grep``), rich
has no width to go by and cuts every table to 80 columns, so ``completed`` would reach grep as
``com…``: there a table is printed at the width it takes, unless COLUMNS says otherwise.
"""

from __future__ import annotations

import os

from rich.console import Console, RenderableType
from rich.measure import Measurement

_UNBOUNDED = 1_000_000  # columns: wide enough to measure any table's own width


def stdout_console(*shown: RenderableType) -> Console:
    """A console for standard output, wide enough for ``shown`` when it is not a terminal."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ or not shown:
        return console
    unbounded = Console(width=_UNBOUNDED)
    wanted = max(Measurement.get(unbounded, unbounded.options, r).maximum for r in shown)
    return Console(width=max(wanted, console.width))


def show(renderable: RenderableType) -> None:
    """Print ``renderable`` (a table) to standard output, whole when piped."""
    stdout_console(renderable).print(renderable)
