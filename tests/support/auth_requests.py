"""Every RPC of the API with a valid request, and one object of every kind to aim them at: what
the API-key tests (``tests/e2e/test_auth.py``) call with each role.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)
from tests.support import Client, Server
from tests.support.http_stubs import STUB_NAMES
from tests.support.protos import (
    API_SERVICES,
    SCENARIO,
    TIMEOUT,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    RunStatus,
    Simulation,
    Template,
    mask,
    struct,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
SERVING: int = health_pb2.HealthCheckResponse.SERVING

Message = message.Message

SERVICES = {service.name: service for service in API_SERVICES.values()}
# "AgentService.GetAgent" -> its descriptor, for every RPC of the API.
METHODS = {
    f"{service.name}.{method.name}": method
    for service in SERVICES.values()
    for method in service.methods
}


# Helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def invoke(client: Client, method: str, request: Message) -> Any:
    """Call ``method`` ("Service.Method") through ``client``'s stubs."""
    service, name = method.split(".")
    rpc = getattr(getattr(client, STUB_NAMES[service]), name)
    descriptor = METHODS[method]
    if descriptor.client_streaming:  # StreamRun, UploadArtifact: the request is the first
        answer = rpc(iter([request]), timeout=TIMEOUT)
        return list(answer) if descriptor.server_streaming else answer
    if descriptor.server_streaming:  # WatchRun: its first answer is enough
        responses = rpc(request, timeout=TIMEOUT)
        first = next(iter(responses))
        responses.cancel()
        return first
    return rpc(request, timeout=TIMEOUT)


def empty_requests() -> list[tuple[str, Message]]:
    """Every RPC with an empty request: authentication comes before any validation."""
    return [(name, GetMessageClass(method.input_type)()) for name, method in METHODS.items()]


def snapshot(server: Server, *, keys: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table; without api_keys (whose last use calls stamp) if not ``keys``."""
    rows = server.database_snapshot()
    if not keys:
        del rows["api_keys"]
    return rows


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a table the CLI printed, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


# One object of every kind, and a valid request for every RPC on them


@dataclass(frozen=True)
class Objects:
    """One object of every kind in one tenant; ``spare_agent`` is referenced by nothing;
    ``streamed`` is a run a worker sent a metric and an event to.
    """

    agent: Agent
    spare_agent: Agent
    template: Template
    experiment: Experiment
    simulation: Simulation
    run: Run
    participant: Participant
    streamed: Run
    validation: validations_pb2.Validation
    artifact: artifacts_pb2.Artifact


def create_objects(client: Client) -> Objects:
    def agent() -> Agent:
        new = Agent(name=unique("agent"), framework=Framework.FRAMEWORK_CUSTOM)
        return client.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=new)).agent

    main_agent, spare_agent = agent(), agent()
    template = client.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(template=Template(name=unique("template")))
    ).template
    experiment = client.experiments.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(
            experiment=Experiment(
                name=unique("experiment"), agent_id=main_agent.id, scenario_id=SCENARIO
            ),
            template_id=template.id,
        )
    ).experiment
    simulation = client.experiments.CreateSimulation(
        experiments_pb2.CreateSimulationRequest(simulation=Simulation(experiment_id=experiment.id))
    ).simulation
    run = client.runs.CreateRun(runs_pb2.CreateRunRequest(run=Run(experiment_id=experiment.id))).run
    participant = client.runs.CreateParticipant(
        runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=run.id, agent_id=main_agent.id)
        )
    ).participant
    streamed = client.runs.CreateRun(
        runs_pb2.CreateRunRequest(run=Run(experiment_id=experiment.id))
    ).run
    Request = telemetry_pb2.StreamRunRequest
    telemetry = [
        Request(hello=telemetry_pb2.Hello(run_id=streamed.id)),
        Request(
            seq=1,
            metrics=telemetry_pb2.MetricBatch(
                series=[telemetry_pb2.MetricSeries(name="loss", steps=[0, 1], values=[0.5, 0.25])]
            ),
        ),
        Request(seq=2, events=telemetry_pb2.EventBatch(events=[telemetry_pb2.Event(type="x")])),
    ]
    answers = list(client.telemetry.StreamRun(iter(telemetry), timeout=TIMEOUT))
    assert answers[-1].ack.committed_seq == 2, answers
    validation = client.validations.CreateValidation(
        validations_pb2.CreateValidationRequest(
            validation=validations_pb2.Validation(
                run_id=streamed.id, validator="judge", kind="first", passed=True
            )
        )
    ).validation
    artifact = client.artifacts.UploadArtifact(
        iter(
            [
                upload_request(streamed.id, "notes.txt"),
                artifacts_pb2.UploadArtifactRequest(chunk=b"x"),
            ]
        )
    ).artifact
    return Objects(
        main_agent,
        spare_agent,
        template,
        experiment,
        simulation,
        run,
        participant,
        streamed,
        validation,
        artifact,
    )


def upload_request(run_id: str, name: str) -> artifacts_pb2.UploadArtifactRequest:
    """The first message of an artifact upload (an upload of it alone stores an empty file)."""
    return artifacts_pb2.UploadArtifactRequest(
        metadata=artifacts_pb2.UploadArtifactMetadata(
            artifact=artifacts_pb2.Artifact(run_id=run_id, name=name)
        )
    )


def read_requests(o: Objects) -> dict[str, Message]:
    """A valid request of every reading RPC (Get, List, Watch, Compare, Read)."""
    return {
        "AgentService.GetAgent": agents_pb2.GetAgentRequest(id=o.agent.id),
        "AgentService.ListAgents": agents_pb2.ListAgentsRequest(page_size=1000),
        "ExperimentService.GetExperiment": experiments_pb2.GetExperimentRequest(id=o.experiment.id),
        "ExperimentService.ListExperiments": experiments_pb2.ListExperimentsRequest(page_size=1000),
        "ExperimentService.GetSimulation": experiments_pb2.GetSimulationRequest(id=o.simulation.id),
        "ExperimentService.ListSimulations": experiments_pb2.ListSimulationsRequest(page_size=1000),
        "ExperimentService.GetTemplate": experiments_pb2.GetTemplateRequest(id=o.template.id),
        "ExperimentService.ListTemplates": experiments_pb2.ListTemplatesRequest(page_size=1000),
        "RunService.GetRun": runs_pb2.GetRunRequest(id=o.run.id),
        "RunService.ListRuns": runs_pb2.ListRunsRequest(page_size=1000),
        "RunService.GetParticipant": runs_pb2.GetParticipantRequest(id=o.participant.id),
        "RunService.ListParticipants": runs_pb2.ListParticipantsRequest(run_id=o.run.id),
        "RunService.WatchRun": runs_pb2.WatchRunRequest(id=o.run.id),
        "TelemetryService.ListMetrics": telemetry_pb2.ListMetricsRequest(run_id=o.streamed.id),
        "TelemetryService.GetMetricHistory": telemetry_pb2.GetMetricHistoryRequest(
            run_id=o.streamed.id, metric="loss"
        ),
        "TelemetryService.ReadMetricHistory": telemetry_pb2.ReadMetricHistoryRequest(
            run_id=o.streamed.id, metric="loss"
        ),
        "TelemetryService.ListEvents": telemetry_pb2.ListEventsRequest(run_id=o.streamed.id),
        "TelemetryService.CompareRuns": telemetry_pb2.CompareRunsRequest(
            run_ids=[o.streamed.id], metrics=["loss"]
        ),
        "RunService.GetLeaderboard": runs_pb2.GetLeaderboardRequest(
            scenario_id=SCENARIO, metric="loss", include_unfinished=True
        ),
        "RunService.GetRunStats": runs_pb2.GetRunStatsRequest(),
        "ValidationService.GetValidation": validations_pb2.GetValidationRequest(id=o.validation.id),
        "ValidationService.ListValidations": validations_pb2.ListValidationsRequest(
            run_id=o.streamed.id
        ),
        "ArtifactService.GetArtifact": artifacts_pb2.GetArtifactRequest(id=o.artifact.id),
        "ArtifactService.GetArtifactContent": artifacts_pb2.GetArtifactContentRequest(
            id=o.artifact.id
        ),
        "ArtifactService.ListArtifacts": artifacts_pb2.ListArtifactsRequest(run_id=o.streamed.id),
        "ScenarioService.GetScenario": scenarios_pb2.GetScenarioRequest(id=SCENARIO),
        "ScenarioService.ListScenarios": scenarios_pb2.ListScenariosRequest(),
    }


def write_requests(o: Objects) -> list[tuple[str, Message]]:
    """A valid request of every writing RPC, in an order in which all of them succeed."""
    return [
        (
            "AgentService.CreateAgent",
            agents_pb2.CreateAgentRequest(
                agent=Agent(name=unique("agent"), framework=Framework.FRAMEWORK_BASELINE)
            ),
        ),
        (
            "ExperimentService.CreateTemplate",
            experiments_pb2.CreateTemplateRequest(template=Template(name=unique("template"))),
        ),
        (
            "ExperimentService.CreateExperiment",
            experiments_pb2.CreateExperimentRequest(
                experiment=Experiment(
                    name=unique("experiment"), agent_id=o.agent.id, scenario_id=SCENARIO
                ),
                template_id=o.template.id,
            ),
        ),
        (
            "ExperimentService.CreateSimulation",
            experiments_pb2.CreateSimulationRequest(
                simulation=Simulation(experiment_id=o.experiment.id)
            ),
        ),
        ("RunService.CreateRun", runs_pb2.CreateRunRequest(run=Run(experiment_id=o.experiment.id))),
        (
            "RunService.CreateParticipant",
            runs_pb2.CreateParticipantRequest(
                participant=Participant(run_id=o.run.id, agent_id=o.spare_agent.id)
            ),
        ),
        (
            "AgentService.UpdateAgent",
            agents_pb2.UpdateAgentRequest(
                agent=Agent(id=o.agent.id, name=unique("renamed")), update_mask=mask("name")
            ),
        ),
        (
            "ExperimentService.UpdateTemplate",
            experiments_pb2.UpdateTemplateRequest(
                template=Template(id=o.template.id, description="changed"),
                update_mask=mask("description"),
            ),
        ),
        (
            "ExperimentService.UpdateExperiment",
            experiments_pb2.UpdateExperimentRequest(
                experiment=Experiment(id=o.experiment.id, description="changed"),
                update_mask=mask("description"),
            ),
        ),
        (
            "ExperimentService.UpdateSimulation",
            experiments_pb2.UpdateSimulationRequest(
                simulation=Simulation(id=o.simulation.id, metadata=struct({"host": "w1"})),
                update_mask=mask("metadata"),
            ),
        ),
        (
            "RunService.UpdateRun",
            runs_pb2.UpdateRunRequest(
                run=Run(id=o.run.id, status=RunStatus.RUN_STATUS_STARTING),
                update_mask=mask("status"),
            ),
        ),
        (
            "RunService.UpdateParticipant",
            runs_pb2.UpdateParticipantRequest(
                participant=Participant(id=o.participant.id, role="observer"),
                update_mask=mask("role"),
            ),
        ),
        (
            "TelemetryService.StreamRun",
            telemetry_pb2.StreamRunRequest(hello=telemetry_pb2.Hello(run_id=o.run.id)),
        ),
        # Running now (hello): it can be paused.
        ("RunService.PauseRun", runs_pb2.PauseRunRequest(id=o.run.id)),
        ("RunService.ResumeRun", runs_pb2.ResumeRunRequest(id=o.run.id)),
        (
            "RunService.SendCommand",
            runs_pb2.SendCommandRequest(id=o.run.id, name="set_price", args=struct({"p": 1})),
        ),
        ("RunService.CancelRun", runs_pb2.CancelRunRequest(id=o.run.id, reason="done")),
        ("RunService.DeleteParticipant", runs_pb2.DeleteParticipantRequest(id=o.participant.id)),
        ("ArtifactService.UploadArtifact", upload_request(o.streamed.id, unique("artifact"))),
        ("ArtifactService.DeleteArtifact", artifacts_pb2.DeleteArtifactRequest(id=o.artifact.id)),
        (
            "ValidationService.CreateValidation",
            validations_pb2.CreateValidationRequest(
                validation=validations_pb2.Validation(
                    run_id=o.streamed.id, validator="judge", kind=unique("kind"), passed=False
                )
            ),
        ),
        # Deleting the run takes the participant created above with it, freeing the spare agent.
        ("RunService.DeleteRun", runs_pb2.DeleteRunRequest(id=o.run.id)),
        (
            "ExperimentService.DeleteSimulation",
            experiments_pb2.DeleteSimulationRequest(id=o.simulation.id),
        ),
        (
            "ExperimentService.DeleteExperiment",
            experiments_pb2.DeleteExperimentRequest(id=o.experiment.id),
        ),
        (
            "ExperimentService.DeleteTemplate",
            experiments_pb2.DeleteTemplateRequest(id=o.template.id),
        ),
        ("AgentService.DeleteAgent", agents_pb2.DeleteAgentRequest(id=o.spare_agent.id)),
    ]
