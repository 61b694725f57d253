"""The scenario's success criteria, judged on a completed run's metric summaries.

Kept apart from the validation service so that UpdateRun (``domain.runs``) can judge a run in
its own transaction without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from simtrack.server.core.model import RunStatus, utcnow
from simtrack.server.db.models import Metric, Run, Validation
from simtrack.server.domain.ports import UnitOfWork
from simtrack.server.scenario_catalogue import ScenarioCatalogue, ScenarioSpec, SuccessCriterion

SCENARIO_VALIDATOR = "scenario"  # reserved for the automatic success-criteria check


def observed(metric: Metric | None, criterion: SuccessCriterion) -> float | None:
    """The statistic a criterion compares, from the metric's summary (None: nothing logged)."""
    if metric is None:
        return None
    if criterion.stat == "count":
        return float(metric.count)
    return {"last": metric.last_value, "min": metric.min_value, "max": metric.max_value}[
        criterion.stat
    ]


def criteria_verdicts(
    run: Run, scenario: ScenarioSpec, metrics: Mapping[str, Metric]
) -> list[Validation]:
    """One validation per success criterion of ``scenario``, judged on the run's metrics."""
    verdicts = []
    for name, criterion in sorted(scenario.success_criteria.items()):
        value = observed(metrics.get(name), criterion)
        details: dict[str, Any] = {
            "metric": name,
            "op": criterion.op,
            "value": criterion.value,
            "stat": criterion.stat,
            "description": criterion.description,
            "scenario_hash_matches": scenario.content_hash == run.scenario_hash,
        }
        if value is None:
            details["reason"] = f"the run logged no finite value of {name!r}"
        verdicts.append(
            Validation(
                run_id=run.id,
                validator=SCENARIO_VALIDATOR,
                kind=name,
                passed=value is not None and criterion.evaluate(value),
                score=value if value is not None and math.isfinite(value) else None,
                details=details,
            )
        )
    return verdicts


async def check_success_criteria(
    uow: UnitOfWork, run: Run, catalogue: ScenarioCatalogue
) -> list[Validation] | None:
    """Record the verdicts of a completed, unchecked run (locked by the caller; the caller
    commits); None when the run is not due. A scenario gone from the catalogue leaves
    nothing to check.
    """
    if run.status != RunStatus.COMPLETED or run.criteria_checked_at is not None:
        return None
    scenario = catalogue.get(run.scenario_id)
    verdicts = []
    if scenario is not None:
        metrics = {m.name: m for m in await uow.metrics.for_run(run.id)}
        verdicts = criteria_verdicts(run, scenario, metrics)
        for verdict in verdicts:
            await uow.validations.add(verdict)
    run.criteria_checked_at = utcnow()
    await uow.runs.flush()
    return verdicts
