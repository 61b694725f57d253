"""Validations: verdicts on runs.

When a run completes, its scenario's success criteria are checked once against the run's
metric summaries: one validation per criterion (validator ``scenario``, kind = the metric),
score = the observed statistic. A run completed through UpdateRun is checked in the same
transaction; one completed by its worker's final status is checked right after the group commit
that ended it, and a sweep catches any run a crash left unchecked (``runs.criteria_checked_at``
marks the check done, so it happens exactly once, whichever server process gets there first).
External validators record their own verdicts with CreateValidation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from simtrack.errors import AlreadyExists, InvalidArgument, NotFound
from simtrack.server.db.models import Metric, Run, Validation, utcnow
from simtrack.server.db.uow import UnitOfWork, UnitOfWorkFactory
from simtrack.server.domain.listing import Listing, Page
from simtrack.server.domain.model import RunStatus, json_object, require_id, require_name
from simtrack.server.domain.tenancy import acting_for
from simtrack.server.scenarios import ScenarioCatalogue, ScenarioSpec, SuccessCriterion

log = logging.getLogger(__name__)

SCENARIO_VALIDATOR = "scenario"  # reserved for the automatic success-criteria check
KIND_MAX = 200
VALIDATOR_MAX = 100


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return value.lower() == "true"


VALIDATION_LISTING = Listing("validations", {"validator": str, "kind": str, "passed": _bool})


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
    nothing to check."""
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


async def _load_run(uow: UnitOfWork, run_id: str, field: str) -> Run:
    # Not domain.runs.load_run: that module imports this one (UpdateRun checks criteria).
    run = await uow.runs.get(require_id(field, run_id))
    if run is None:
        raise NotFound("run", run_id, field)
    return run


async def load_validation(uow: UnitOfWork, validation_id: str, field: str = "id") -> Validation:
    validation = await uow.validations.get(require_id(field, validation_id))
    if validation is None:
        raise NotFound("validation", validation_id, field)
    return validation


class ValidationService:
    def __init__(self, uow: UnitOfWorkFactory, catalogue: ScenarioCatalogue) -> None:
        self.uow = uow
        self.catalogue = catalogue

    async def create(
        self,
        *,
        run_id: str,
        validator: str,
        kind: str,
        passed: bool,
        score: float | None,
        details: Mapping[str, Any],
    ) -> Validation:
        """An external validator's verdict; one per (run, validator, kind)."""
        validator = require_name("validation.validator", validator, max_len=VALIDATOR_MAX)
        if validator == SCENARIO_VALIDATOR:
            raise InvalidArgument.of(
                "validation.validator", f"{SCENARIO_VALIDATOR!r} is reserved for the server"
            )
        kind = require_name("validation.kind", kind, max_len=KIND_MAX)
        if score is not None and not math.isfinite(score):
            raise InvalidArgument.of("validation.score", "must be a finite number")
        details = json_object("validation.details", details)
        async with self.uow() as uow:
            run = await _load_run(uow, run_id, "validation.run_id")
            if await uow.validations.exists_for(run.id, validator, kind):
                raise AlreadyExists(f"{validator!r} already judged {kind!r} for this run")
            validation = Validation(
                run_id=run.id,
                validator=validator,
                kind=kind,
                passed=passed,
                score=score,
                details=details,
            )
            await uow.validations.add(validation)
            await uow.commit()
        return validation

    async def get(self, validation_id: str) -> Validation:
        async with self.uow() as uow:
            return await load_validation(uow, validation_id)

    async def list(
        self, run_id: str, page_size: int, page_token: str, filter_text: str
    ) -> Page[Validation]:
        run_id = require_id("run_id", run_id)
        page = VALIDATION_LISTING.request(page_size, page_token, filter_text, run_id)
        async with self.uow() as uow:
            await _load_run(uow, run_id, "run_id")
            rows, cursor = await uow.validations.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def check_completed(self, tenant_id: str, run_ids: Iterable[str]) -> int:
        """Check the success criteria of these runs of one tenant, if they completed and are
        unchecked; how many were checked."""
        checked = 0
        with acting_for(tenant_id):
            async with self.uow() as uow:
                for run_id in sorted(run_ids):  # one lock order
                    run = await uow.runs.get(run_id, for_update=True)
                    if run is not None:
                        verdicts = await check_success_criteria(uow, run, self.catalogue)
                        checked += verdicts is not None
                await uow.commit()
        return checked

    async def sweep(self) -> int:
        """Check every completed run left unchecked (e.g. by a crash after its commit)."""
        async with self.uow() as uow:
            tenants = [t.id for t in await uow.access.tenants()]
        checked = 0
        for tenant_id in tenants:
            with acting_for(tenant_id):
                async with self.uow() as uow:
                    run_ids = await uow.runs.unchecked_completed()
            if run_ids:
                checked += await self.check_completed(tenant_id, run_ids)
        return checked
