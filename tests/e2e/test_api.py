"""The API end to end: the real server on SQLite and PostgreSQL, through its stubs: health,
reflection and shutdown, and the CRUD of every entity.

It is served in-process (``app.start`` on a thread, a real port and database): these tests are
about the API, not the process; the clean shutdown on SIGTERM is checked on a real process.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2, scenarios_pb2
from tests.support import Server
from tests.support.api_objects import (
    all_agent_ids,
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
    when,
)
from tests.support.protos import (
    SCENARIO,
    Agent,
    Experiment,
    ExperimentStatus,
    Framework,
    Participant,
    RunStatus,
    Simulation,
    SimulationStatus,
    Template,
    mask,
    struct,
)
from tests.support.waiting import wait_for

# Over gRPC and over HTTP (Connect with JSON, gRPC-Web): one API, the same answers.
pytestmark = [pytest.mark.in_process, pytest.mark.transports("grpc", "connect-json", "grpc-web")]

# One service per aggregate.
SIMTRACK_SERVICES = {
    "simtrack.v1.AgentService",
    "simtrack.v1.ArtifactService",
    "simtrack.v1.ExperimentService",
    "simtrack.v1.RunService",
    "simtrack.v1.ScenarioService",
    "simtrack.v1.TelemetryService",
    "simtrack.v1.ValidationService",
}
SERVING: int = health_pb2.HealthCheckResponse.SERVING


# Health, reflection, shutdown


def health_reports_serving(server: Server) -> None:
    assert server.health_status("") == SERVING

    def agent_service_serving() -> bool:
        try:
            return server.health_status("simtrack.v1.AgentService") == SERVING
        except grpc.RpcError as exc:  # NOT_FOUND until the first database probe has run
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
            return False

    wait_for(agent_service_serving, what="simtrack.v1.AgentService to report SERVING")
    for name in sorted(SIMTRACK_SERVICES):
        assert server.health_status(name) == SERVING


def reflection_lists_and_describes_the_services(server: Server) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="simtrack.v1.RunService"),
    ]
    responses = list(server.reflection.ServerReflectionInfo(iter(requests), timeout=10))
    assert len(responses) == 2
    services = {s.name for s in responses[0].list_services_response.service}
    assert services == SIMTRACK_SERVICES | {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = responses[1].file_descriptor_response.file_descriptor_proto
    assert files, responses[1]
    assert any(b"simtrack/v1/runs.proto" in f for f in files)


def sigterm_stops_the_server_cleanly(server: Server) -> None:
    new_agent(server)
    assert server.stop() == 0
    assert "shutting down" in server.stderr
    assert server.process.process.poll() == 0


@pytest.mark.in_process(False)
def test_health_reflection_and_clean_shutdown(server: Server) -> None:
    health_reports_serving(server)
    reflection_lists_and_describes_the_services(server)
    sigterm_stops_the_server_cleanly(server)


# CRUD of every entity


def test_agent_crud(server: Server) -> None:
    config = {"model": "gpt-x", "temperature": 0.2, "tools": ["search", "calc"], "limits": {"n": 3}}
    created = new_agent(server, "pricing-bot", Framework.FRAMEWORK_LANGCHAIN, config)
    assert uuid.UUID(created.id)
    assert created.name == "pricing-bot"
    assert created.framework == Framework.FRAMEWORK_LANGCHAIN
    assert as_dict(created.config) == config
    assert created.HasField("create_time") and created.HasField("update_time")
    assert abs(when(created.create_time) - datetime.now(UTC)) < timedelta(minutes=1)

    got = server.agents.GetAgent(agents_pb2.GetAgentRequest(id=created.id)).agent
    assert got == created
    assert all_agent_ids(server) == [created.id]

    request = agents_pb2.UpdateAgentRequest(
        agent=Agent(id=created.id, name="pricing-bot-2"), update_mask=mask("name")
    )
    updated = server.agents.UpdateAgent(request).agent
    assert updated.name == "pricing-bot-2"
    assert updated.framework == created.framework and updated.config == created.config
    assert server.agents.GetAgent(agents_pb2.GetAgentRequest(id=created.id)).agent == updated

    server.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=created.id))
    assert_not_found(lambda: server.agents.GetAgent(agents_pb2.GetAgentRequest(id=created.id)))
    assert_not_found(
        lambda: server.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=created.id))
    )
    assert all_agent_ids(server) == []


def test_template_crud_and_experiment_from_template(server: Server) -> None:
    config = {"seed": 1, "market": {"volatility": 0.1, "currency": "USD"}, "steps": 100}
    template = server.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(
            template=Template(name="baseline", description="defaults", config=struct(config))
        )
    ).template
    assert uuid.UUID(template.id) and template.name == "baseline"
    assert as_dict(template.config) == config
    get_template = experiments_pb2.GetTemplateRequest(id=template.id)
    assert server.experiments.GetTemplate(get_template).template == template
    listed = server.experiments.ListTemplates(experiments_pb2.ListTemplatesRequest()).templates
    assert [t.id for t in listed] == [template.id]
    template = server.experiments.UpdateTemplate(
        experiments_pb2.UpdateTemplateRequest(
            template=Template(id=template.id, description="shared defaults"),
            update_mask=mask("description"),
        )
    ).template
    assert template.description == "shared defaults" and template.name == "baseline"

    agent = new_agent(server)
    experiment = new_experiment(
        server,
        agent.id,
        params={"market": {"volatility": 0.5}, "extra": True},
        template_id=template.id,
    )
    merged = {
        "seed": 1,
        "market": {"volatility": 0.5, "currency": "USD"},
        "steps": 100,
        "extra": True,
    }
    assert as_dict(experiment.params) == merged
    assert experiment.status == ExperimentStatus.EXPERIMENT_STATUS_DRAFT
    assert experiment.agent_id == agent.id and experiment.scenario_id == SCENARIO

    # The experiment keeps its merged params when the template goes.
    server.experiments.DeleteTemplate(experiments_pb2.DeleteTemplateRequest(id=template.id))
    assert_not_found(lambda: server.experiments.GetTemplate(get_template))
    assert as_dict(get_experiment(server, experiment.id).params) == merged


def test_experiment_crud(server: Server) -> None:
    agent = new_agent(server)
    other_agent = new_agent(server)
    created = server.experiments.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(
            experiment=Experiment(
                name="price sensitivity",
                description="does the bot undercut?",
                agent_id=agent.id,
                scenario_id=SCENARIO,
                params=struct({"price_floor": 3}),
                hypothesis="it does",
                results_summary=struct({"score": 0}),
            )
        )
    ).experiment
    assert uuid.UUID(created.id)
    assert created.name == "price sensitivity" and created.hypothesis == "it does"
    assert as_dict(created.params) == {"price_floor": 3}
    assert as_dict(created.results_summary) == {"score": 0}
    assert created.status == ExperimentStatus.EXPERIMENT_STATUS_DRAFT
    assert get_experiment(server, created.id) == created
    assert list_experiments(server, "") == [created.id]

    updated = server.experiments.UpdateExperiment(
        experiments_pb2.UpdateExperimentRequest(
            experiment=Experiment(
                id=created.id, agent_id=other_agent.id, results_summary=struct({"score": 0.75})
            ),
            update_mask=mask("agent_id", "results_summary"),
        )
    ).experiment
    assert updated.agent_id == other_agent.id
    assert as_dict(updated.results_summary) == {"score": 0.75}
    assert updated.name == created.name and updated.params == created.params
    assert get_experiment(server, created.id) == updated

    server.experiments.DeleteExperiment(experiments_pb2.DeleteExperimentRequest(id=created.id))
    assert_not_found(lambda: get_experiment(server, created.id))
    assert list_experiments(server, "") == []


def test_simulation_crud(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    standalone = new_simulation(server)
    attached = new_simulation(server, experiment.id)
    assert standalone.experiment_id == "" and attached.experiment_id == experiment.id
    assert standalone.status == SimulationStatus.SIMULATION_STATUS_PENDING
    assert not standalone.HasField("start_time") and not standalone.HasField("end_time")
    assert as_dict(standalone.parameters) == {"seed": 7}
    get = experiments_pb2.GetSimulationRequest(id=standalone.id)
    assert server.experiments.GetSimulation(get).simulation == standalone
    assert list_simulations(server, "") == [standalone.id, attached.id]

    def update(status: int, **fields: Any) -> Simulation:
        simulation = Simulation(
            id=standalone.id, status=SimulationStatus.ValueType(status), **fields
        )
        paths = ["status", *fields]
        request = experiments_pb2.UpdateSimulationRequest(
            simulation=simulation, update_mask=mask(*paths)
        )
        return server.experiments.UpdateSimulation(request).simulation

    running = update(
        SimulationStatus.SIMULATION_STATUS_RUNNING,
        experiment_id=experiment.id,
        metadata=struct({"host": "w1"}),
    )
    assert running.status == SimulationStatus.SIMULATION_STATUS_RUNNING
    assert running.experiment_id == experiment.id
    assert as_dict(running.metadata) == {"host": "w1"}
    assert running.HasField("start_time") and not running.HasField("end_time")
    done = update(
        SimulationStatus.SIMULATION_STATUS_COMPLETED, results_summary=struct({"profit": 12.5})
    )
    assert done.HasField("end_time") and done.start_time == running.start_time
    assert when(done.end_time) >= when(done.start_time)
    assert as_dict(done.results_summary) == {"profit": 12.5}
    assert as_dict(done.parameters) == {"seed": 7}

    server.experiments.DeleteSimulation(experiments_pb2.DeleteSimulationRequest(id=standalone.id))
    assert_not_found(lambda: server.experiments.GetSimulation(get))
    assert list_simulations(server, "") == [attached.id]


def test_run_and_participant_crud(server: Server) -> None:
    seller, rival = new_agent(server, "seller"), new_agent(server, "rival")
    experiment = new_experiment(server, seller.id, params={"a": 1, "b": {"c": 2}})
    scenario = server.scenarios.GetScenario(scenarios_pb2.GetScenarioRequest(id=SCENARIO)).scenario

    run = new_run(server, experiment.id, params={"b": {"d": 3}})
    assert uuid.UUID(run.id) and run.experiment_id == experiment.id and run.run_number == 1
    assert run.scenario_id == SCENARIO and run.scenario_hash == scenario.content_hash
    assert as_dict(run.params) == {"a": 1, "b": {"c": 2, "d": 3}}
    assert run.status == RunStatus.RUN_STATUS_PENDING
    assert run.total_ticks == scenario.duration_ticks > 0
    assert run.current_tick == 0 and run.progress_percent == 0
    assert get_run(server, run.id) == run
    assert list_runs(server, "") == [run.id]

    mine = new_participant(server, run.id, seller.id, "seller")
    theirs = new_participant(server, run.id, rival.id, "competitor")
    assert (mine.run_id, mine.agent_id, mine.role) == (run.id, seller.id, "seller")
    get_mine = runs_pb2.GetParticipantRequest(id=mine.id)
    assert server.runs.GetParticipant(get_mine).participant == mine
    assert list_participants(server, run.id) == [mine.id, theirs.id]
    changed = server.runs.UpdateParticipant(
        runs_pb2.UpdateParticipantRequest(
            participant=Participant(
                id=mine.id, role="lead seller", config_override=struct({"aggressive": True})
            ),
            update_mask=mask("role", "config_override"),
        )
    ).participant
    assert changed.role == "lead seller"
    assert as_dict(changed.config_override) == {"aggressive": True}
    server.runs.DeleteParticipant(runs_pb2.DeleteParticipantRequest(id=theirs.id))
    assert list_participants(server, run.id) == [mine.id]

    # Deleting a run takes its participants with it.
    server.runs.DeleteRun(runs_pb2.DeleteRunRequest(id=run.id))
    assert_not_found(lambda: get_run(server, run.id))
    assert_not_found(lambda: server.runs.GetParticipant(get_mine))
    assert list_runs(server, "") == []
    # With no run referring to it any more, the rival agent can go.
    server.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=rival.id))
