"""What the bad-input modules (``test_bad_input_*.py``) share: how a refusal is checked, a small
world of objects to refer to, requests built the same way by many cases, and raw protobuf
bytes no stub would make.

``rejects`` asserts the status code, the field the google.rpc.BadRequest names (or the
ResourceInfo of a NOT_FOUND), and that the database is unchanged: every row of every table
(update times included), read directly from the database, is the same before and after the
call. Imported by the ``tests/e2e/test_bad_input_*.py`` modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
)
from tests.support import Server
from tests.support.protos import (
    SCENARIO,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    Simulation,
    Template,
    mask,
    struct,
)

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


# What a failed call said


@dataclass
class Failure:
    """The status of a failed call, with its google.rpc details unpacked."""

    code: grpc.StatusCode
    message: str
    fields: list[str]
    resource: Any  # google.rpc.ResourceInfo, or None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message} (fields {self.fields}, {self.resource})"


def failure_of(call: Callable[[], object]) -> Failure:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return failure_from(cast(grpc.Call, info.value))


def failure_from(error: grpc.Call) -> Failure:
    """What a failed call (sync, or a finished grpc.aio call) said."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    resource = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields += [v.field for v in bad_request.field_violations]
            elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                resource = error_details_pb2.ResourceInfo()
                detail.Unpack(resource)
    return Failure(error.code(), error.details() or "", fields, resource)


def rejects(
    server: Server,
    call: Callable[[], object],
    code: grpc.StatusCode,
    field: str | list[str] | None = None,
    *,
    resource: tuple[str, str] | None = None,
) -> Failure:
    """Make ``call``; assert it fails with ``code`` naming ``field`` and changes nothing.

    ``field``: the BadRequest field violation(s) expected (INVALID_ARGUMENT).
    ``resource``: the (resource_type, resource_name) of the ResourceInfo (NOT_FOUND).
    """
    before = server.database_snapshot()
    failure = failure_of(call)
    assert failure.code == code, str(failure)
    assert failure.message, str(failure)
    if code == INVALID_ARGUMENT:
        assert field is not None, "say which field INVALID_ARGUMENT must name"
        expected = [field] if isinstance(field, str) else field
        assert failure.fields == expected, str(failure)
    if code == NOT_FOUND:
        assert resource is not None, "say which resource NOT_FOUND must name"
        assert failure.resource is not None, str(failure)
        got = (failure.resource.resource_type, failure.resource.resource_name)
        assert got == resource, str(failure)
        assert resource[1] in failure.message, str(failure)
    after = server.database_snapshot()
    assert after == before, f"the database changed on a rejected call: {failure}"
    return failure


# Something to refer to


@dataclass
class World:
    agent: Agent  # used by the experiment and as a participant
    spare: Agent  # referenced by nothing
    template: Template
    experiment: Experiment
    run: Run
    participant: Participant
    simulation: Simulation


def make_world(server: Server) -> World:
    def agent(name: str) -> Agent:
        message = Agent(name=name, framework=Framework.FRAMEWORK_CUSTOM, config=struct({"k": 1}))
        return server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=message)).agent

    seed, spare = agent("seed-agent"), agent("spare-agent")
    template = server.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(
            template=Template(name="seed-template", config=struct({"seed": 1}))
        )
    ).template
    experiment = server.experiments.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(
            experiment=Experiment(name="seed", agent_id=seed.id, scenario_id=SCENARIO)
        )
    ).experiment
    run = server.runs.CreateRun(runs_pb2.CreateRunRequest(run=Run(experiment_id=experiment.id))).run
    participant = server.runs.CreateParticipant(
        runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=run.id, agent_id=seed.id, role="seller")
        )
    ).participant
    simulation = server.experiments.CreateSimulation(
        experiments_pb2.CreateSimulationRequest(simulation=Simulation(experiment_id=experiment.id))
    ).simulation
    return World(seed, spare, template, experiment, run, participant, simulation)


# Requests, built the same way by many cases


def create_agent(server: Server, agent: Agent) -> Callable[[], object]:
    return lambda: server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent))


def create_experiment(
    server: Server, experiment: Experiment, template_id: str = ""
) -> Callable[[], object]:
    request = experiments_pb2.CreateExperimentRequest(
        experiment=experiment, template_id=template_id
    )
    return lambda: server.experiments.CreateExperiment(request)


def create_template(server: Server, template: Template) -> Callable[[], object]:
    request = experiments_pb2.CreateTemplateRequest(template=template)
    return lambda: server.experiments.CreateTemplate(request)


def create_run(server: Server, run: Run) -> Callable[[], object]:
    return lambda: server.runs.CreateRun(runs_pb2.CreateRunRequest(run=run))


def create_participant(server: Server, participant: Participant) -> Callable[[], object]:
    request = runs_pb2.CreateParticipantRequest(participant=participant)
    return lambda: server.runs.CreateParticipant(request)


def create_simulation(server: Server, simulation: Simulation) -> Callable[[], object]:
    request = experiments_pb2.CreateSimulationRequest(simulation=simulation)
    return lambda: server.experiments.CreateSimulation(request)


def update_agent(server: Server, agent: Agent, *paths: str) -> Callable[[], object]:
    request = agents_pb2.UpdateAgentRequest(agent=agent, update_mask=mask(*paths))
    return lambda: server.agents.UpdateAgent(request)


def update_run(server: Server, run: Run, *paths: str) -> Callable[[], object]:
    request = runs_pb2.UpdateRunRequest(run=run, update_mask=mask(*paths))
    return lambda: server.runs.UpdateRun(request)


def update_simulation(server: Server, simulation: Simulation, *paths: str) -> Callable[[], object]:
    request = experiments_pb2.UpdateSimulationRequest(
        simulation=simulation, update_mask=mask(*paths)
    )
    return lambda: server.experiments.UpdateSimulation(request)


@dataclass(frozen=True)
class Entity:
    """The Get/Update/Delete calls of one entity, for cases that apply to all of them."""

    name: str
    get: Callable[[str], object]
    update: Callable[[str, field_mask_pb2.FieldMask], object]
    delete: Callable[[str], object]
    valid_path: str


def entities(server: Server) -> list[Entity]:
    a, e, r = server.agents, server.experiments, server.runs
    return [
        Entity(
            "agent",
            lambda i: a.GetAgent(agents_pb2.GetAgentRequest(id=i)),
            lambda i, m: a.UpdateAgent(
                agents_pb2.UpdateAgentRequest(agent=Agent(id=i, name="n"), update_mask=m)
            ),
            lambda i: a.DeleteAgent(agents_pb2.DeleteAgentRequest(id=i)),
            "name",
        ),
        Entity(
            "template",
            lambda i: e.GetTemplate(experiments_pb2.GetTemplateRequest(id=i)),
            lambda i, m: e.UpdateTemplate(
                experiments_pb2.UpdateTemplateRequest(
                    template=Template(id=i, description="d"), update_mask=m
                )
            ),
            lambda i: e.DeleteTemplate(experiments_pb2.DeleteTemplateRequest(id=i)),
            "description",
        ),
        Entity(
            "experiment",
            lambda i: e.GetExperiment(experiments_pb2.GetExperimentRequest(id=i)),
            lambda i, m: e.UpdateExperiment(
                experiments_pb2.UpdateExperimentRequest(
                    experiment=Experiment(id=i, hypothesis="h"), update_mask=m
                )
            ),
            lambda i: e.DeleteExperiment(experiments_pb2.DeleteExperimentRequest(id=i)),
            "hypothesis",
        ),
        Entity(
            "simulation",
            lambda i: e.GetSimulation(experiments_pb2.GetSimulationRequest(id=i)),
            lambda i, m: e.UpdateSimulation(
                experiments_pb2.UpdateSimulationRequest(
                    simulation=Simulation(id=i, metadata=struct({"m": 1})), update_mask=m
                )
            ),
            lambda i: e.DeleteSimulation(experiments_pb2.DeleteSimulationRequest(id=i)),
            "metadata",
        ),
        Entity(
            "run",
            lambda i: r.GetRun(runs_pb2.GetRunRequest(id=i)),
            lambda i, m: r.UpdateRun(
                runs_pb2.UpdateRunRequest(run=Run(id=i, current_tick=1), update_mask=m)
            ),
            lambda i: r.DeleteRun(runs_pb2.DeleteRunRequest(id=i)),
            "current_tick",
        ),
        Entity(
            "participant",
            lambda i: r.GetParticipant(runs_pb2.GetParticipantRequest(id=i)),
            lambda i, m: r.UpdateParticipant(
                runs_pb2.UpdateParticipantRequest(
                    participant=Participant(id=i, role="x"), update_mask=m
                )
            ),
            lambda i: r.DeleteParticipant(runs_pb2.DeleteParticipantRequest(id=i)),
            "role",
        ),
    ]


@dataclass(frozen=True)
class Lister:
    """One List method, called with page size, token and filter."""

    name: str
    call: Callable[[int, str, str], Any]
    valid_filter: str


def listers(server: Server, world: World) -> list[Lister]:
    a, e, r, s = server.agents, server.experiments, server.runs, server.scenarios
    return [
        Lister(
            "agents",
            lambda n, t, f: a.ListAgents(
                agents_pb2.ListAgentsRequest(page_size=n, page_token=t, filter=f)
            ),
            'framework = "custom"',
        ),
        Lister(
            "templates",
            lambda n, t, f: e.ListTemplates(
                experiments_pb2.ListTemplatesRequest(page_size=n, page_token=t, filter=f)
            ),
            'name != "x"',
        ),
        Lister(
            "experiments",
            lambda n, t, f: e.ListExperiments(
                experiments_pb2.ListExperimentsRequest(page_size=n, page_token=t, filter=f)
            ),
            'status = "running"',
        ),
        Lister(
            "simulations",
            lambda n, t, f: e.ListSimulations(
                experiments_pb2.ListSimulationsRequest(page_size=n, page_token=t, filter=f)
            ),
            'experiment_id = ""',
        ),
        Lister(
            "runs",
            lambda n, t, f: r.ListRuns(
                runs_pb2.ListRunsRequest(page_size=n, page_token=t, filter=f)
            ),
            'status = "pending"',
        ),
        Lister(
            "participants",
            lambda n, t, f: r.ListParticipants(
                runs_pb2.ListParticipantsRequest(
                    run_id=world.run.id, page_size=n, page_token=t, filter=f
                )
            ),
            'role = "seller"',
        ),
        Lister(
            "scenarios",
            lambda n, t, f: s.ListScenarios(
                scenarios_pb2.ListScenariosRequest(page_size=n, page_token=t, filter=f)
            ),
            "difficulty_tier = 1",
        ),
    ]


# Requests that are not protobuf at all: sent as raw bytes (no stub can make them)

GARBAGE = b"\xff" * 11  # a field tag longer than any varint may be
UploadRequest = artifacts_pb2.UploadArtifactRequest
StreamRequest = telemetry_pb2.StreamRunRequest


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (string, bytes, message): tag, length, payload."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """``{"a": {"a": ...}}``, ``depth`` objects deep, as google.protobuf.Struct bytes (built by
    hand: the Python library will not build what its own decoder refuses).
    """
    struct = b""
    for _ in range(depth):
        value = length_delimited(5, struct)  # Value.struct_value
        struct = length_delimited(1, length_delimited(1, b"a") + length_delimited(2, value))
    return struct


def raw_unary(server: Server, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """``method`` of a simtrack service (e.g. ``AgentService/GetAgent``), bytes both ways."""
    return server.channel.unary_unary(f"/simtrack.v1.{method}")


def raw_unary_stream(server: Server, method: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    return server.channel.unary_stream(f"/simtrack.v1.{method}")


def create_agent_bytes(name: str, config: bytes = b"") -> bytes:
    """A CreateAgentRequest whose agent.config (field 4) is ``config``, as bytes."""
    agent = Agent(name=name, framework=Framework.FRAMEWORK_CUSTOM).SerializeToString()
    return length_delimited(1, agent + (length_delimited(4, config) if config else b""))


# Values echoed back: a short prefix at most, so the status always fits its metadata

SHORT = 300  # characters: well above any message quoting one value, far below the values here
# A message joining many violations is cut (at 512 bytes), and so are their number and texts.
BOUNDED = 600


def refused_shortly(
    call: Callable[[], object], code: grpc.StatusCode, limit: int = SHORT
) -> Failure:
    """``call`` fails with ``code`` (not RESOURCE_EXHAUSTED: the status fits) and says so in
    a message shorter than ``limit``; every field named is short too.
    """
    failure = failure_of(call)
    assert failure.code == code, str(failure)[:1000]
    assert 0 < len(failure.message) < limit, failure.message[:1000]
    assert all(len(field) < SHORT for field in failure.fields), str(failure)[:1000]
    return failure
