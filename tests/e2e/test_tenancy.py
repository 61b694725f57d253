"""Tenant isolation end to end, for every RPC, on SQLite and PostgreSQL.

One server per backend with API keys required (on PostgreSQL it connects as the application role,
so row-level security applies too). Tenants A and B and a writer key each are made with the real
operator CLI. Each test gives both tenants fresh objects of every kind and checks one RPC with
A's key against B's objects:

- Get, Update and Delete of B's ids answer NOT_FOUND exactly like an id that never existed
  (same code, same message and ResourceInfo apart from the id itself), and change nothing;
- List never includes B's rows (A's own are there), not with B's ids in the filter nor with a
  page token B was given;
- Create (and Update) referring to B's objects answer NOT_FOUND; names are unique per tenant only;
- B's objects read the same before and after.

The RPCs come from the service descriptors: a new RPC without a case here fails its own test,
and the coverage test fails while the server serves a service this module does not know.
ScenarioService is a shared, read-only catalogue: both tenants see the same scenarios.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)
from tests.support import Client, Server, ServerPool, SimtrackCli

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
SCENARIO = "tier0-tutorial"
TIMEOUT = 10.0

Agent = agents_pb2.Agent
Framework = agents_pb2.Framework
Experiment = experiments_pb2.Experiment
Simulation = experiments_pb2.Simulation
Template = experiments_pb2.Template
Run = runs_pb2.Run
Participant = runs_pb2.Participant
RunStatus = runs_pb2.RunStatus

# Every service of the API; all but the shared scenario catalogue hold tenant-owned data.
ALL_SERVICES = {
    service.full_name: service
    for module in (
        agents_pb2,
        artifacts_pb2,
        experiments_pb2,
        runs_pb2,
        scenarios_pb2,
        telemetry_pb2,
        validations_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
}
SHARED_SERVICES = {"simtrack.v1.ScenarioService"}
ISOLATED_METHODS = sorted(
    f"{service.name}.{method.name}"
    for name, service in ALL_SERVICES.items()
    if name not in SHARED_SERVICES
    for method in service.methods
)


# Helpers


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(data)
    return result


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


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


@pytest.fixture(scope="module")
def world(
    module_database_url: str, module_server_pool: ServerPool, simtrack_cli: SimtrackCli
) -> World:
    server = module_server_pool.start(module_database_url, auth=True)
    clients = []
    for tenant in ("tenant-a", "tenant-b"):
        simtrack_cli("tenants", "create", tenant, database_url=server.database_url)
        created = simtrack_cli(
            "keys",
            "create",
            "--tenant",
            tenant,
            "--role",
            "writer",
            database_url=server.database_url,
        )
        client = server.connect(f"Bearer {created.stdout.strip()}")
        # The key's first use (which stamps its last use) must work like any other.
        client.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)
        clients.append(client)
    return World(server, *clients)


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(
        world.server,
        world.a,
        world.b,
        mine=create_objects(world.a, "a"),
        theirs=create_objects(world.b, "b"),
    )


# One case per RPC: A's writer key against B's objects

Case = Callable[[Scene], None]
CASES: dict[str, Case] = {}


def case(method: str) -> Callable[[Case], Case]:
    def register(check: Case) -> Case:
        assert method not in CASES, f"two cases for {method}"
        CASES[method] = check
        return check

    return register


# AgentService


@case("AgentService.CreateAgent")
def create_agent(s: Scene) -> None:
    def create(client: Client, name: str) -> Agent:
        request = agents_pb2.CreateAgentRequest(
            agent=Agent(name=name, framework=Framework.FRAMEWORK_BASELINE)
        )
        return client.agents.CreateAgent(request, timeout=TIMEOUT).agent

    # Names are unique per tenant: A may take the name of B's agent, but not twice.
    twin = create(s.a, s.theirs.agent.name)
    assert twin.name == s.theirs.agent.name and twin.id != s.theirs.agent.id
    with pytest.raises(grpc.RpcError) as info:
        create(s.a, s.theirs.agent.name)
    assert info.value.code() == ALREADY_EXISTS, info.value.details()
    # ...and B does not see A's new agent.
    assert_hidden(
        s.server, lambda id: s.b.agents.GetAgent(agents_pb2.GetAgentRequest(id=id)), twin.id
    )
    listed = s.b.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=1000)).agents
    assert twin.id not in {a.id for a in listed}


@case("AgentService.GetAgent")
def get_agent(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.agents.GetAgent(agents_pb2.GetAgentRequest(id=id)),
        s.theirs.agent.id,
    )


@case("AgentService.ListAgents")
def list_agents(s: Scene) -> None:
    def fetch(filter: str = "", size: int = 2) -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = agents_pb2.ListAgentsRequest(page_size=size, page_token=token, filter=filter)
            response = s.a.agents.ListAgents(request, timeout=TIMEOUT)
            return [a.id for a in response.agents], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert {s.mine.agent.id, s.mine.spare_agent.id} <= set(listed)
    assert not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'name = "{s.theirs.agent.name}"')) == []
    # A page token handed to B, replayed by A, still lists only A's agents.
    their_page = s.b.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=1))
    assert their_page.next_page_token
    ids, token = fetch(size=1000)(their_page.next_page_token)
    assert not set(ids) & s.theirs.ids() and token == ""


@case("AgentService.UpdateAgent")
def update_agent(s: Scene) -> None:
    def update(id: str, name: str) -> Agent:
        request = agents_pb2.UpdateAgentRequest(
            agent=Agent(id=id, name=name), update_mask=mask("name")
        )
        return s.a.agents.UpdateAgent(request, timeout=TIMEOUT).agent

    assert_hidden(s.server, lambda id: update(id, unique("renamed")), s.theirs.agent.id)
    # The name of B's agent is free in A.
    assert update(s.mine.agent.id, s.theirs.agent.name).name == s.theirs.agent.name


@case("AgentService.DeleteAgent")
def delete_agent(s: Scene) -> None:
    def delete(id: str) -> object:
        return s.a.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=id), timeout=TIMEOUT)

    # B's spare agent could be deleted by B; B's main one is in use (FAILED_PRECONDITION for B).
    assert_hidden(s.server, delete, s.theirs.spare_agent.id)
    assert_hidden(s.server, delete, s.theirs.agent.id)


# ExperimentService: experiments


def _experiment(agent_id: str) -> Experiment:
    return Experiment(name=unique("experiment"), agent_id=agent_id, scenario_id=SCENARIO)


@case("ExperimentService.CreateExperiment")
def create_experiment(s: Scene) -> None:
    def create(agent_id: str, template_id: str = "") -> object:
        request = experiments_pb2.CreateExperimentRequest(
            experiment=_experiment(agent_id), template_id=template_id
        )
        return s.a.experiments.CreateExperiment(request, timeout=TIMEOUT)

    assert_hidden(s.server, create, s.theirs.agent.id)
    assert_hidden(s.server, lambda id: create(s.mine.agent.id, id), s.theirs.template.id)


@case("ExperimentService.GetExperiment")
def get_experiment(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetExperiment(experiments_pb2.GetExperimentRequest(id=id)),
        s.theirs.experiment.id,
    )


@case("ExperimentService.ListExperiments")
def list_experiments(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListExperimentsRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListExperiments(request, timeout=TIMEOUT)
            return [e.id for e in response.experiments], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.experiment.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'agent_id = "{s.theirs.agent.id}"')) == []
    assert all_ids(fetch(f'name = "{s.theirs.experiment.name}"')) == []


@case("ExperimentService.UpdateExperiment")
def update_experiment(s: Scene) -> None:
    def update(id: str, agent_id: str) -> object:
        request = experiments_pb2.UpdateExperimentRequest(
            experiment=Experiment(id=id, agent_id=agent_id, description="changed"),
            update_mask=mask("description", "agent_id"),
        )
        return s.a.experiments.UpdateExperiment(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: update(id, s.mine.agent.id), s.theirs.experiment.id)
    # A's own experiment cannot be pointed at B's agent.
    assert_hidden(s.server, lambda id: update(s.mine.experiment.id, id), s.theirs.agent.id)


@case("ExperimentService.DeleteExperiment")
def delete_experiment(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteExperiment(experiments_pb2.DeleteExperimentRequest(id=id)),
        s.theirs.experiment.id,
    )


# ExperimentService: simulations


@case("ExperimentService.CreateSimulation")
def create_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.CreateSimulation(
            experiments_pb2.CreateSimulationRequest(simulation=Simulation(experiment_id=id)),
            timeout=TIMEOUT,
        ),
        s.theirs.experiment.id,
    )


@case("ExperimentService.GetSimulation")
def get_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetSimulation(experiments_pb2.GetSimulationRequest(id=id)),
        s.theirs.simulation.id,
    )


@case("ExperimentService.ListSimulations")
def list_simulations(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListSimulationsRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListSimulations(request, timeout=TIMEOUT)
            return [x.id for x in response.simulations], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.simulation.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'experiment_id = "{s.theirs.experiment.id}"')) == []


@case("ExperimentService.UpdateSimulation")
def update_simulation(s: Scene) -> None:
    def update(id: str, experiment_id: str) -> object:
        request = experiments_pb2.UpdateSimulationRequest(
            simulation=Simulation(
                id=id, experiment_id=experiment_id, metadata=struct({"host": "w1"})
            ),
            update_mask=mask("metadata", "experiment_id"),
        )
        return s.a.experiments.UpdateSimulation(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: update(id, s.mine.experiment.id), s.theirs.simulation.id)
    # A's own simulation cannot be attached to B's experiment.
    assert_hidden(s.server, lambda id: update(s.mine.simulation.id, id), s.theirs.experiment.id)


@case("ExperimentService.DeleteSimulation")
def delete_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteSimulation(experiments_pb2.DeleteSimulationRequest(id=id)),
        s.theirs.simulation.id,
    )


# ExperimentService: templates


@case("ExperimentService.CreateTemplate")
def create_template(s: Scene) -> None:
    def create(client: Client, name: str) -> Template:
        request = experiments_pb2.CreateTemplateRequest(template=Template(name=name))
        return client.experiments.CreateTemplate(request, timeout=TIMEOUT).template

    # Names are unique per tenant: A may take the name of B's template, but not twice.
    twin = create(s.a, s.theirs.template.name)
    assert twin.id != s.theirs.template.id
    with pytest.raises(grpc.RpcError) as info:
        create(s.a, s.theirs.template.name)
    assert info.value.code() == ALREADY_EXISTS, info.value.details()
    assert_hidden(
        s.server,
        lambda id: s.b.experiments.GetTemplate(experiments_pb2.GetTemplateRequest(id=id)),
        twin.id,
    )


@case("ExperimentService.GetTemplate")
def get_template(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetTemplate(experiments_pb2.GetTemplateRequest(id=id)),
        s.theirs.template.id,
    )


@case("ExperimentService.ListTemplates")
def list_templates(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListTemplatesRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListTemplates(request, timeout=TIMEOUT)
            return [t.id for t in response.templates], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.template.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'name = "{s.theirs.template.name}"')) == []


@case("ExperimentService.UpdateTemplate")
def update_template(s: Scene) -> None:
    def update(id: str, name: str) -> Template:
        request = experiments_pb2.UpdateTemplateRequest(
            template=Template(id=id, name=name), update_mask=mask("name")
        )
        return s.a.experiments.UpdateTemplate(request, timeout=TIMEOUT).template

    assert_hidden(s.server, lambda id: update(id, unique("renamed")), s.theirs.template.id)
    assert update(s.mine.template.id, s.theirs.template.name).name == s.theirs.template.name


@case("ExperimentService.DeleteTemplate")
def delete_template(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteTemplate(experiments_pb2.DeleteTemplateRequest(id=id)),
        s.theirs.template.id,
    )


# RunService: runs


@case("RunService.CreateRun")
def create_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.CreateRun(
            runs_pb2.CreateRunRequest(run=Run(experiment_id=id)), timeout=TIMEOUT
        ),
        s.theirs.experiment.id,
    )


@case("RunService.GetRun")
def get_run(s: Scene) -> None:
    assert_hidden(
        s.server, lambda id: s.a.runs.GetRun(runs_pb2.GetRunRequest(id=id)), s.theirs.run.id
    )


@case("RunService.ListRuns")
def list_runs(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = runs_pb2.ListRunsRequest(page_size=5, page_token=token, filter=filter)
            response = s.a.runs.ListRuns(request, timeout=TIMEOUT)
            return [r.id for r in response.runs], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.run.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'experiment_id = "{s.theirs.experiment.id}"')) == []


@case("RunService.UpdateRun")
def update_run(s: Scene) -> None:
    # pending -> starting is a legal move, so only the tenant check can refuse it.
    assert_hidden(
        s.server,
        lambda id: s.a.runs.UpdateRun(
            runs_pb2.UpdateRunRequest(
                run=Run(id=id, status=RunStatus.RUN_STATUS_STARTING), update_mask=mask("status")
            ),
            timeout=TIMEOUT,
        ),
        s.theirs.run.id,
    )


@case("RunService.DeleteRun")
def delete_run(s: Scene) -> None:
    assert_hidden(
        s.server, lambda id: s.a.runs.DeleteRun(runs_pb2.DeleteRunRequest(id=id)), s.theirs.run.id
    )


# TelemetryService: the stream; RunService: watching and commands


@case("TelemetryService.StreamRun")
def stream_run(s: Scene) -> None:
    def hello(id: str) -> object:
        opening = telemetry_pb2.StreamRunRequest(hello=telemetry_pb2.Hello(run_id=id))
        return list(s.a.telemetry.StreamRun(iter([opening]), timeout=TIMEOUT))

    assert_hidden(s.server, hello, s.theirs.run.id)


@case("RunService.WatchRun")
def watch_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: next(iter(s.a.runs.WatchRun(runs_pb2.WatchRunRequest(id=id), timeout=TIMEOUT))),
        s.theirs.run.id,
    )


@case("RunService.CancelRun")
def cancel_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.CancelRun(runs_pb2.CancelRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.PauseRun")
def pause_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.PauseRun(runs_pb2.PauseRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.ResumeRun")
def resume_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.SendCommand")
def send_command(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.SendCommand(
            runs_pb2.SendCommandRequest(id=id, name="set_price", args=struct({"price": 9.5})),
            timeout=TIMEOUT,
        ),
        s.theirs.run.id,
    )


# TelemetryService: reads


@case("TelemetryService.ListMetrics")
def list_metrics(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.ListMetrics(
            telemetry_pb2.ListMetricsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("TelemetryService.GetMetricHistory")
def get_metric_history(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.GetMetricHistory(
            telemetry_pb2.GetMetricHistoryRequest(run_id=id, metric="loss"), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("TelemetryService.ListEvents")
def list_events(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.ListEvents(
            telemetry_pb2.ListEventsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("RunService.GetLeaderboard")
def get_leaderboard(s: Scene) -> None:
    def board(experiment_id: str) -> list[str]:
        request = runs_pb2.GetLeaderboardRequest(
            scenario_id=SCENARIO, metric="score", experiment_id=experiment_id
        )
        response = s.a.runs.GetLeaderboard(request, timeout=TIMEOUT)
        return [entry.run.id for entry in response.entries]

    assert board(s.mine.experiment.id) == []
    assert_hidden(s.server, board, s.theirs.experiment.id)


@case("RunService.GetRunStats")
def get_run_stats(s: Scene) -> None:
    def total(client: Client, experiment_id: str) -> int:
        request = runs_pb2.GetRunStatsRequest(filter=f'experiment_id = "{experiment_id}"')
        return client.runs.GetRunStats(request, timeout=TIMEOUT).total

    assert total(s.a, s.mine.experiment.id) == 1
    assert total(s.b, s.theirs.experiment.id) == 1
    assert total(s.a, s.theirs.experiment.id) == 0


# ValidationService


@case("ValidationService.CreateValidation")
def create_validation(s: Scene) -> None:
    def create(run_id: str) -> object:
        validation = validations_pb2.Validation(
            run_id=run_id, validator="judge", kind="k", passed=True
        )
        request = validations_pb2.CreateValidationRequest(validation=validation)
        return s.a.validations.CreateValidation(request, timeout=TIMEOUT)

    assert_hidden(s.server, create, s.theirs.run.id)


@case("ValidationService.GetValidation")
def get_validation(s: Scene) -> None:
    theirs = s.b.validations.CreateValidation(
        validations_pb2.CreateValidationRequest(
            validation=validations_pb2.Validation(
                run_id=s.theirs.run.id, validator="judge", kind="k", passed=True
            )
        ),
        timeout=TIMEOUT,
    ).validation
    assert_hidden(
        s.server,
        lambda id: s.a.validations.GetValidation(
            validations_pb2.GetValidationRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )


@case("ValidationService.ListValidations")
def list_validations(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.validations.ListValidations(
            validations_pb2.ListValidationsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


# ArtifactService


def _upload(client: Client, run_id: str) -> artifacts_pb2.Artifact:
    metadata = artifacts_pb2.UploadArtifactMetadata(
        artifact=artifacts_pb2.Artifact(run_id=run_id, name=unique("artifact"))
    )
    messages = [
        artifacts_pb2.UploadArtifactRequest(metadata=metadata),
        artifacts_pb2.UploadArtifactRequest(chunk=b"secret"),
    ]
    return client.artifacts.UploadArtifact(iter(messages), timeout=TIMEOUT).artifact


@case("ArtifactService.UploadArtifact")
def upload_artifact(s: Scene) -> None:
    assert _upload(s.a, s.mine.run.id).size_bytes == 6
    assert_hidden(s.server, lambda id: _upload(s.a, id), s.theirs.run.id)


@case("ArtifactService.GetArtifact")
def get_artifact(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.GetArtifact(
            artifacts_pb2.GetArtifactRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )


@case("ArtifactService.GetArtifactContent")
def get_artifact_content(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)

    def download(id: str) -> object:
        request = artifacts_pb2.GetArtifactContentRequest(id=id)
        return list(s.a.artifacts.GetArtifactContent(request, timeout=TIMEOUT))

    assert_hidden(s.server, download, theirs.id)


@case("ArtifactService.ListArtifacts")
def list_artifacts(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.ListArtifacts(
            artifacts_pb2.ListArtifactsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("ArtifactService.DeleteArtifact")
def delete_artifact(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.DeleteArtifact(
            artifacts_pb2.DeleteArtifactRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )
    content = s.b.artifacts.GetArtifactContent(
        artifacts_pb2.GetArtifactContentRequest(id=theirs.id), timeout=TIMEOUT
    )
    assert b"".join(m.chunk for m in content) == b"secret", "B's file is intact"


# RunService: participants


@case("RunService.CreateParticipant")
def create_participant(s: Scene) -> None:
    def create(run_id: str, agent_id: str) -> object:
        request = runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=run_id, agent_id=agent_id, role="buyer")
        )
        return s.a.runs.CreateParticipant(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: create(s.mine.run.id, id), s.theirs.spare_agent.id)
    assert_hidden(s.server, lambda id: create(id, s.mine.spare_agent.id), s.theirs.run.id)


@case("RunService.GetParticipant")
def get_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.GetParticipant(runs_pb2.GetParticipantRequest(id=id)),
        s.theirs.participant.id,
    )


@case("RunService.ListParticipants")
def list_participants(s: Scene) -> None:
    def fetch(run_id: str) -> list[str]:
        request = runs_pb2.ListParticipantsRequest(run_id=run_id, page_size=1000)
        return [p.id for p in s.a.runs.ListParticipants(request, timeout=TIMEOUT).participants]

    assert fetch(s.mine.run.id) == [s.mine.participant.id]
    assert_hidden(s.server, fetch, s.theirs.run.id)


@case("RunService.UpdateParticipant")
def update_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.UpdateParticipant(
            runs_pb2.UpdateParticipantRequest(
                participant=Participant(id=id, role="observer"), update_mask=mask("role")
            ),
            timeout=TIMEOUT,
        ),
        s.theirs.participant.id,
    )


@case("RunService.DeleteParticipant")
def delete_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.DeleteParticipant(runs_pb2.DeleteParticipantRequest(id=id)),
        s.theirs.participant.id,
    )


# The tests


@pytest.mark.parametrize("method", ISOLATED_METHODS)
def test_tenant_a_cannot_reach_tenant_bs_objects(method: str, scene: Scene) -> None:
    check = CASES.get(method)
    assert check is not None, f"{method} has no tenant-isolation case: add one to CASES"
    theirs_before = observe(scene.b, scene.theirs)
    check(scene)
    theirs_after = observe(scene.b, scene.theirs)
    assert theirs_after == theirs_before, "B's objects changed"
    # The other way round too: B's lists hold none of A's objects.
    for name in ("agents", "templates", "experiments", "simulations", "runs"):
        rows = getattr(theirs_after[name], name)
        assert not {row.id for row in rows} & scene.mine.ids(), name


def test_every_served_rpc_has_an_isolation_case(world: World) -> None:
    """The cases cover exactly the RPCs of the tenant-owned services the server really serves."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(world.server.reflection.ServerReflectionInfo(iter([request]), timeout=10))
    served = {
        s.name
        for s in responses[0].list_services_response.service
        if s.name.startswith("simtrack.")
    }
    assert served == set(ALL_SERVICES), "a service the tests do not know about is served"
    served_methods = {
        f"{service.name}.{method.name}"
        for name in served - SHARED_SERVICES
        for service in [descriptor_pool.Default().FindServiceByName(name)]
        for method in service.methods
    }
    assert set(CASES) == served_methods == set(ISOLATED_METHODS)


def test_both_tenants_see_the_same_scenario_catalogue(world: World) -> None:
    def catalogue(client: Client) -> list[scenarios_pb2.Scenario]:
        scenarios: list[scenarios_pb2.Scenario] = []
        token = ""
        while True:
            response = client.scenarios.ListScenarios(
                scenarios_pb2.ListScenariosRequest(page_size=2, page_token=token), timeout=TIMEOUT
            )
            scenarios += response.scenarios
            token = response.next_page_token
            if not token:
                return scenarios

    theirs, mine = catalogue(world.b), catalogue(world.a)
    assert mine == theirs and SCENARIO in {s.id for s in mine}
    for scenario in mine:
        request = scenarios_pb2.GetScenarioRequest(id=scenario.id)
        assert (
            world.a.scenarios.GetScenario(request).scenario
            == world.b.scenarios.GetScenario(request).scenario
        )
