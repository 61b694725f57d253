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


def show(renderable: RenderableType) -> None:
    """Print ``renderable`` (a table) to standard output, whole when piped."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        unbounded = Console(width=_UNBOUNDED)
        wanted = Measurement.get(unbounded, unbounded.options, renderable).maximum
        console = Console(width=max(wanted, console.width))
    console.print(renderable)
