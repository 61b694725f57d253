"""Objects of every kind made and read through the stubs, for the API's end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2
from tests.support import Server
from tests.support.protos import (
    SCENARIO,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    RunStatus,
    Simulation,
    mask,
    struct,
)


def as_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def when(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def assert_not_found(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()


def new_agent(
    server: Server,
    name: str | None = None,
    framework: int = Framework.FRAMEWORK_CUSTOM,
    config: dict[str, Any] | None = None,
) -> Agent:
    agent = Agent(
        name=name or f"agent-{uuid.uuid4().hex[:8]}",
        framework=Framework.ValueType(framework),
        config=struct(config or {}),
    )
    return server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent)).agent


def new_experiment(
    server: Server,
    agent_id: str,
    name: str = "experiment",
    params: dict[str, Any] | None = None,
    template_id: str = "",
    scenario_id: str = SCENARIO,
) -> Experiment:
    experiment = Experiment(
        name=name, agent_id=agent_id, scenario_id=scenario_id, params=struct(params or {})
    )
    request = experiments_pb2.CreateExperimentRequest(
        experiment=experiment, template_id=template_id
    )
    return server.experiments.CreateExperiment(request).experiment


def new_run(server: Server, experiment_id: str, params: dict[str, Any] | None = None) -> Run:
    run = Run(experiment_id=experiment_id, params=struct(params or {}))
    return server.runs.CreateRun(runs_pb2.CreateRunRequest(run=run)).run


def new_participant(server: Server, run_id: str, agent_id: str, role: str = "") -> Participant:
    participant = Participant(run_id=run_id, agent_id=agent_id, role=role)
    request = runs_pb2.CreateParticipantRequest(participant=participant)
    return server.runs.CreateParticipant(request).participant


def new_simulation(server: Server, experiment_id: str = "") -> Simulation:
    simulation = Simulation(experiment_id=experiment_id, parameters=struct({"seed": 7}))
    request = experiments_pb2.CreateSimulationRequest(simulation=simulation)
    return server.experiments.CreateSimulation(request).simulation


def get_experiment(server: Server, experiment_id: str) -> Experiment:
    request = experiments_pb2.GetExperimentRequest(id=experiment_id)
    return server.experiments.GetExperiment(request).experiment


def get_run(server: Server, run_id: str) -> Run:
    return server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run


def set_run_status(server: Server, run_id: str, status: int) -> Run:
    run = Run(id=run_id, status=RunStatus.ValueType(status))
    request = runs_pb2.UpdateRunRequest(run=run, update_mask=mask("status"))
    return server.runs.UpdateRun(request).run


def start_run(server: Server, run_id: str) -> Run:
    """Pending -> starting -> running, the only way to running (RunService.UpdateRun)."""
    set_run_status(server, run_id, RunStatus.RUN_STATUS_STARTING)
    return set_run_status(server, run_id, RunStatus.RUN_STATUS_RUNNING)


def all_pages(fetch: Callable[[str], tuple[list[str], str]]) -> list[list[str]]:
    """Follow next_page_token from the first page to the last; the ids of each page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        ids, token = fetch(token)
        pages.append(ids)
        if not token:
            return pages
        assert len(pages) < 100, "pagination does not end"


def all_agent_ids(server: Server, filter: str = "", page_size: int = 1000) -> list[str]:
    request = agents_pb2.ListAgentsRequest(filter=filter, page_size=page_size)
    response = server.agents.ListAgents(request)
    assert response.next_page_token == ""
    return [a.id for a in response.agents]


def list_runs(server: Server, filter: str) -> list[str]:
    response = server.runs.ListRuns(runs_pb2.ListRunsRequest(filter=filter))
    return [r.id for r in response.runs]


def list_experiments(server: Server, filter: str) -> list[str]:
    request = experiments_pb2.ListExperimentsRequest(filter=filter)
    return [e.id for e in server.experiments.ListExperiments(request).experiments]


def list_simulations(server: Server, filter: str) -> list[str]:
    request = experiments_pb2.ListSimulationsRequest(filter=filter)
    return [s.id for s in server.experiments.ListSimulations(request).simulations]


def list_participants(server: Server, run_id: str, filter: str = "") -> list[str]:
    request = runs_pb2.ListParticipantsRequest(run_id=run_id, filter=filter)
    return [p.id for p in server.runs.ListParticipants(request).participants]
