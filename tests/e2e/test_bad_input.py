"""Bad input end to end, on SQLite and PostgreSQL.

Every case asserts the status code, the field the google.rpc.BadRequest names (or the
ResourceInfo of a NOT_FOUND), and that the database is unchanged: every row of every table
(update times included), read directly from the database, is the same before and after the
call. The ``server`` fixture adds that no call answered UNKNOWN or INTERNAL and that the server
logged no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2
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
from tests.support import Server, StreamKit

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
SCENARIO = "tier0-tutorial"

Agent = agents_pb2.Agent
Framework = agents_pb2.Framework
Experiment = experiments_pb2.Experiment
Simulation = experiments_pb2.Simulation
Template = experiments_pb2.Template
Run = runs_pb2.Run
Participant = runs_pb2.Participant
RunStatus = runs_pb2.RunStatus
SimulationStatus = experiments_pb2.SimulationStatus


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(data)
    return result


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


@pytest.fixture
def world(server: Server) -> World:
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


# Missing, unknown and malformed references


def test_missing_required_fields(server: Server, world: World) -> None:
    custom = Framework.FRAMEWORK_CUSTOM
    rejects(server, create_agent(server, Agent(framework=custom)), INVALID_ARGUMENT, "agent.name")
    blank = Agent(name="   ", framework=custom)
    rejects(server, create_agent(server, blank), INVALID_ARGUMENT, "agent.name")
    no_framework = create_agent(server, Agent(name="no-framework"))
    rejects(server, no_framework, INVALID_ARGUMENT, "agent.framework")

    experiment = Experiment(name="e", agent_id=world.agent.id, scenario_id=SCENARIO)
    for field in ("agent_id", "scenario_id", "name"):
        incomplete = Experiment()
        incomplete.CopyFrom(experiment)
        incomplete.ClearField(field)
        call = create_experiment(server, incomplete)
        rejects(server, call, INVALID_ARGUMENT, f"experiment.{field}")
    rejects(server, create_template(server, Template()), INVALID_ARGUMENT, "template.name")
    rejects(server, create_run(server, Run()), INVALID_ARGUMENT, "run.experiment_id")
    no_run = Participant(agent_id=world.spare.id)
    rejects(server, create_participant(server, no_run), INVALID_ARGUMENT, "participant.run_id")
    no_agent = Participant(run_id=world.run.id)
    rejects(server, create_participant(server, no_agent), INVALID_ARGUMENT, "participant.agent_id")

    list_without_run = runs_pb2.ListParticipantsRequest()
    rejects(
        server, lambda: server.runs.ListParticipants(list_without_run), INVALID_ARGUMENT, "run_id"
    )
    for entity in entities(server):
        rejects(server, lambda: entity.get(""), INVALID_ARGUMENT, "id")  # noqa: B023
        rejects(server, lambda: entity.delete(""), INVALID_ARGUMENT, "id")  # noqa: B023
        update = lambda: entity.update("", mask(entity.valid_path))  # noqa: B023, E731
        rejects(server, update, INVALID_ARGUMENT, f"{entity.name}.id")
    get_scenario = scenarios_pb2.GetScenarioRequest()
    rejects(server, lambda: server.scenarios.GetScenario(get_scenario), INVALID_ARGUMENT, "id")


def unknown_ids_are_not_found(server: Server, world: World) -> None:
    for entity in entities(server):
        missing = str(uuid.uuid4())
        where = (entity.name, missing)
        rejects(server, lambda: entity.get(missing), NOT_FOUND, resource=where)  # noqa: B023
        update = lambda: entity.update(missing, mask(entity.valid_path))  # noqa: B023, E731
        rejects(server, update, NOT_FOUND, resource=where)
        rejects(server, lambda: entity.delete(missing), NOT_FOUND, resource=where)  # noqa: B023

    missing = str(uuid.uuid4())
    experiment = Experiment(name="e", agent_id=missing, scenario_id=SCENARIO)
    failure = rejects(
        server, create_experiment(server, experiment), NOT_FOUND, resource=("agent", missing)
    )
    assert "experiment.agent_id" in failure.message
    experiment.agent_id = world.agent.id
    call = create_experiment(server, experiment, template_id=missing)
    rejects(server, call, NOT_FOUND, resource=("template", missing))
    experiment.scenario_id = "no-such-scenario"
    call = create_experiment(server, experiment)
    rejects(server, call, NOT_FOUND, resource=("scenario", "no-such-scenario"))
    call = create_run(server, Run(experiment_id=missing))
    rejects(server, call, NOT_FOUND, resource=("experiment", missing))
    call = create_participant(server, Participant(run_id=missing, agent_id=world.spare.id))
    rejects(server, call, NOT_FOUND, resource=("run", missing))
    call = create_participant(server, Participant(run_id=world.run.id, agent_id=missing))
    rejects(server, call, NOT_FOUND, resource=("agent", missing))
    call = create_simulation(server, Simulation(experiment_id=missing))
    rejects(server, call, NOT_FOUND, resource=("experiment", missing))
    moved = Experiment(id=world.experiment.id, agent_id=missing)
    request = experiments_pb2.UpdateExperimentRequest(
        experiment=moved, update_mask=mask("agent_id")
    )
    rejects(
        server,
        lambda: server.experiments.UpdateExperiment(request),
        NOT_FOUND,
        resource=("agent", missing),
    )
    participants = runs_pb2.ListParticipantsRequest(run_id=missing)
    rejects(
        server,
        lambda: server.runs.ListParticipants(participants),
        NOT_FOUND,
        resource=("run", missing),
    )
    scenario = scenarios_pb2.GetScenarioRequest(id="no-such-scenario")
    rejects(
        server,
        lambda: server.scenarios.GetScenario(scenario),
        NOT_FOUND,
        resource=("scenario", "no-such-scenario"),
    )


def malformed_ids_are_invalid(server: Server, world: World) -> None:
    for entity in entities(server):
        rejects(server, lambda: entity.get("abc"), INVALID_ARGUMENT, "id")  # noqa: B023
        rejects(server, lambda: entity.delete("abc"), INVALID_ARGUMENT, "id")  # noqa: B023
        update = lambda: entity.update("abc", mask(entity.valid_path))  # noqa: B023, E731
        rejects(server, update, INVALID_ARGUMENT, f"{entity.name}.id")
    experiment = Experiment(name="e", agent_id="abc", scenario_id=SCENARIO)
    rejects(server, create_experiment(server, experiment), INVALID_ARGUMENT, "experiment.agent_id")
    experiment.agent_id = world.agent.id
    rejects(
        server,
        create_experiment(server, experiment, template_id="abc"),
        INVALID_ARGUMENT,
        "template_id",
    )
    rejects(
        server, create_run(server, Run(experiment_id="abc")), INVALID_ARGUMENT, "run.experiment_id"
    )
    call = create_participant(server, Participant(run_id="abc", agent_id=world.spare.id))
    rejects(server, call, INVALID_ARGUMENT, "participant.run_id")
    call = create_participant(server, Participant(run_id=world.run.id, agent_id="abc"))
    rejects(server, call, INVALID_ARGUMENT, "participant.agent_id")
    call = create_simulation(server, Simulation(experiment_id="abc"))
    rejects(server, call, INVALID_ARGUMENT, "simulation.experiment_id")
    participants = runs_pb2.ListParticipantsRequest(run_id="abc")
    rejects(server, lambda: server.runs.ListParticipants(participants), INVALID_ARGUMENT, "run_id")


def unknown_enum_values_are_invalid(server: Server, world: World) -> None:
    bogus_framework = Framework.ValueType(99)
    call = create_agent(server, Agent(name="enum", framework=bogus_framework))
    rejects(server, call, INVALID_ARGUMENT, "agent.framework")
    call = update_agent(server, Agent(id=world.spare.id, framework=bogus_framework), "framework")
    rejects(server, call, INVALID_ARGUMENT, "agent.framework")

    bogus_run_status = RunStatus.ValueType(42)
    call = update_run(server, Run(id=world.run.id, status=bogus_run_status), "status")
    rejects(server, call, INVALID_ARGUMENT, "run.status")
    call = create_run(server, Run(experiment_id=world.experiment.id, status=bogus_run_status))
    rejects(server, call, INVALID_ARGUMENT, "run.status")

    bogus_simulation_status = SimulationStatus.ValueType(42)
    simulation = Simulation(id=world.simulation.id, status=bogus_simulation_status)
    call = update_simulation(server, simulation, "status")
    rejects(server, call, INVALID_ARGUMENT, "simulation.status")
    call = create_simulation(server, Simulation(status=bogus_simulation_status))
    rejects(server, call, INVALID_ARGUMENT, "simulation.status")

    # Unset (0) is no value at all: required on create and when named in an update mask.
    call = update_run(server, Run(id=world.run.id), "status")
    rejects(server, call, INVALID_ARGUMENT, "run.status")
    call = update_agent(server, Agent(id=world.spare.id), "framework")
    rejects(server, call, INVALID_ARGUMENT, "agent.framework")


def test_unknown_and_malformed_ids(server: Server, world: World) -> None:
    unknown_ids_are_not_found(server, world)
    malformed_ids_are_invalid(server, world)


# JSON values


def test_non_object_json_cannot_even_be_sent() -> None:
    # google.protobuf.Struct is a JSON *object* by construction: a JSON array, string, number or
    # null where the API takes a Struct has no wire representation, so the client library
    # rejects it before anything is sent. The server-side cases are in the test below.
    for config in ("[1, 2]", '"text"', "5", "true"):
        text = f'{{"agent": {{"name": "x", "framework": "FRAMEWORK_CUSTOM", "config": {config}}}}}'
        with pytest.raises(json_format.ParseError):
            json_format.Parse(text, agents_pb2.CreateAgentRequest())


def test_json_values_that_are_not_json_are_invalid(server: Server, world: World) -> None:
    """What *can* be sent: a Value with no kind set, and NaN or infinite numbers."""

    def agent_with(config: struct_pb2.Struct) -> Agent:
        return Agent(name="json", framework=Framework.FRAMEWORK_CUSTOM, config=config)

    # Python's json (and so json_format) reads the non-standard NaN and Infinity literals: such
    # a request is easy to make by accident.
    request = json_format.Parse(
        '{"agent": {"name": "x", "framework": "FRAMEWORK_CUSTOM", "config": {"x": NaN}}}',
        agents_pb2.CreateAgentRequest(),
    )
    rejects(server, lambda: server.agents.CreateAgent(request), INVALID_ARGUMENT, "agent.config.x")

    no_kind = struct_pb2.Struct()
    no_kind.fields["x"].Clear()  # present in the map, but neither number, string, ... nor null
    assert no_kind.fields["x"].WhichOneof("kind") is None
    rejects(server, create_agent(server, agent_with(no_kind)), INVALID_ARGUMENT, "agent.config.x")

    for number in (float("nan"), float("inf"), float("-inf")):
        top = struct_pb2.Struct()
        top.fields["x"].number_value = number
        call = create_agent(server, agent_with(top))
        rejects(server, call, INVALID_ARGUMENT, "agent.config.x")

        nested = struct({"a": {"b": 1}, "list": [1, 2]})
        nested.fields["a"].struct_value.fields["b"].number_value = number
        nested.fields["list"].list_value.values[1].number_value = number
        call = create_agent(server, agent_with(nested))
        # Both bad values are named (the first one found is enough to reject).
        failure = failure_of(call)
        assert failure.code == INVALID_ARGUMENT, str(failure)
        assert set(failure.fields) <= {"agent.config.a.b", "agent.config.list[1]"}
        assert failure.fields, str(failure)

        call = update_agent(server, Agent(id=world.spare.id, config=top), "config")
        rejects(server, call, INVALID_ARGUMENT, "agent.config.x")
        template = Template(name="json", config=top)
        rejects(server, create_template(server, template), INVALID_ARGUMENT, "template.config.x")
        experiment = Experiment(name="e", agent_id=world.agent.id, scenario_id=SCENARIO, params=top)
        call = create_experiment(server, experiment)
        rejects(server, call, INVALID_ARGUMENT, "experiment.params.x")
        call = create_run(server, Run(experiment_id=world.experiment.id, params=top))
        rejects(server, call, INVALID_ARGUMENT, "run.params.x")
        call = update_run(server, Run(id=world.run.id, results=top), "results")
        rejects(server, call, INVALID_ARGUMENT, "run.results.x")
        call = update_simulation(
            server, Simulation(id=world.simulation.id, metadata=top), "metadata"
        )
        rejects(server, call, INVALID_ARGUMENT, "simulation.metadata.x")
        participant = Participant(run_id=world.run.id, agent_id=world.spare.id, config_override=top)
        call = create_participant(server, participant)
        rejects(server, call, INVALID_ARGUMENT, "participant.config_override.x")


def progress_and_ticks_out_of_range_are_invalid(server: Server, world: World) -> None:
    for progress in (150.0, -1.0, 100.5, float("nan")):
        call = update_run(
            server, Run(id=world.run.id, progress_percent=progress), "progress_percent"
        )
        rejects(server, call, INVALID_ARGUMENT, "run.progress_percent")
    call = update_run(server, Run(id=world.run.id, current_tick=-1), "current_tick")
    rejects(server, call, INVALID_ARGUMENT, "run.current_tick")
    call = update_run(server, Run(id=world.run.id, total_ticks=-5), "total_ticks")
    rejects(server, call, INVALID_ARGUMENT, "run.total_ticks")
    call = create_run(server, Run(experiment_id=world.experiment.id, total_ticks=-5))
    rejects(server, call, INVALID_ARGUMENT, "run.total_ticks")
    # The bounds themselves are fine.
    for progress in (0.0, 100.0):
        run = Run(id=world.run.id, progress_percent=progress)
        done = server.runs.UpdateRun(
            runs_pb2.UpdateRunRequest(run=run, update_mask=mask("progress_percent"))
        ).run
        assert done.progress_percent == progress


# Uniqueness and references


def duplicates_already_exist(server: Server, world: World) -> None:
    same_name = Agent(name="seed-agent", framework=Framework.FRAMEWORK_BASELINE)
    failure = rejects(server, create_agent(server, same_name), ALREADY_EXISTS)
    assert "seed-agent" in failure.message
    # Names are trimmed before they are compared.
    padded = Agent(name="  seed-agent ", framework=Framework.FRAMEWORK_BASELINE)
    rejects(server, create_agent(server, padded), ALREADY_EXISTS)
    rename = update_agent(server, Agent(id=world.spare.id, name="seed-agent"), "name")
    rejects(server, rename, ALREADY_EXISTS)

    template = Template(name="seed-template", description="again")
    rejects(server, create_template(server, template), ALREADY_EXISTS)
    other = server.experiments.CreateTemplate(
        experiments_pb2.CreateTemplateRequest(template=Template(name="other-template"))
    ).template
    request = experiments_pb2.UpdateTemplateRequest(
        template=Template(id=other.id, name="seed-template"), update_mask=mask("name")
    )
    rejects(server, lambda: server.experiments.UpdateTemplate(request), ALREADY_EXISTS)

    again = Participant(run_id=world.run.id, agent_id=world.agent.id, role="another role")
    failure = rejects(server, create_participant(server, again), ALREADY_EXISTS)
    assert "seed-agent" in failure.message


def deleting_a_referenced_agent_fails(server: Server, world: World) -> None:
    delete = agents_pb2.DeleteAgentRequest(id=world.agent.id)
    rejects(server, lambda: server.agents.DeleteAgent(delete), FAILED_PRECONDITION)
    get = agents_pb2.GetAgentRequest(id=world.agent.id)
    assert server.agents.GetAgent(get).agent == world.agent

    # Referenced only as a participant of a run.
    server.runs.CreateParticipant(
        runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=world.run.id, agent_id=world.spare.id)
        )
    )
    delete_spare = agents_pb2.DeleteAgentRequest(id=world.spare.id)
    rejects(server, lambda: server.agents.DeleteAgent(delete_spare), FAILED_PRECONDITION)
    get_spare = agents_pb2.GetAgentRequest(id=world.spare.id)
    assert server.agents.GetAgent(get_spare).agent.name == "spare-agent"


def test_duplicates_and_referenced_agents(server: Server, world: World) -> None:
    duplicates_already_exist(server, world)
    deleting_a_referenced_agent_fails(server, world)


# Status transitions


def test_illegal_status_transitions(server: Server, world: World) -> None:
    def move(run_id: str, status: int) -> Run:
        run = Run(id=run_id, status=RunStatus.ValueType(status))
        request = runs_pb2.UpdateRunRequest(run=run, update_mask=mask("status"))
        return server.runs.UpdateRun(request).run

    def refused(run_id: str, status: int, *also: str) -> None:
        before = server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run
        run = Run(id=run_id, status=RunStatus.ValueType(status), progress_percent=50)
        call = update_run(server, run, *also, "status")
        failure = rejects(server, call, FAILED_PRECONDITION)
        assert RunStatus.Name(RunStatus.ValueType(status))[11:].lower() in failure.message
        assert server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run == before

    pending = world.run.id
    refused(pending, RunStatus.RUN_STATUS_COMPLETED)
    refused(pending, RunStatus.RUN_STATUS_RUNNING)  # only through starting
    refused(pending, RunStatus.RUN_STATUS_FAILED)
    # A legal change in the same request is not applied either.
    refused(pending, RunStatus.RUN_STATUS_COMPLETED, "progress_percent")

    move(pending, RunStatus.RUN_STATUS_STARTING)
    refused(pending, RunStatus.RUN_STATUS_PENDING)
    move(pending, RunStatus.RUN_STATUS_RUNNING)
    refused(pending, RunStatus.RUN_STATUS_STARTING)
    move(pending, RunStatus.RUN_STATUS_COMPLETED)
    refused(pending, RunStatus.RUN_STATUS_RUNNING)
    refused(pending, RunStatus.RUN_STATUS_FAILED)
    refused(pending, RunStatus.RUN_STATUS_PENDING)

    # A new run is pending: it cannot be created in another state.
    for status in (RunStatus.RUN_STATUS_RUNNING, RunStatus.RUN_STATUS_COMPLETED):
        call = create_run(
            server, Run(experiment_id=world.experiment.id, status=RunStatus.ValueType(status))
        )
        rejects(server, call, INVALID_ARGUMENT, "run.status")

    simulation = world.simulation.id
    done = SimulationStatus.SIMULATION_STATUS_COMPLETED
    call = update_simulation(server, Simulation(id=simulation, status=done), "status")
    rejects(server, call, FAILED_PRECONDITION)
    running = SimulationStatus.SIMULATION_STATUS_RUNNING
    server.experiments.UpdateSimulation(
        experiments_pb2.UpdateSimulationRequest(
            simulation=Simulation(id=simulation, status=running), update_mask=mask("status")
        )
    )
    server.experiments.UpdateSimulation(
        experiments_pb2.UpdateSimulationRequest(
            simulation=Simulation(id=simulation, status=done), update_mask=mask("status")
        )
    )
    call = update_simulation(server, Simulation(id=simulation, status=running), "status")
    rejects(server, call, FAILED_PRECONDITION)


# Listing


def test_garbage_page_tokens(server: Server, world: World) -> None:
    for i in range(3):
        agent = Agent(name=f"extra-{i}", framework=Framework.FRAMEWORK_CUSTOM)
        server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent))
    junk = [
        "garbage",
        base64.urlsafe_b64encode(b"\x00\xffjunk\x80").decode(),
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"t": 5, "i": "x", "s": "y"}').decode(),
        base64.urlsafe_b64encode(b'{"t": "2024-01-01T00:00:00", "i": "x", "s": "y"}').decode(),
        "é",
    ]
    for lister in listers(server, world):
        for token in junk:
            call = lambda: lister.call(0, token, "")  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "page_token")

    agents = listers(server, world)[0]
    custom = 'framework = "custom"'
    token = agents.call(1, "", custom).next_page_token
    assert token
    # A token is bound to the filter it was issued for.
    for other_filter in ("", 'framework = "baseline"', 'framework = "custom" AND name != "x"'):
        call = lambda: agents.call(1, token, other_filter)  # noqa: B023, E731
        rejects(server, call, INVALID_ARGUMENT, "page_token")
    assert agents.call(1, token, custom).agents  # and works with it

    # ... and to the parent it was issued for.
    helper = server.agents.CreateAgent(
        agents_pb2.CreateAgentRequest(
            agent=Agent(name="helper", framework=Framework.FRAMEWORK_CUSTOM)
        )
    ).agent
    server.runs.CreateParticipant(
        runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=world.run.id, agent_id=helper.id)
        )
    )
    first = runs_pb2.ListParticipantsRequest(run_id=world.run.id, page_size=1)
    participants_token = server.runs.ListParticipants(first).next_page_token
    assert participants_token
    other_run = server.runs.CreateRun(
        runs_pb2.CreateRunRequest(run=Run(experiment_id=world.experiment.id))
    ).run
    elsewhere = runs_pb2.ListParticipantsRequest(run_id=other_run.id, page_token=participants_token)
    rejects(server, lambda: server.runs.ListParticipants(elsewhere), INVALID_ARGUMENT, "page_token")

    # ... and to the collection it was issued for (no filter on either side here).
    all_listers = listers(server, world)
    agents_token = all_listers[0].call(1, "", "").next_page_token
    assert agents_token
    for lister in all_listers[1:]:
        call = lambda: lister.call(0, agents_token, "")  # noqa: B023, E731
        rejects(server, call, INVALID_ARGUMENT, "page_token")


def test_absurd_page_sizes_and_bad_filters(server: Server, world: World) -> None:
    bad_filters = [
        'bogus = "x"',
        "name =",
        'name = "x" OR name = "y"',
        'name = "x" AND',
        'name ~ "x"',
        'name = "unterminated',
        "= x",
        "(name = x)",
    ]
    for lister in listers(server, world):
        for size in (-1, 1001, 1000001, -(2**31)):
            call = lambda: lister.call(size, "", "")  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "page_size")
        for text in bad_filters:
            call = lambda: lister.call(0, "", text)  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "filter")
        assert lister.call(1000, "", lister.valid_filter).next_page_token == ""
    by_value = {
        "agents": 'framework = "quantum"',
        "experiments": 'status = "paused"',
        "simulations": "status = 42",
        "runs": 'status = "exploded"',
        "scenarios": "difficulty_tier = high",
    }
    for lister in listers(server, world):
        if lister.name in by_value:
            call = lambda: lister.call(0, "", by_value[lister.name])  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "filter")


# Updates


def test_bad_update_masks(server: Server, world: World) -> None:
    ids = {
        "agent": world.spare.id,
        "template": world.template.id,
        "experiment": world.experiment.id,
        "simulation": world.simulation.id,
        "run": world.run.id,
        "participant": world.participant.id,
    }
    read_only = {
        "agent": ["id", "create_time", "update_time", "agent.name"],
        "template": ["id", "create_time"],
        "experiment": ["id", "scenario_id", "status", "experiment.name"],
        "simulation": ["id", "start_time", "end_time"],
        "run": ["id", "experiment_id", "run_number", "scenario_hash", "start_time", "duration"],
        "participant": ["id", "run_id", "agent_id"],
    }
    for entity in entities(server):
        entity_id = ids[entity.name]
        call = lambda: entity.update(entity_id, mask())  # noqa: B023, E731
        rejects(server, call, INVALID_ARGUMENT, "update_mask")
        for path in ["bogus", "", *read_only[entity.name]]:
            call = lambda: entity.update(entity_id, mask(path))  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "update_mask")
        # One bad path spoils the whole update.
        call = lambda: entity.update(entity_id, mask(entity.valid_path, "bogus"))  # noqa: B023, E731
        rejects(server, call, INVALID_ARGUMENT, "update_mask")


def over_long_values_are_invalid(server: Server, world: World) -> None:
    long_name = "n" * 201
    call = create_agent(server, Agent(name=long_name, framework=Framework.FRAMEWORK_CUSTOM))
    rejects(server, call, INVALID_ARGUMENT, "agent.name")
    call = update_agent(server, Agent(id=world.spare.id, name=long_name), "name")
    rejects(server, call, INVALID_ARGUMENT, "agent.name")
    rejects(
        server, create_template(server, Template(name=long_name)), INVALID_ARGUMENT, "template.name"
    )
    experiment = Experiment(name=long_name, agent_id=world.agent.id, scenario_id=SCENARIO)
    rejects(server, create_experiment(server, experiment), INVALID_ARGUMENT, "experiment.name")
    experiment = Experiment(
        name="e", agent_id=world.agent.id, scenario_id=SCENARIO, description="d" * 10_001
    )
    rejects(
        server, create_experiment(server, experiment), INVALID_ARGUMENT, "experiment.description"
    )
    participant = Participant(run_id=world.run.id, agent_id=world.spare.id, role="r" * 101)
    rejects(server, create_participant(server, participant), INVALID_ARGUMENT, "participant.role")
    call = update_run(server, Run(id=world.run.id, worker_id="w" * 201), "worker_id")
    rejects(server, call, INVALID_ARGUMENT, "run.worker_id")

    # The limits themselves are fine, also in characters beyond ASCII.
    for name in ("n" * 200, "é" * 200, "\N{ROCKET}" * 200):
        created = server.agents.CreateAgent(
            agents_pb2.CreateAgentRequest(
                agent=Agent(name=name, framework=Framework.FRAMEWORK_CUSTOM)
            )
        ).agent
        assert created.name == name
        got = server.agents.GetAgent(agents_pb2.GetAgentRequest(id=created.id)).agent
        assert got.name == name


def nul_characters_are_invalid(server: Server, world: World) -> None:
    """U+0000 cannot be stored in PostgreSQL text or JSON: refused on every database alike."""
    call = create_agent(server, Agent(name="nul\x00name", framework=Framework.FRAMEWORK_CUSTOM))
    rejects(server, call, INVALID_ARGUMENT, "agent.name")
    call = update_run(server, Run(id=world.run.id, error_message="bad\x00"), "error_message")
    rejects(server, call, INVALID_ARGUMENT, "run.error_message")
    config = struct({"x": "nul\x00value"})
    call = update_agent(server, Agent(id=world.spare.id, config=config), "config")
    rejects(server, call, INVALID_ARGUMENT, "agent.config.x")
    template = Template(name="template", description="nul\x00")
    rejects(server, create_template(server, template), INVALID_ARGUMENT, "template.description")
    participant = Participant(run_id=world.run.id, agent_id=world.spare.id, role="r\x00")
    rejects(server, create_participant(server, participant), INVALID_ARGUMENT, "participant.role")
    nested = struct({"list": ["fine", "nul\x00"]})
    call = create_run(server, Run(experiment_id=world.experiment.id, params=nested))
    rejects(server, call, INVALID_ARGUMENT, "run.params.list[1]")
    listing = agents_pb2.ListAgentsRequest(filter='name = "nul\x00"')
    rejects(server, lambda: server.agents.ListAgents(listing), INVALID_ARGUMENT, "filter")


def test_values_out_of_their_range(server: Server, world: World) -> None:
    unknown_enum_values_are_invalid(server, world)
    progress_and_ticks_out_of_range_are_invalid(server, world)
    over_long_values_are_invalid(server, world)
    nul_characters_are_invalid(server, world)


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
    hand: the Python library will not build what its own decoder refuses)."""
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


def test_requests_that_are_not_protobuf_are_invalid(server: Server, world: World) -> None:
    create = raw_unary(server, "AgentService/CreateAgent")
    undecodable = {
        "garbage": GARBAGE,
        "truncated": create_agent_bytes("truncated")[:-2],
        "invalid UTF-8": length_delimited(1, length_delimited(2, b"caf\xc3")),  # agent.name
        "nested too deep": create_agent_bytes("deep", nested_struct(40)),
    }
    for what, data in undecodable.items():
        failure = rejects(server, lambda: create(data), INVALID_ARGUMENT, "request")  # noqa: B023
        assert "simtrack.v1.CreateAgentRequest" in failure.message, (what, str(failure))
    # As deep as the decoder allows is fine.
    created = create(create_agent_bytes("deep enough", nested_struct(30)))
    assert agents_pb2.CreateAgentResponse.FromString(created).agent.name == "deep enough"

    # Any unary call, and a call whose answer is a stream.
    get_run = raw_unary(server, "RunService/GetRun")
    rejects(server, lambda: get_run(GARBAGE), INVALID_ARGUMENT, "request")
    list_agents = raw_unary(server, "AgentService/ListAgents")
    bad_filter = length_delimited(3, b'name = "\xff"')  # ListAgentsRequest.filter
    rejects(server, lambda: list_agents(bad_filter), INVALID_ARGUMENT, "request")
    watch = raw_unary_stream(server, "RunService/WatchRun")
    rejects(server, lambda: list(watch(GARBAGE)), INVALID_ARGUMENT, "request")
    content = raw_unary_stream(server, "ArtifactService/GetArtifactContent")
    rejects(server, lambda: list(content(GARBAGE)), INVALID_ARGUMENT, "request")


def test_upload_messages_that_are_not_protobuf_are_invalid_and_leave_nothing(
    server: Server, world: World
) -> None:
    upload: grpc.StreamUnaryMultiCallable[bytes, bytes] = server.channel.stream_unary(
        "/simtrack.v1.ArtifactService/UploadArtifact"
    )
    artifact = artifacts_pb2.Artifact(run_id=world.run.id, name="raw.bin")
    metadata = UploadRequest(
        metadata=artifacts_pb2.UploadArtifactMetadata(artifact=artifact)
    ).SerializeToString()
    chunk = UploadRequest(chunk=b"data").SerializeToString()
    for messages in ([GARBAGE], [metadata, GARBAGE], [metadata, chunk, chunk[:-1]]):
        rejects(server, lambda: upload(iter(messages)), INVALID_ARGUMENT, "request")  # noqa: B023
    store = server.artifacts_dir
    assert not [p for p in store.rglob("*") if p.is_file()], "a refused upload left a file"
    stored = artifacts_pb2.UploadArtifactResponse.FromString(upload(iter([metadata, chunk])))
    assert stored.artifact.size_bytes == 4


async def test_a_stream_message_that_is_not_protobuf_ends_the_stream(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """Mid-stream: INVALID_ARGUMENT, and every batch acknowledged before stays stored."""
    db = streams.database(database_url)
    run = streams.new_run(server)
    data = streams.dataset(3, points=100)
    stream_run: grpc.aio.StreamStreamMultiCallable[bytes, telemetry_pb2.StreamRunResponse] = (
        streams.channel(server.address).stream_stream(
            "/simtrack.v1.TelemetryService/StreamRun",
            response_deserializer=telemetry_pb2.StreamRunResponse.FromString,
        )
    )
    hello = StreamRequest(hello=telemetry_pb2.Hello(run_id=run.id)).SerializeToString()

    async def ending(call: Any) -> Failure:
        """How ``call`` ends: it must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(10):
                while await call.read() is not grpc.aio.EOF:
                    pass
        return failure_from(cast(grpc.Call, info.value))

    async def answer(call: Any) -> telemetry_pb2.StreamRunResponse:
        response = await call.read()
        assert isinstance(response, telemetry_pb2.StreamRunResponse), response
        return response

    call = stream_run()
    await call.write(hello)
    assert (await answer(call)).HasField("welcome")
    for message in data.messages:
        await call.write(message.SerializeToString())
    acked = 0
    while acked < len(data.messages):
        acked = max(acked, (await answer(call)).ack.committed_seq)
    await call.write(GARBAGE)
    failure = await ending(call)
    assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["request"]), str(failure)
    assert "simtrack.v1.StreamRunRequest" in failure.message
    assert db.committed_seq(run.id) == len(data.messages)
    assert db.checksums(run.id) == data.checksums()

    # Instead of hello.
    call = stream_run()
    await call.write(GARBAGE)
    failure = await ending(call)
    assert (failure.code, failure.fields) == (INVALID_ARGUMENT, ["request"]), str(failure)
    assert db.checksums(run.id) == data.checksums()


# Page tokens this server did not issue


def forged_token(scope: str, **payload: Any) -> str:
    """A token made like the server's own (same scope digest), with contents it never makes."""
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(json.dumps({**payload, "s": digest}).encode()).decode()


def test_page_tokens_we_did_not_issue_are_invalid(
    server: Server, world: World, streams: StreamKit
) -> None:
    deep = [
        base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
        base64.urlsafe_b64encode(b'{"s": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001).decode(),
    ]
    for lister in listers(server, world):
        for token in deep:
            call = lambda: lister.call(0, token, "")  # noqa: B023, E731
            rejects(server, call, INVALID_ARGUMENT, "page_token")

    agents = listers(server, world)[0]
    some_id = str(uuid.uuid4())
    for payload in (
        {"t": "0001-01-01T00:00:00+14:00", "i": some_id},  # before the first UTC instant
        {"t": "9999-12-31T23:59:59-14:00", "i": some_id},  # after the last
        {"t": "2024-01-01T00:00:00+00:00", "i": "nul\x00"},
        {"t": "2024-01-01T00:00:00+00:00", "i": {"not": "an id"}},
        {"t": "2024-01-01T00:00:00+00:00", "i": "x" * 10_000},
    ):
        token = forged_token("agents/|", **payload)
        rejects(server, lambda: agents.call(0, token, ""), INVALID_ARGUMENT, "page_token")  # noqa: B023

    run = streams.new_run(server)
    for position in ([2**70, 0], [0, -(2**70)], [True, 0]):
        token = forged_token(f"events/{run.id}|", p=position)
        request = telemetry_pb2.ListEventsRequest(run_id=run.id, page_token=token)
        call = lambda: server.telemetry.ListEvents(request)  # noqa: B023, E731
        rejects(server, call, INVALID_ARGUMENT, "page_token")


# Values echoed back: a short prefix at most, so the status always fits its metadata

SHORT = 300  # characters: well above any message quoting one value, far below the values here
# A message joining many violations is cut (at 512 bytes), and so are their number and texts.
BOUNDED = 600


def refused_shortly(
    call: Callable[[], object], code: grpc.StatusCode, limit: int = SHORT
) -> Failure:
    """``call`` fails with ``code`` (not RESOURCE_EXHAUSTED: the status fits) and says so in
    a message shorter than ``limit``; every field named is short too."""
    failure = failure_of(call)
    assert failure.code == code, str(failure)[:1000]
    assert 0 < len(failure.message) < limit, failure.message[:1000]
    assert all(len(field) < SHORT for field in failure.fields), str(failure)[:1000]
    return failure


def test_long_values_are_quoted_short(server: Server, world: World) -> None:
    before = server.database_snapshot()
    long_id = "s" * 20_000
    failure = refused_shortly(
        lambda: server.scenarios.GetScenario(scenarios_pb2.GetScenarioRequest(id=long_id)),
        NOT_FOUND,
    )
    assert failure.resource is not None and failure.resource.resource_type == "scenario"
    assert len(failure.resource.resource_name) < SHORT
    assert failure.resource.resource_name.startswith("sss")
    experiment = Experiment(name="e", agent_id=world.agent.id, scenario_id=long_id)
    refused_shortly(create_experiment(server, experiment), NOT_FOUND)
    leaderboard = runs_pb2.GetLeaderboardRequest(scenario_id=long_id, metric="profit")
    refused_shortly(lambda: server.runs.GetLeaderboard(leaderboard), NOT_FOUND)

    agents = listers(server, world)[0]
    for text in (
        'framework = "' + "q" * 10_000 + '"',
        'framework = "' + "q" * 1_000 + '"',
        "f" * 1_000 + ' = "x"',
        'name = "x" ' + "?" * 1_000,
    ):
        failure = refused_shortly(lambda: agents.call(0, "", text), INVALID_ARGUMENT)  # noqa: B023
        assert failure.fields == ["filter"], str(failure)

    long_path = update_agent(server, Agent(id=world.spare.id, name="n"), "p" * 20_000)
    assert refused_shortly(long_path, INVALID_ARGUMENT).fields == ["update_mask"]
    many_paths = update_agent(
        server, Agent(id=world.spare.id, name="n"), *(f"bogus{i}" for i in range(5_000))
    )
    failure = refused_shortly(many_paths, INVALID_ARGUMENT, BOUNDED)
    assert 0 < len(failure.fields) <= 10 and set(failure.fields) == {"update_mask"}

    long_key = struct_pb2.Struct()
    long_key.fields["k" * 20_000].number_value = float("nan")
    call = create_agent(
        server, Agent(name="long key", framework=Framework.FRAMEWORK_CUSTOM, config=long_key)
    )
    failure = refused_shortly(call, INVALID_ARGUMENT)
    assert [f[:16] for f in failure.fields] == ["agent.config.kkk"], str(failure)[:1000]
    many_bad = struct_pb2.Struct()
    for i in range(5_000):
        many_bad.fields[f"x{i}"].list_value.values.add().number_value = float("inf")
    call = create_agent(
        server, Agent(name="many bad", framework=Framework.FRAMEWORK_CUSTOM, config=many_bad)
    )
    assert 0 < len(refused_shortly(call, INVALID_ARGUMENT, BOUNDED).fields) <= 10
    assert server.database_snapshot() == before


# Filters beyond their bounds


def test_filters_beyond_their_bounds_are_invalid(server: Server, world: World) -> None:
    """Refused at once, as INVALID_ARGUMENT: never a long query that ends "retry later"."""
    many_terms = " AND ".join(['name != "x"'] * 70_000)  # more parameters than PostgreSQL takes
    too_long = 'name = "' + "n" * 20_000 + '"'
    for lister in listers(server, world):
        for text in (many_terms, too_long):
            call = lambda: lister.call(0, "", text)  # noqa: B023, E731
            failure = rejects(server, call, INVALID_ARGUMENT, "filter")
            assert len(failure.message) < SHORT
    stats = runs_pb2.GetRunStatsRequest(filter=many_terms)
    rejects(server, lambda: server.runs.GetRunStats(stats), INVALID_ARGUMENT, "filter")
    events = telemetry_pb2.ListEventsRequest(run_id=world.run.id, filter=many_terms)
    rejects(server, lambda: server.telemetry.ListEvents(events), INVALID_ARGUMENT, "filter")

    # Up to the bounds is fine: 100 terms, 4,096 characters.
    within = " AND ".join(['name != "x"'] * 100)
    assert len(server.agents.ListAgents(agents_pb2.ListAgentsRequest(filter=within)).agents) == 2
    longest = 'name != "' + "n" * (4_096 - 10) + '"'
    assert len(longest) == 4_096
    assert len(server.agents.ListAgents(agents_pb2.ListAgentsRequest(filter=longest)).agents) == 2


# Stream values protobuf or the database cannot take


async def test_stream_values_out_of_their_range_are_invalid(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    """Timestamps beyond protobuf's range and non-finite series timestamps end the stream
    INVALID_ARGUMENT naming the field (it never succeeds on a resend); stored data stays."""
    db = streams.database(database_url)
    run = streams.new_run(server)
    data = streams.dataset(2, points=100)
    await streams.deliver(server, run.id, data.messages)

    def event_at(seconds: int, nanos: int = 0) -> StreamRequest:
        event = telemetry_pb2.Event(
            step=1, type="tick", time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        )
        return StreamRequest(seq=3, events=telemetry_pb2.EventBatch(events=[event]))

    def stamped(*stamps: float) -> StreamRequest:
        points = len(stamps)
        series = telemetry_pb2.MetricSeries(
            name="late", steps=range(points), values=[1.0] * points, timestamps=stamps
        )
        return StreamRequest(seq=3, metrics=telemetry_pb2.MetricBatch(series=[series]))

    event_time = "events.events[0].time"
    stamps = "metrics.series[0].timestamps"
    cases = [
        (event_at(2**40), event_time),
        (event_at(-(2**40)), event_time),
        (event_at(253_402_300_800), event_time),  # 10000-01-01
        (event_at(0, -1), f"{event_time}.nanos"),
        (event_at(0, 10**9), f"{event_time}.nanos"),
        (stamped(math.nan), stamps),
        (stamped(1.0, math.inf), stamps),
        (stamped(-math.inf, 1.0, 2.0), stamps),
        (stamped(1e300), stamps),
    ]
    for message, field in cases:
        bad = streams.stream(server.address, run.id, "out-of-range")
        await bad.open()
        await bad.send(message)
        await bad.wait_end()
        assert (bad.code, bad.bad_request_fields()) == (INVALID_ARGUMENT, [field]), bad.details
    assert db.committed_seq(run.id) == 2
    assert db.checksums(run.id) == data.checksums()
    assert db.events(run.id) == []

    # Steps at both ends of int64 are stored and read back exactly.
    top, bottom = 2**63 - 1, -(2**63)
    edges = StreamRequest(
        seq=3,
        metrics=telemetry_pb2.MetricBatch(
            series=[
                telemetry_pb2.MetricSeries(name="top", steps=[top - 1, top], values=[1.0, 2.0]),
                telemetry_pb2.MetricSeries(
                    name="bottom", steps=[bottom, bottom + 1], values=[3.0, 4.0]
                ),
            ]
        ),
    )
    good = await streams.open(server, run.id)
    await good.send(edges)
    await good.wait_acked(3)
    for name, steps in (("top", [top - 1, top]), ("bottom", [bottom, bottom + 1])):
        request = telemetry_pb2.GetMetricHistoryRequest(run_id=run.id, metric=name)
        assert list(server.telemetry.GetMetricHistory(request).steps) == steps
