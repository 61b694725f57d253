"""The API end to end, served in-process on SQLite and PostgreSQL: listing (pages, filters, field
masks), cascades, run numbering and lifecycle, and the scenario catalogue.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2, scenarios_pb2
from tests.support import Server
from tests.support.api_objects import (
    all_agent_ids,
    all_pages,
    as_dict,
    assert_not_found,
    get_experiment,
    get_run,
    list_experiments,
    list_participants,
    list_runs,
    list_simulations,
    new_agent,
    new_experiment,
    new_participant,
    new_run,
    new_simulation,
    set_run_status,
    start_run,
    when,
)
from tests.support.protos import (
    SCENARIO,
    Agent,
    Experiment,
    ExperimentStatus,
    Framework,
    Participant,
    Run,
    RunStatus,
    Simulation,
    Template,
    mask,
    struct,
)

pytestmark = pytest.mark.in_process

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "scenarios"


# Listing


def test_pagination_across_pages(server: Server) -> None:
    created = [
        new_agent(server, f"agent-{i:02d}", Framework.FRAMEWORK_BASELINE + i % 2).id
        for i in range(23)
    ]

    def agents_page(token: str) -> tuple[list[str], str]:
        request = agents_pb2.ListAgentsRequest(page_size=5, page_token=token)
        response = server.agents.ListAgents(request)
        return [a.id for a in response.agents], response.next_page_token

    pages = all_pages(agents_page)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [i for page in pages for i in page] == created
    # 0 means the default page size (50): everything at once, no next page.
    assert all_agent_ids(server, page_size=0) == created
    # An exact multiple of the page size: the last full page must not promise a further one.
    exact = server.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=23))
    assert [a.id for a in exact.agents] == created and exact.next_page_token == ""

    # Paging a filtered list keeps the filter.
    langchain = [a for i, a in enumerate(created) if i % 2 == 1]

    def langchain_page(token: str) -> tuple[list[str], str]:
        request = agents_pb2.ListAgentsRequest(
            page_size=4, page_token=token, filter='framework = "langchain"'
        )
        response = server.agents.ListAgents(request)
        return [a.id for a in response.agents], response.next_page_token

    seen = [i for page in all_pages(langchain_page) for i in page]
    assert seen == langchain

    # Children of one parent page within that parent.
    experiment = new_experiment(server, created[0])
    run, other_run = new_run(server, experiment.id), new_run(server, experiment.id)
    members = [new_participant(server, run.id, agent_id).id for agent_id in created[:7]]
    new_participant(server, other_run.id, created[0])

    def participants_page(token: str) -> tuple[list[str], str]:
        request = runs_pb2.ListParticipantsRequest(run_id=run.id, page_size=3, page_token=token)
        response = server.runs.ListParticipants(request)
        return [p.id for p in response.participants], response.next_page_token

    pages = all_pages(participants_page)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [i for page in pages for i in page]
    assert seen == members


def test_filters(server: Server) -> None:
    base = new_agent(server, "base", Framework.FRAMEWORK_BASELINE)
    lang = new_agent(server, "lang", Framework.FRAMEWORK_LANGCHAIN)
    crew = new_agent(server, "crew", Framework.FRAMEWORK_CREWAI)
    assert all_agent_ids(server, 'framework = "langchain"') == [lang.id]
    assert all_agent_ids(server, "framework = LANGCHAIN") == [lang.id]
    assert all_agent_ids(server, 'name = "crew"') == [crew.id]
    assert all_agent_ids(server, 'name != "crew" AND framework != "langchain"') == [base.id]
    assert all_agent_ids(server, 'name = "nobody"') == []

    for name in ("alpha", "beta"):
        server.experiments.CreateTemplate(
            experiments_pb2.CreateTemplateRequest(template=Template(name=name))
        )
    templates = server.experiments.ListTemplates(
        experiments_pb2.ListTemplatesRequest(filter='name != "alpha"')
    ).templates
    assert [t.name for t in templates] == ["beta"]

    first = new_experiment(server, base.id, name="first")
    second = new_experiment(server, lang.id, name="second", scenario_id="tier2-supply-shock")
    assert list_experiments(server, f'agent_id = "{lang.id}"') == [second.id]
    assert list_experiments(server, 'scenario_id = "tier0-tutorial"') == [first.id]
    assert list_experiments(server, 'name = "first"') == [first.id]
    run = new_run(server, first.id)
    assert list_experiments(server, 'status = "running"') == [first.id]
    assert list_experiments(server, 'status = "draft"') == [second.id]

    other_run = new_run(server, second.id)
    start_run(server, other_run.id)
    assert list_runs(server, f'experiment_id = "{first.id}"') == [run.id]
    assert list_runs(server, 'status = "running"') == [other_run.id]
    assert list_runs(server, 'scenario_id = "tier2-supply-shock"') == [other_run.id]
    assert list_runs(server, 'status != "running" AND status != "completed"') == [run.id]

    detached = new_simulation(server)
    attached = new_simulation(server, first.id)
    assert list_simulations(server, 'experiment_id = ""') == [detached.id]
    assert list_simulations(server, f'experiment_id = "{first.id}"') == [attached.id]
    assert list_simulations(server, 'experiment_id != ""') == [attached.id]
    assert list_simulations(server, 'status = "pending"') == [detached.id, attached.id]

    seller = new_participant(server, run.id, base.id, "seller")
    buyer = new_participant(server, run.id, crew.id, "buyer")
    assert list_participants(server, run.id, 'role = "buyer"') == [buyer.id]
    assert list_participants(server, run.id, f'agent_id = "{base.id}"') == [seller.id]


def test_enum_filters_take_the_proto_names_too(server: Server) -> None:
    """A client holding only the generated enum's names filters with them: the same runs."""
    agent = new_agent(server, "enum-spellings", Framework.FRAMEWORK_CREWAI)
    experiment = new_experiment(server, agent.id, name="enum-spellings")
    pending = new_run(server, experiment.id)
    running = new_run(server, experiment.id)
    start_run(server, running.id)
    done = new_run(server, experiment.id)
    start_run(server, done.id)
    set_run_status(server, done.id, RunStatus.RUN_STATUS_COMPLETED)

    mine = f'experiment_id = "{experiment.id}" AND '
    short = list_runs(server, mine + "status = completed")
    assert short == [done.id]
    for spelling in ("RUN_STATUS_COMPLETED", '"RUN_STATUS_COMPLETED"', "run_status_Completed"):
        assert list_runs(server, mine + f"status = {spelling}") == short, spelling
    assert list_runs(server, mine + "status != RUN_STATUS_COMPLETED") == [pending.id, running.id]
    stats = server.runs.GetRunStats(
        runs_pb2.GetRunStatsRequest(filter=mine + "status = RUN_STATUS_RUNNING")
    )
    assert stats.total == 1
    assert all_agent_ids(server, "framework = FRAMEWORK_CREWAI") == [agent.id]

    with pytest.raises(grpc.RpcError) as error:
        list_runs(server, "status = RUN_STATUS_UNSPECIFIED")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RUN_STATUS_<VALUE>" in (error.value.details() or "")
    assert "completed" in (error.value.details() or "")


def test_field_mask_updates_change_only_the_masked_fields(server: Server) -> None:
    agent = new_agent(server, "masked", Framework.FRAMEWORK_CREWAI, {"k": 1})
    # The request carries other new values too: only the masked field may change.
    request = agents_pb2.UpdateAgentRequest(
        agent=Agent(
            id=agent.id,
            name="renamed",
            framework=Framework.FRAMEWORK_BASELINE,
            config=struct({"k": 2}),
        ),
        update_mask=mask("config"),
    )
    updated = server.agents.UpdateAgent(request).agent
    assert as_dict(updated.config) == {"k": 2}
    assert updated.name == "masked" and updated.framework == Framework.FRAMEWORK_CREWAI
    assert updated.create_time == agent.create_time
    assert when(updated.update_time) > when(agent.update_time)
    assert server.agents.GetAgent(agents_pb2.GetAgentRequest(id=agent.id)).agent == updated

    experiment = new_experiment(server, agent.id, name="e", params={"p": 1})
    changed = server.experiments.UpdateExperiment(
        experiments_pb2.UpdateExperimentRequest(
            experiment=Experiment(
                id=experiment.id, name="e2", hypothesis="h", params=struct({"p": 9})
            ),
            update_mask=mask("hypothesis"),
        )
    ).experiment
    assert changed.hypothesis == "h" and changed.name == "e"
    assert as_dict(changed.params) == {"p": 1}
    assert changed.scenario_id == SCENARIO and changed.agent_id == agent.id
    assert when(changed.update_time) > when(experiment.update_time)

    run = new_run(server, experiment.id)
    progressed = server.runs.UpdateRun(
        runs_pb2.UpdateRunRequest(
            run=Run(
                id=run.id,
                current_tick=40,
                progress_percent=40.0,
                worker_id="host-1/42",
                status=RunStatus.RUN_STATUS_FAILED,
                error_message="not masked",
            ),
            update_mask=mask("current_tick", "progress_percent", "worker_id"),
        )
    ).run
    assert (progressed.current_tick, progressed.progress_percent) == (40, 40.0)
    assert progressed.worker_id == "host-1/42"
    assert progressed.status == RunStatus.RUN_STATUS_PENDING
    assert progressed.error_message == "" and progressed.total_ticks == run.total_ticks
    assert progressed.run_number == run.run_number and progressed.params == run.params
    assert when(progressed.update_time) > when(run.update_time)
    assert get_run(server, run.id) == progressed

    template = server.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(
            template=Template(name="t", description="d", config=struct({"x": 1}))
        )
    ).template
    renamed = server.experiments.UpdateTemplate(
        experiments_pb2.UpdateTemplateRequest(
            template=Template(id=template.id, name="t2", description="other"),
            update_mask=mask("name"),
        )
    ).template
    assert (renamed.name, renamed.description) == ("t2", "d")
    assert as_dict(renamed.config) == {"x": 1}
    assert when(renamed.update_time) > when(template.update_time)

    simulation = new_simulation(server, experiment.id)
    detached = server.experiments.UpdateSimulation(
        experiments_pb2.UpdateSimulationRequest(
            simulation=Simulation(id=simulation.id, parameters=struct({"seed": 8})),
            update_mask=mask("experiment_id"),
        )
    ).simulation
    assert detached.experiment_id == ""
    assert as_dict(detached.parameters) == {"seed": 7}
    assert when(detached.update_time) > when(simulation.update_time)

    participant = new_participant(server, run.id, agent.id, "seller")
    overridden = server.runs.UpdateParticipant(
        runs_pb2.UpdateParticipantRequest(
            participant=Participant(id=participant.id, role="x", config_override=struct({"o": 1})),
            update_mask=mask("config_override"),
        )
    ).participant
    assert overridden.role == "seller" and as_dict(overridden.config_override) == {"o": 1}
    assert when(overridden.update_time) > when(participant.update_time)


# Cascades, numbering, lifecycle


def test_deleting_an_experiment_cascades_to_runs_and_detaches_simulations(
    server: Server,
) -> None:
    agent, helper = new_agent(server), new_agent(server)
    doomed = new_experiment(server, agent.id, name="doomed")
    kept = new_experiment(server, agent.id, name="kept")
    runs = [new_run(server, doomed.id), new_run(server, doomed.id)]
    participants = [new_participant(server, r.id, helper.id) for r in runs]
    simulations = [new_simulation(server, doomed.id), new_simulation(server, doomed.id)]
    kept_run = new_run(server, kept.id)
    kept_simulation = new_simulation(server, kept.id)

    server.experiments.DeleteExperiment(experiments_pb2.DeleteExperimentRequest(id=doomed.id))

    assert_not_found(lambda: get_experiment(server, doomed.id))
    for run in runs:
        assert_not_found(lambda: get_run(server, run.id))  # noqa: B023 - called at once
    for participant in participants:
        request = runs_pb2.GetParticipantRequest(id=participant.id)
        assert_not_found(lambda: server.runs.GetParticipant(request))  # noqa: B023
    for simulation in simulations:
        request_sim = experiments_pb2.GetSimulationRequest(id=simulation.id)
        still_there = server.experiments.GetSimulation(request_sim).simulation
        assert still_there.experiment_id == ""
        assert still_there.parameters == simulation.parameters
    assert list_runs(server, f'experiment_id = "{doomed.id}"') == []
    assert list_runs(server, "") == [kept_run.id]
    assert list_simulations(server, 'experiment_id = ""') == [s.id for s in simulations]
    assert list_simulations(server, f'experiment_id = "{kept.id}"') == [kept_simulation.id]
    assert get_experiment(server, kept.id).status == ExperimentStatus.EXPERIMENT_STATUS_RUNNING
    # The helper agent's only references were participants of the deleted runs.
    server.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=helper.id))


def test_run_numbers_and_status_lifecycle(server: Server) -> None:
    agent = new_agent(server)
    experiment = new_experiment(server, agent.id)
    other = new_experiment(server, agent.id, name="other")
    assert experiment.status == ExperimentStatus.EXPERIMENT_STATUS_DRAFT

    runs = [new_run(server, experiment.id) for _ in range(3)]
    assert [r.run_number for r in runs] == [1, 2, 3]
    assert new_run(server, other.id).run_number == 1  # numbered per experiment
    status = get_experiment(server, experiment.id).status
    assert status == ExperimentStatus.EXPERIMENT_STATUS_RUNNING
    # Numbers are never reused, not even the highest one after its run is deleted.
    server.runs.DeleteRun(runs_pb2.DeleteRunRequest(id=runs[2].id))
    fourth = new_run(server, experiment.id)
    assert fourth.run_number == 4

    first = runs[0]
    starting = set_run_status(server, first.id, RunStatus.RUN_STATUS_STARTING)
    assert starting.status == RunStatus.RUN_STATUS_STARTING
    assert not starting.HasField("start_time") and not starting.HasField("complete_time")
    running = set_run_status(server, first.id, RunStatus.RUN_STATUS_RUNNING)
    assert running.HasField("start_time") and not running.HasField("complete_time")
    assert not running.HasField("duration")
    completed = set_run_status(server, first.id, RunStatus.RUN_STATUS_COMPLETED)
    assert completed.status == RunStatus.RUN_STATUS_COMPLETED
    assert completed.start_time == running.start_time
    assert completed.HasField("complete_time") and completed.HasField("duration")
    elapsed = when(completed.complete_time) - when(completed.start_time)
    assert completed.duration.ToTimedelta() == elapsed >= timedelta(0)
    assert get_run(server, first.id) == completed
    # Other runs still pending: the experiment is still running.
    status = get_experiment(server, experiment.id).status
    assert status == ExperimentStatus.EXPERIMENT_STATUS_RUNNING

    stopped = set_run_status(server, runs[1].id, RunStatus.RUN_STATUS_STOPPED)
    assert stopped.HasField("complete_time") and not stopped.HasField("start_time")
    assert not stopped.HasField("duration")
    start_run(server, fourth.id)
    set_run_status(server, fourth.id, RunStatus.RUN_STATUS_FAILED)
    # All runs ended and one completed.
    status = get_experiment(server, experiment.id).status
    assert status == ExperimentStatus.EXPERIMENT_STATUS_COMPLETED
    assert list_experiments(server, 'status = "completed"') == [experiment.id]

    # All runs ended and none completed: failed; no runs at all: draft again.
    (other_run_id,) = list_runs(server, f'experiment_id = "{other.id}"')
    start_run(server, other_run_id)
    set_run_status(server, other_run_id, RunStatus.RUN_STATUS_FAILED)
    assert get_experiment(server, other.id).status == ExperimentStatus.EXPERIMENT_STATUS_FAILED
    server.runs.DeleteRun(runs_pb2.DeleteRunRequest(id=other_run_id))
    assert get_experiment(server, other.id).status == ExperimentStatus.EXPERIMENT_STATUS_DRAFT
    # A new run makes a finished experiment running again.
    new_run(server, experiment.id)
    status = get_experiment(server, experiment.id).status
    assert status == ExperimentStatus.EXPERIMENT_STATUS_RUNNING


def test_concurrent_run_creates_get_distinct_numbers(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    request = runs_pb2.CreateRunRequest(run=Run(experiment_id=experiment.id))
    # All in flight at once on one channel; the server handles them concurrently.
    futures = [server.runs.CreateRun.future(request, timeout=30) for _ in range(20)]
    numbers = sorted(f.result().run.run_number for f in futures)
    assert numbers == list(range(1, 21))
    assert new_run(server, experiment.id).run_number == 21


# Scenarios


def test_scenario_catalogue(server: Server) -> None:
    stems = sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))
    assert SCENARIO in stems
    listed = server.scenarios.ListScenarios(scenarios_pb2.ListScenariosRequest()).scenarios
    assert [s.id for s in listed] == stems

    tutorial = server.scenarios.GetScenario(scenarios_pb2.GetScenarioRequest(id=SCENARIO))
    scenario = tutorial.scenario
    assert scenario.id == SCENARIO and scenario.difficulty_tier == 0 and scenario.name
    assert scenario.duration_ticks > 0
    assert len(scenario.content_hash) == 64 and int(scenario.content_hash, 16) >= 0
    assert scenario == next(s for s in listed if s.id == SCENARIO)

    def ids(filter: str, page_size: int = 0) -> list[str]:
        request = scenarios_pb2.ListScenariosRequest(filter=filter, page_size=page_size)
        return [s.id for s in server.scenarios.ListScenarios(request).scenarios]

    for tier in range(4):
        expected = [s.id for s in listed if s.difficulty_tier == tier]
        assert expected, f"no tier {tier} scenario"
        assert ids(f"difficulty_tier = {tier}") == expected
        assert all(i.startswith(f"tier{tier}-") for i in expected)
    assert ids("difficulty_tier != 0") == [i for i in stems if not i.startswith("tier0-")]
    assert ids("difficulty_tier = 7") == []

    def scenarios_page(token: str) -> tuple[list[str], str]:
        request = scenarios_pb2.ListScenariosRequest(page_size=2, page_token=token)
        response = server.scenarios.ListScenarios(request)
        return [s.id for s in response.scenarios], response.next_page_token

    pages = all_pages(scenarios_page)
    assert all(len(page) == 2 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 2
    assert [i for page in pages for i in page] == stems

    missing = scenarios_pb2.GetScenarioRequest(id="no-such-scenario")
    assert_not_found(lambda: server.scenarios.GetScenario(missing))
