"""ListMetrics' and ListEvents' page tokens are bound to the run and the filter they came from.

A token reused with another filter would start the other list at a place that means nothing in
it, and silently skip rows; it is refused instead, as the entity lists' tokens are
(tests/integration/test_contract.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from simtrack.errors import InvalidArgument
from simtrack.server.db import models
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.model import MetricKind
from simtrack.server.domain.tenancy import DEFAULT_TENANT_ID

if TYPE_CHECKING:
    from tests.integration.conftest import Services


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


def refused_token(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> bool:
    return [v.field for v in excinfo.value.violations] == ["page_token"]


async def test_list_metrics_tokens_are_bound_to_filter_and_run(services: Services) -> None:
    history = HistoryService(services.uow)
    experiment = await services.experiment()
    run = await run_with_telemetry(services, experiment.id)
    other = await run_with_telemetry(services, experiment.id)

    first = await history.list_metrics(run, 1, "", "kind = gauge")
    assert [m.name for m in first.items] == ["a"] and first.next_page_token
    for run_id, filter_text in ((run, ""), (run, "kind = counter"), (other, "kind = gauge")):
        with pytest.raises(InvalidArgument) as excinfo:
            await history.list_metrics(run_id, 1, first.next_page_token, filter_text)
        assert refused_token(excinfo), (run_id, filter_text)
    rest = await history.list_metrics(run, 5, first.next_page_token, " kind = gauge ")
    assert ([m.name for m in rest.items], rest.next_page_token) == (["c"], "")


async def test_list_events_tokens_are_bound_to_filter_and_run(services: Services) -> None:
    history = HistoryService(services.uow)
    experiment = await services.experiment()
    run = await run_with_telemetry(services, experiment.id)
    other = await run_with_telemetry(services, experiment.id)

    first = await history.list_events(run, 1, "", "type = tick")
    assert [e.position for e in first.items] == [0] and first.next_page_token
    for run_id, filter_text in ((run, ""), (run, "type = trade"), (other, "type = tick")):
        with pytest.raises(InvalidArgument) as excinfo:
            await history.list_events(run_id, 1, first.next_page_token, filter_text)
        assert refused_token(excinfo), (run_id, filter_text)
    rest = await history.list_events(run, 5, first.next_page_token, "type = tick")
    assert ([e.position for e in rest.items], rest.next_page_token) == ([2], "")
