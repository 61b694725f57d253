"""Tenant isolation checks (``tests/e2e/test_tenancy.py``): two tenants' objects, snapshots, and
the registry of one case per RPC (filled by ``tenancy_cases_*.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from simtrack.v1 import (
    agents_pb2,
    experiments_pb2,
    runs_pb2,
)
from tests.support.clients import Client
from tests.support.protos import (
    API_SERVICES,
    SCENARIO,
    TIMEOUT,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    Simulation,
    Template,
    struct,
)
from tests.support.servers import Server

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


# Every service of the API; all but the shared scenario catalogue hold tenant-owned data.
ALL_SERVICES = API_SERVICES
SHARED_SERVICES = {"simtrack.v1.ScenarioService"}
ISOLATED_METHODS = sorted(
    f"{service.name}.{method.name}"
    for name, service in ALL_SERVICES.items()
    if name not in SHARED_SERVICES
    for method in service.methods
)


# Helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Failure:
    """What a failed call said, with the id it was about replaced by ``<id>``."""

    code: grpc.StatusCode
    message: str
    resource_type: str
    resource_name: str
    description: str
    details: tuple[str, ...]


def failure_of(call: Callable[[], object], about: str) -> Failure:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    status = rpc_status.from_call(error)
    resource = error_details_pb2.ResourceInfo()
    details: list[str] = []
    if status is not None:
        for detail in status.details:
            details.append(detail.type_url)
            if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                detail.Unpack(resource)
    return Failure(
        error.code(),
        (error.details() or "").replace(about, "<id>"),
        resource.resource_type,
        resource.resource_name.replace(about, "<id>"),
        resource.description,
        tuple(details),
    )


def snapshot(server: Server) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but api_keys (whose last_used_at each call may stamp)."""
    rows = server.database_snapshot()
    del rows["api_keys"]
    return rows


def assert_hidden(server: Server, call: Callable[[str], object], their_id: str) -> None:
    """``call(their_id)`` fails like ``call(<an id that never existed>)``: NOT_FOUND, no change.

    Same code, message, ResourceInfo and details apart from the id: whether the object exists in
    another tenant is not revealed.
    """
    before = snapshot(server)
    theirs = failure_of(lambda: call(their_id), their_id)
    unknown_id = str(uuid.uuid4())
    unknown = failure_of(lambda: call(unknown_id), unknown_id)
    assert theirs.code == NOT_FOUND, theirs
    assert theirs == unknown, f"another tenant's id answers differently:\n{theirs}\n{unknown}"
    assert "<id>" in theirs.message and theirs.resource_name == "<id>", theirs
    assert snapshot(server) == before, "a rejected call changed the database"


def all_ids(fetch: Callable[[str], tuple[list[str], str]]) -> list[str]:
    """The ids of every page, following next_page_token from ``""`` to the end."""
    ids: list[str] = []
    token = ""
    for _ in range(1000):
        page, token = fetch(token)
        ids += page
        if not token:
            return ids
    pytest.fail("pagination does not end")


# The two tenants and their objects


@dataclass(frozen=True)
class Objects:
    """One object of every kind, owned by one tenant; ``spare_agent`` is referenced by nothing."""

    agent: Agent
    spare_agent: Agent
    template: Template
    experiment: Experiment
    simulation: Simulation
    run: Run
    participant: Participant

    def ids(self) -> set[str]:
        return {
            self.agent.id,
            self.spare_agent.id,
            self.template.id,
            self.experiment.id,
            self.simulation.id,
            self.run.id,
            self.participant.id,
        }


def create_objects(client: Client, tag: str) -> Objects:
    def agent(name: str) -> Agent:
        new = Agent(name=unique(name), framework=Framework.FRAMEWORK_CUSTOM)
        request = agents_pb2.CreateAgentRequest(agent=new)
        return client.agents.CreateAgent(request, timeout=TIMEOUT).agent

    main_agent = agent(f"{tag}-agent")
    spare_agent = agent(f"{tag}-spare")
    template = client.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(
            template=Template(name=unique(f"{tag}-template"), config=struct({"seed": 1}))
        ),
        timeout=TIMEOUT,
    ).template
    experiment = client.experiments.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(
            experiment=Experiment(
                name=unique(f"{tag}-experiment"), agent_id=main_agent.id, scenario_id=SCENARIO
            ),
            template_id=template.id,
        ),
        timeout=TIMEOUT,
    ).experiment
    simulation = client.experiments.CreateSimulation(
        experiments_pb2.CreateSimulationRequest(
            simulation=Simulation(experiment_id=experiment.id, parameters=struct({"seed": 7}))
        ),
        timeout=TIMEOUT,
    ).simulation
    run = client.runs.CreateRun(
        runs_pb2.CreateRunRequest(run=Run(experiment_id=experiment.id)), timeout=TIMEOUT
    ).run
    participant = client.runs.CreateParticipant(
        runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=run.id, agent_id=main_agent.id, role="seller")
        ),
        timeout=TIMEOUT,
    ).participant
    return Objects(main_agent, spare_agent, template, experiment, simulation, run, participant)


def observe(client: Client, objects: Objects) -> dict[str, Any]:
    """Everything ``client``'s tenant can read about ``objects``: each Get, and each List."""
    e, r = client.experiments, client.runs
    return {
        "agent": client.agents.GetAgent(agents_pb2.GetAgentRequest(id=objects.agent.id)),
        "spare_agent": client.agents.GetAgent(
            agents_pb2.GetAgentRequest(id=objects.spare_agent.id)
        ),
        "template": e.GetTemplate(experiments_pb2.GetTemplateRequest(id=objects.template.id)),
        "experiment": e.GetExperiment(
            experiments_pb2.GetExperimentRequest(id=objects.experiment.id)
        ),
        "simulation": e.GetSimulation(
            experiments_pb2.GetSimulationRequest(id=objects.simulation.id)
        ),
        "run": r.GetRun(runs_pb2.GetRunRequest(id=objects.run.id)),
        "participant": r.GetParticipant(runs_pb2.GetParticipantRequest(id=objects.participant.id)),
        "participants": r.ListParticipants(runs_pb2.ListParticipantsRequest(run_id=objects.run.id)),
        "agents": client.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=1000)),
        "templates": e.ListTemplates(experiments_pb2.ListTemplatesRequest(page_size=1000)),
        "experiments": e.ListExperiments(experiments_pb2.ListExperimentsRequest(page_size=1000)),
        "simulations": e.ListSimulations(experiments_pb2.ListSimulationsRequest(page_size=1000)),
        "runs": r.ListRuns(runs_pb2.ListRunsRequest(page_size=1000)),
    }


@dataclass
class World:
    """One auth-enabled server per backend, with tenants A and B and a writer key each."""

    server: Server
    a: Client
    b: Client


@dataclass(frozen=True)
class Scene:
    """One test's view: the server, A's and B's clients, and fresh objects of each tenant."""

    server: Server
    a: Client
    b: Client
    mine: Objects  # A's
    theirs: Objects  # B's


# One case per RPC: A's writer key against B's objects

Case = Callable[[Scene], None]
CASES: dict[str, Case] = {}


def case(method: str) -> Callable[[Case], Case]:
    def register(check: Case) -> Case:
        assert method not in CASES, f"two cases for {method}"
        CASES[method] = check
        return check

    return register
