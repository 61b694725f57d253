"""The contract of the domain services, on SQLite and on PostgreSQL alike: listing (pages, filters,
tokens bound to their filter) and unique names.
"""

from __future__ import annotations

import asyncio

import pytest

from simtrack.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from simtrack.server.core.model import (
    Framework,
    RunStatus,
    SimulationStatus,
)
from simtrack.server.db import models
from tests.support import Services
from tests.support.contract import count, missing_id, violation_fields

SCENARIO_ID = "tier0-tutorial"
OTHER_SCENARIO_ID = "tier2-supply-shock"


# --------------------------------------------------------------------------------------------
# Listing: pagination and filters


async def test_pagination_with_filter_has_no_gaps_or_duplicates(services: Services) -> None:
    baseline: list[str] = []
    everyone: list[str] = []
    for index in range(11):
        framework = Framework.BASELINE if index % 3 != 1 else Framework.CUSTOM
        agent = await services.agent(f"agent-{index:02d}", framework=framework)
        everyone.append(agent.id)
        if framework == Framework.BASELINE:
            baseline.append(agent.id)
    assert len(baseline) == 7

    async def walk(page_size: int, filter_text: str) -> list[list[str]]:
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await services.agents.list(page_size, token, filter_text)
            pages.append([a.id for a in page.items])
            token = page.next_page_token
            if not token:
                return pages
            assert len(pages) < 20, "pagination does not terminate"

    filtered = await walk(3, 'framework = "baseline"')
    assert [len(p) for p in filtered] == [3, 3, 1]
    assert [i for p in filtered for i in p] == baseline  # oldest first, no gaps, no duplicates

    unfiltered = await walk(4, "")
    assert [len(p) for p in unfiltered] == [4, 4, 3]
    assert [i for p in unfiltered for i in p] == everyone

    # An exact fit ends with an empty token on the last full page, not an extra empty page.
    exact = await walk(7, "framework = baseline")
    assert [len(p) for p in exact] == [7]

    custom = await walk(2, 'framework != "baseline"')
    assert [i for p in custom for i in p] == [i for i in everyone if i not in baseline]

    # Timestamps really are in creation order.
    stored = (await services.agents.list(100, "", "")).items
    assert [a.created_at for a in stored] == sorted(a.created_at for a in stored)


async def test_run_pagination_by_experiment_and_status(services: Services) -> None:
    first = await services.experiment()
    second = await services.experiment(first.agent_id)
    expected: list[str] = []
    for _ in range(5):
        expected.append((await services.run(first.id)).id)
        await services.run(second.id)
    stopped = expected[1::2]
    for run_id in stopped:
        await services.runs.update(run_id, {"status": RunStatus.STOPPED})

    ids: list[str] = []
    token = ""
    filter_text = f'experiment_id = "{first.id}"'
    while True:
        page = await services.runs.list(2, token, filter_text)
        assert all(r.experiment_id == first.id for r in page.items)
        ids += [r.id for r in page.items]
        token = page.next_page_token
        if not token:
            break
    assert ids == expected

    both = f'experiment_id = "{first.id}" AND status = stopped'
    page = await services.runs.list(1, "", both)
    assert [r.id for r in page.items] == stopped[:1]
    rest = await services.runs.list(5, page.next_page_token, both)
    assert [r.id for r in rest.items] == stopped[1:]
    assert rest.next_page_token == ""

    pending = await services.runs.list(100, "", "status = pending")
    assert len(pending.items) == 8 and all(r.status == RunStatus.PENDING for r in pending.items)


async def test_page_tokens_are_bound_to_their_filter(services: Services) -> None:
    for _ in range(3):
        await services.agent(framework=Framework.CUSTOM)
    page = await services.agents.list(1, "", "framework = custom")
    assert page.next_page_token
    with pytest.raises(InvalidArgument) as excinfo:
        await services.agents.list(1, page.next_page_token, "framework = baseline")
    assert violation_fields(excinfo.value) == ["page_token"]
    with pytest.raises(InvalidArgument):
        await services.agents.list(1, page.next_page_token, "")
    # The same filter (another page size is fine) continues where the first page ended.
    rest = await services.agents.list(5, page.next_page_token, "framework = custom")
    assert len(rest.items) == 2 and page.items[0].id not in {a.id for a in rest.items}

    # Participant tokens are bound to their run.
    experiment = await services.experiment()
    run_a = await services.run(experiment.id)
    run_b = await services.run(experiment.id)
    for _ in range(2):
        agent = await services.agent()
        for run in (run_a, run_b):
            await services.participants.create(
                run_id=run.id, agent_id=agent.id, role="", config_override={}
            )
    first = await services.participants.list(run_a.id, 1, "", "")
    assert first.next_page_token
    with pytest.raises(InvalidArgument) as excinfo:
        await services.participants.list(run_b.id, 1, first.next_page_token, "")
    assert violation_fields(excinfo.value) == ["page_token"]
    with pytest.raises(InvalidArgument) as excinfo:
        await services.agents.list(1, "bm90IGEgdG9rZW4=", "")
    assert violation_fields(excinfo.value) == ["page_token"]


async def test_filters(services: Services) -> None:
    agent = await services.agent("filter-agent")
    other = await services.agent("other-agent", framework=Framework.CREWAI)
    exp_a = await services.experiment(agent.id, name="exp-a")
    exp_b = await services.experiment(other.id, name="exp-b", scenario_id=OTHER_SCENARIO_ID)
    await services.run(exp_b.id)  # exp-b is now running
    template = await services.templates.create(name="tpl-x", description="", config={})
    await services.templates.create(name="tpl-y", description="", config={})

    async def experiment_ids(filter_text: str) -> list[str]:
        return [e.id for e in (await services.experiments.list(0, "", filter_text)).items]

    assert await experiment_ids('name = "exp-a"') == [exp_a.id]
    assert await experiment_ids("status = draft") == [exp_a.id]
    assert await experiment_ids("status = RUNNING") == [exp_b.id]
    assert await experiment_ids("status != draft") == [exp_b.id]
    assert await experiment_ids(f'agent_id = "{other.id}"') == [exp_b.id]
    assert await experiment_ids(f"scenario_id = {OTHER_SCENARIO_ID}") == [exp_b.id]
    assert await experiment_ids('name = "exp-a" AND status = running') == []

    agents = (await services.agents.list(0, "", 'name = "other-agent"')).items
    assert [a.id for a in agents] == [other.id]
    templates = (await services.templates.list(0, "", 'name = "tpl-x"')).items
    assert [t.id for t in templates] == [template.id]

    attached = await services.simulations.create(
        experiment_id=exp_a.id, status=None, parameters={}, metadata={}, results_summary={}
    )
    detached = await services.simulations.create(
        experiment_id="", status=None, parameters={}, metadata={}, results_summary={}
    )
    await services.simulations.update(detached.id, {"status": SimulationStatus.RUNNING})

    async def simulation_ids(filter_text: str) -> list[str]:
        return [s.id for s in (await services.simulations.list(0, "", filter_text)).items]

    assert await simulation_ids('experiment_id = ""') == [detached.id]
    assert await simulation_ids('experiment_id != ""') == [attached.id]
    assert await simulation_ids(f'experiment_id = "{exp_a.id}"') == [attached.id]
    assert await simulation_ids("status = running") == [detached.id]
    assert await simulation_ids("status = pending") == [attached.id]

    with pytest.raises(InvalidArgument) as excinfo:
        await services.experiments.list(0, "", "color = red")
    assert violation_fields(excinfo.value) == ["filter"]
    with pytest.raises(InvalidArgument):
        await services.runs.list(0, "", "status = exploded")


# --------------------------------------------------------------------------------------------
# Uniqueness


async def test_agent_names_are_unique(services: Services) -> None:
    first = await services.agent("unique-agent")
    second = await services.agent("second-agent")
    with pytest.raises(AlreadyExists):
        await services.agent("unique-agent")
    with pytest.raises(AlreadyExists):
        await services.agent(" unique-agent ")  # names are trimmed before the check
    with pytest.raises(AlreadyExists):
        await services.agents.update(second.id, {"name": "unique-agent"})
    assert (await services.agents.get(second.id)).name == "second-agent"
    # Renaming to its own name is not a conflict.
    await services.agents.update(first.id, {"name": "unique-agent"})
    assert await count(services, "agents") == 2


async def test_template_names_are_unique(services: Services) -> None:
    await services.templates.create(name="tpl", description="", config={})
    other = await services.templates.create(name="tpl-2", description="", config={})
    with pytest.raises(AlreadyExists):
        await services.templates.create(name="tpl", description="again", config={})
    with pytest.raises(AlreadyExists):
        await services.templates.update(other.id, {"name": "tpl"})
    assert (await services.templates.get(other.id)).name == "tpl-2"
    assert await count(services, "templates") == 2


async def test_concurrent_duplicate_names_leave_one_row(services: Services) -> None:
    """Two creates racing past the service's check meet the unique key: one wins."""
    results = await asyncio.gather(
        *(
            services.agents.create(name="racer", framework=Framework.BASELINE, config={})
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 3, results
    assert all(isinstance(e, AlreadyExists) for e in errors), errors
    assert await count(services, "agents", name="racer") == 1


async def test_unit_of_work_translates_constraint_violations(services: Services) -> None:
    """Violations the services did not catch first reach callers as simtrack errors."""
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    taken = (await services.agents.get(experiment.agent_id)).name

    with pytest.raises(AlreadyExists):
        async with services.uow() as uow:
            await uow.agents.add(models.Agent(name=taken, framework=Framework.BASELINE, config={}))
            await uow.commit()
    with pytest.raises(AlreadyExists):
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=experiment.id,
                    run_number=run.run_number,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                )
            )
            await uow.commit()
    with pytest.raises(FailedPrecondition):
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=missing_id(),
                    run_number=1,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                )
            )
            await uow.commit()
    with pytest.raises(InvalidArgument) as excinfo:
        async with services.uow() as uow:
            await uow.runs.add(
                models.Run(
                    experiment_id=experiment.id,
                    run_number=99,
                    scenario_id=SCENARIO_ID,
                    scenario_hash="0" * 64,
                    progress_percent=150.0,
                )
            )
            await uow.commit()
    assert "progress" in str(excinfo.value)
    assert await count(services, "agents") == 1
    assert await count(services, "runs") == 1


async def test_participant_added_twice_already_exists(services: Services) -> None:
    experiment = await services.experiment()
    run = await services.run(experiment.id)
    agent = await services.agent()
    await services.participants.create(
        run_id=run.id, agent_id=agent.id, role="a", config_override={}
    )
    with pytest.raises(AlreadyExists):
        await services.participants.create(
            run_id=run.id, agent_id=agent.id, role="b", config_override={}
        )
    participants = (await services.participants.list(run.id, 0, "", "")).items
    assert [(p.agent_id, p.role) for p in participants] == [(agent.id, "a")]
    # The same agent may take part in another run.
    other_run = await services.run(experiment.id)
    await services.participants.create(
        run_id=other_run.id, agent_id=agent.id, role="a", config_override={}
    )
    assert await count(services, "run_participants") == 2
