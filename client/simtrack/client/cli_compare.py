"""``simtrack compare``'s outputs: a rich table per run and metric, a long CSV, a PNG of one
panel per metric with a line per run.

Runs are named in legends and tables by run number, with their experiment's name when they
come from more than one experiment (and a short id where that still leaves two alike).
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import JustifyMethod
from rich.table import Table

from simtrack.client._series import ComparedSeries, Comparison
from simtrack.client.cli_history import csv_output
from simtrack.v1 import telemetry_pb2

NOTE_WIDTH = 90  # characters per line of a panel's note (beside its title)
LEGEND_IN_PANEL = 8  # more runs than this: one legend beside the panels, in columns
_NUMBERS = ("points", "min", "max", "last")  # right-aligned


def run_labels(runs: list[telemetry_pb2.ComparedRun]) -> dict[str, str]:
    """A short, distinct name for each run: ``run 3``, or ``pricing v1 #3`` across experiments."""
    several = len({r.experiment_id for r in runs}) > 1
    labels = {
        r.run_id: f"{r.experiment_name or r.experiment_id[:8]} #{r.run_number}"
        if several
        else f"run {r.run_number}"
        for r in runs
    }
    alike = Counter(labels.values())
    return {
        run_id: f"{label} ({run_id[:8]})" if alike[label] > 1 else label
        for run_id, label in labels.items()
    }


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:g}"


def _finite(series: ComparedSeries) -> np.ndarray:
    return series.values[np.isfinite(series.values)]


def summary_table(found: Comparison) -> Table:
    """Per run and metric: points shown (of those in the range), steps, min, max, last."""
    labels = run_labels(found.runs)
    table = Table()
    for name in ("run", "metric", "unit", "points", "steps", "min", "max", "last"):
        justify: JustifyMethod = "right" if name in _NUMBERS else "left"
        table.add_column(name, no_wrap=name in ("run", "metric"), justify=justify)
    for s in found.series:
        if s.missing:
            table.add_row(labels[s.run_id], s.metric, "", "no such metric", "", "", "", "")
            continue
        finite = _finite(s)
        shown = f"{len(s.steps):,}" + (f"/{s.range_count:,}" if s.downsampled else "")
        steps = f"{s.steps[0]}..{s.steps[-1]}" if len(s.steps) else "-"
        table.add_row(
            labels[s.run_id],
            s.metric,
            s.unit,
            shown,
            steps,
            _number(finite.min()) if finite.size else "-",
            _number(finite.max()) if finite.size else "-",
            _number(float(s.values[-1])) if len(s.values) else "-",
        )
    if any(s.downsampled for s in found.series):
        table.caption = (
            f"points: shown/in range; downsampled to at most {found.max_points:,} per series, "
            "each step interval keeping its lowest and highest point: min and max are exact, "
            "steps and last are those of the points shown"
        )
    return table


def write_csv(path: Path, found: Comparison) -> None:
    """Long format, one row per point: run_id, run (its label), experiment, run_number,
    metric, unit, step, value, timestamp (Unix seconds); floats as repr, so they read back exact.
    """
    labels = run_labels(found.runs)
    runs = {r.run_id: r for r in found.runs}
    with csv_output(path) as file:
        writer = csv.writer(file)
        writer.writerow(
            ["run_id", "run", "experiment", "run_number", "metric", "unit", "step", "value",
             "timestamp"]
        )  # fmt: skip
        for s in found.series:
            run = runs[s.run_id]
            head = [
                s.run_id,
                labels[s.run_id],
                run.experiment_name,
                run.run_number,
                s.metric,
                s.unit,
            ]
            writer.writerows(
                [*head, step, value, stamp]
                for step, value, stamp in zip(
                    s.steps.tolist(), s.values.tolist(), s.timestamps.tolist(), strict=True
                )
            )


def _axis_label(metric: str, series: list[ComparedSeries]) -> str:
    units = sorted({s.unit for s in series if not s.missing and s.unit})
    return f"{metric} ({', '.join(units)})" if units else metric


def _panel_note(found: Comparison, series: list[ComparedSeries], labels: dict[str, str]) -> str:
    """What a panel leaves out: downsampling, runs without the metric or points in range."""
    notes = []
    sampled = [s for s in series if s.downsampled]
    if sampled:
        most = max(s.range_count for s in sampled)
        notes.append(
            f"downsampled: ≤{found.max_points:,} of up to {most:,} points per run "
            "(min and max per step interval)"
        )
    missing = [labels[s.run_id] for s in series if s.missing]
    if missing:
        notes.append(
            "no such metric: " + ", ".join(missing[:5]) + ("…" if len(missing) > 5 else "")
        )
    empty = [labels[s.run_id] for s in series if not s.missing and not len(s.steps)]
    if empty:
        notes.append(
            "no points in range: " + ", ".join(empty[:5]) + ("…" if len(empty) > 5 else "")
        )
    return "\n".join(textwrap.fill(note, NOTE_WIDTH) for note in notes)


def write_png(path: Path, found: Comparison, title: str) -> None:
    """One panel per metric, a line per run (one colour per run across panels)."""
    # Imported here: matplotlib takes longer to load than the rest of the command line, and it
    # is an extra (``simtrack compare`` checks that it is installed before it asks the server).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    labels = run_labels(found.runs)
    metrics = list(found.grids)
    figure = Figure(figsize=(10, 1.2 + 3.4 * len(metrics)), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, whatever the environment's default backend
    panels = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    colours = _colours(len(found.runs))
    colour = {r.run_id: colours[i] for i, r in enumerate(found.runs)}
    for axes, metric in zip(panels, metrics, strict=True):
        series = found.of_metric(metric)
        for s in series:
            if s.missing:
                continue
            values = np.where(np.isfinite(s.values), s.values, np.nan)  # gaps, not spikes
            axes.plot(
                s.steps, values, linewidth=1.1, color=colour[s.run_id], label=labels[s.run_id]
            )
        axes.set_title(metric, loc="left", fontweight="bold")
        note = _panel_note(found, series, labels)
        if note:
            axes.set_title(note, loc="right", fontsize="small", color="0.35")
        axes.set_xlabel("step")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        axes.set_ylabel(_axis_label(metric, series))
        axes.grid(alpha=0.3)
        axes.margins(x=0.01)
    handles, names = panels[0].get_legend_handles_labels()
    for axes in panels[1:]:  # runs missing from the first panel
        more_handles, more_names = axes.get_legend_handles_labels()
        for handle, name in zip(more_handles, more_names, strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if len(found.runs) <= LEGEND_IN_PANEL:
        panels[0].legend(handles, names, fontsize="small", framealpha=0.85)
    else:
        figure.legend(
            handles, names, loc="outside right upper", fontsize="x-small",
            ncols=1 + len(names) // 30,
        )  # fmt: skip
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def _colours(count: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours: matplotlib's tab10 for up to ten runs, a spread of turbo beyond."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, count)]


def title_of(found: Comparison) -> str:
    """``pricing v1: 3 runs``, or ``5 runs of 2 experiments``."""
    experiments = {r.experiment_id: r.experiment_name for r in found.runs}
    runs = f"{len(found.runs)} runs" if len(found.runs) > 1 else "1 run"
    if len(experiments) == 1:
        return f"{next(iter(experiments.values()))}: {runs}"
    return f"{runs} of {len(experiments)} experiments"
