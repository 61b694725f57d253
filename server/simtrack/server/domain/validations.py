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

import math
from collections.abc import Iterable, Mapping
from typing import Any

from simtrack.errors import AlreadyExists, InvalidArgument, NotFound
from simtrack.server.core.filters import ordered_text, parse_bool, parse_number, parse_time
from simtrack.server.core.listing import Listing, Page
from simtrack.server.core.model import json_object, require_id, require_name
from simtrack.server.core.tenancy import acting_for
from simtrack.server.db.models import Validation
from simtrack.server.domain.criteria import SCENARIO_VALIDATOR, check_success_criteria
from simtrack.server.domain.ports import UnitOfWork, UnitOfWorkFactory
from simtrack.server.domain.runs import load_run
from simtrack.server.scenario_catalogue import ScenarioCatalogue

KIND_MAX = 200
VALIDATOR_MAX = 100
CHECKS_PER_TRANSACTION = 16  # completed runs whose criteria one transaction checks


VALIDATION_LISTING = Listing(
    "validations",
    {
        "validator": ordered_text,
        "kind": ordered_text,
        "passed": parse_bool,
        "score": parse_number,
        "create_time": parse_time,
    },
)


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
            run = await load_run(uow, run_id, "validation.run_id")
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
        self, run_id: str, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Validation]:
        run_id = require_id("run_id", run_id)
        page = VALIDATION_LISTING.request(page_size, page_token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.validations.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def check_completed(self, tenant_id: str, run_ids: Iterable[str]) -> int:
        """Check the success criteria of these runs of one tenant, if they completed and are
        unchecked; how many were checked.
        """
        checked = 0
        ordered = sorted(run_ids)  # one lock order
        with acting_for(tenant_id):
            # A few runs per transaction: SQLite's one connection is ingest's too, and a fleet
            # ends a thousand runs at once.
            for start in range(0, len(ordered), CHECKS_PER_TRANSACTION):
                async with self.uow() as uow:
                    for run_id in ordered[start : start + CHECKS_PER_TRANSACTION]:
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
