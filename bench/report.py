"""Figures: one ``name = value unit`` line each as they are measured, and a table at the end."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.spy import Profiler


@dataclass(frozen=True)
class Target:
    """A goal for a figure: ``at_least`` or (with ``at_least`` False) at most ``bound``."""

    bound: float
    at_least: bool = True

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {_number(self.bound)}"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""
    target: Target | None = None

    def line(self) -> str:
        notes = []
        if self.target is not None:
            verdict = "met" if self.target.met(self.value) else "MISSED"
            notes.append(f"target {self.target.describe()}: {verdict}")
        if self.note:
            notes.append(self.note)
        suffix = f" ({'; '.join(notes)})" if notes else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name} = {_number(self.value)}{unit}{suffix}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Report:
    """Collects figures; prints each one the moment it is known (flushed, so a pipe sees it)."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.other_load: list[float] = []  # cores used by other processes, per measured case
        self.profiler: Profiler | None = None  # py-spy on the server during each case

    def add(
        self,
        name: str,
        value: float,
        unit: str = "",
        *,
        note: str = "",
        target: Target | None = None,
    ) -> Figure:
        figure = Figure(name, float(value), unit, note, target)
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def get(self, name: str) -> float:
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        return math.nan

    def info(self, text: str) -> None:
        """A progress remark, on stderr so stdout holds only figures."""
        print(f"# {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Say on stderr how long a part of the bench took (where the wall time goes)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.info(f"{name}: {time.monotonic() - started:.1f} s")

    def table(self, title: str) -> None:
        """The figures again, as a table (the notes are on the lines above)."""
        table = Table(title=title)
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column("target")
        for figure in self.figures:
            if figure.target is None:
                verdict = ""
            elif figure.target.met(figure.value):
                verdict = f"[green]{figure.target.describe()} met[/green]"
            else:
                verdict = f"[red]{figure.target.describe()} MISSED[/red]"
            table.add_row(figure.name, _number(figure.value), figure.unit, verdict)
        Console(width=120).print(table)
