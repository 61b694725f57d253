"""The worker helper's rate: ``simtrack.client.Worker`` driven by one Python thread.

Run as ``python -m bench.helper_worker '<json config>'``: one thread calls
``run.log_metrics(step, {10 names: values})`` once per step inside ``with Worker(...) as run``;
the clock runs from the first call to the exit of the context manager (the final ack). Prints
one JSON line: the timings, or ``{"error": ...}`` when the helper is missing or fails.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HelperConfig:
    target: str
    run_id: str
    steps: int
    spool_dir: str
    metrics: int = 10


def load_worker() -> Any:
    """``simtrack.client.Worker`` (or from its module, if the package does not export it)."""
    package = importlib.import_module("simtrack.client")
    worker = getattr(package, "Worker", None)
    if worker is None:
        worker = importlib.import_module("simtrack.client.worker").Worker
    return worker


def measure(config: HelperConfig) -> dict[str, Any]:
    worker_class = load_worker()
    names = [f"metric_{i}" for i in range(config.metrics)]
    rows = np.random.default_rng(7).standard_normal((config.steps, config.metrics)).tolist()
    Path(config.spool_dir).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with worker_class(config.target, config.run_id, spool_dir=config.spool_dir) as run:
        for step, row in enumerate(rows):
            run.log_metrics(step, dict(zip(names, row, strict=True)))
        logged = time.monotonic()
    finished = time.monotonic()
    return {
        "points": config.steps * config.metrics,
        "seconds": finished - started,
        "log_seconds": logged - started,
    }


def main() -> int:
    config = HelperConfig(**json.loads(sys.argv[1]))
    try:
        record = measure(config)
    except BaseException as exc:  # noqa: BLE001 - reported, not raised: the bench goes on
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        record = {"error": f"{type(exc).__name__}: {exc}{where}"}
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
