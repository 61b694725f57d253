"""``simtrack history``'s outputs: a one-line summary, a CSV file, a PNG line plot."""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from simtrack.client.client import MetricHistory

PLOT_INSTALL = "pip install 'simtrack[plot]'"


def summary(metric: str, history: MetricHistory) -> str:
    count = len(history.steps)
    if not count:
        return f"{metric}: no points in the range"
    text = f"{metric}: {count} points, steps {history.steps[0]}..{history.steps[-1]}"
    finite = history.values[np.isfinite(history.values)]
    if finite.size:
        text += f", min {finite.min():g}, max {finite.max():g}"
    if history.downsampled:
        text += f" (downsampled from {history.range_count})"
    return text


def to_stdout(path: Path | None) -> bool:
    """Whether ``--csv`` names standard output (``-``)."""
    return path is not None and str(path) == "-"


@contextlib.contextmanager
def csv_output(path: Path) -> Iterator[TextIO]:
    """The file at ``path``, opened to write CSV; standard output for ``-``."""
    if to_stdout(path):
        yield sys.stdout
        sys.stdout.flush()
        return
    with path.open("w", newline="", encoding="utf-8") as file:
        yield file


def write_csv(path: Path, history: MetricHistory) -> None:
    """Columns step, value, timestamp (Unix seconds); floats as repr, so they read back exact."""
    with csv_output(path) as file:
        writer = csv.writer(file)
        writer.writerow(["step", "value", "timestamp"])
        writer.writerows(
            zip(
                history.steps.tolist(),
                history.values.tolist(),
                history.timestamps.tolist(),
                strict=True,
            )
        )


def write_png(path: Path, history: MetricHistory, metric: str, title: str) -> None:
    # Imported here: matplotlib takes longer to load than the rest of the command line, and it
    # is an extra (``simtrack history`` checks that it is installed before it asks the server).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, whatever the environment's default backend
    axes = figure.add_subplot()
    values = np.where(np.isfinite(history.values), history.values, np.nan)  # gaps, not spikes
    axes.plot(history.steps, values, linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}, {title}")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
