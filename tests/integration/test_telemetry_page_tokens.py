"""ListMetrics' and ListEvents' page tokens are bound to the run and the filter they came from.

A token reused with another filter would start the other list at a place that means nothing in
it, and silently skip rows; it is refused instead, as the entity lists' tokens are
(tests/integration/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import pytest

from simtrack.errors import InvalidArgument
from simtrack.server.core.listing import Page
from simtrack.server.core.model import MetricKind
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import models
from simtrack.server.domain.history import HistoryService
from tests.support import Services


async def run_with_telemetry(services: Services, experiment_id: str) -> str:
    """A run with metrics a (gauge), b (counter), c (gauge) and events tick, trade, tick."""
    run = await services.run(experiment_id)
    async with services.uow() as uow:
        for name, kind in (
            ("a", MetricKind.GAUGE),
            ("b", MetricKind.COUNTER),
            ("c", MetricKind.GAUGE),
        ):
            uow.session.add(
                models.Metric(
                    id=f"{run.id[:30]}-{name}",
                    tenant_id=DEFAULT_TENANT_ID,
                    run_id=run.id,
                    name=name,
                    kind=kind,
                )
            )
        for position, event_type in enumerate(("tick", "trade", "tick")):
            uow.session.add(
                models.Event(
                    run_id=run.id,
                    seq=1,
                    position=position,
                    tenant_id=DEFAULT_TENANT_ID,
                    step=position,
                    time_ns=0,
                    type=event_type,
                )
            )
        await uow.commit()
    return run.id


class Listed(NamedTuple):
    call: Callable[..., Awaitable[Page[Any]]]
    kept: str  # a filter that keeps the first and the third row...
    other_filter: str
    key: str  # ...told apart by this attribute
    expected: list[Any]


LISTS = {
    "metrics": Listed(
        HistoryService.list_metrics, "kind = gauge", "kind = counter", "name", ["a", "c"]
    ),
    "events": Listed(HistoryService.list_events, "type = tick", "type = trade", "position", [0, 2]),
}


@pytest.mark.parametrize("listed", sorted(LISTS))
async def test_page_tokens_are_bound_to_filter_and_run(services: Services, listed: str) -> None:
    call, kept, other_filter, key, expected = LISTS[listed]
    history = HistoryService(services.uow)
    experiment = await services.experiment()
    run = await run_with_telemetry(services, experiment.id)
    other = await run_with_telemetry(services, experiment.id)

    first = await call(history, run, 1, "", kept)
    assert [getattr(row, key) for row in first.items] == expected[:1] and first.next_page_token
    for run_id, filter_text in ((run, ""), (run, other_filter), (other, kept)):
        with pytest.raises(InvalidArgument) as excinfo:
            await call(history, run_id, 1, first.next_page_token, filter_text)
        fields = [v.field for v in excinfo.value.violations]
        assert fields == ["page_token"], (run_id, filter_text)
    rest = await call(history, run, 5, first.next_page_token, f" {kept} ")  # same, spaced
    assert ([getattr(row, key) for row in rest.items], rest.next_page_token) == (expected[1:], "")
