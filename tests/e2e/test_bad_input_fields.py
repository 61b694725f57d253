"""Bad input end to end, on SQLite and PostgreSQL: missing, unknown and malformed fields and
references, JSON values that are not JSON, values out of their range, duplicates, illegal
status transitions and bad update masks.

Every case asserts the status code, the field the google.rpc.BadRequest names (or the
ResourceInfo of a NOT_FOUND), and that the database is unchanged (``bad_input.rejects``). The
``server`` fixture adds that no call answered UNKNOWN or INTERNAL and that the server logged no
traceback.
"""

from __future__ import annotations

import uuid

import pytest
from google.protobuf import json_format, struct_pb2

from simtrack.v1 import (
    agents_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
)
from tests.support import Server
from tests.support.bad_input import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    World,
    create_agent,
    create_experiment,
    create_participant,
    create_run,
    create_simulation,
    create_template,
    entities,
    failure_of,
    make_world,
    rejects,
    update_agent,
    update_run,
    update_simulation,
)
from tests.support.protos import (
    SCENARIO,
    Agent,
    Experiment,
    Framework,
    Participant,
    Run,
    RunStatus,
    Simulation,
    SimulationStatus,
    Template,
    mask,
    struct,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
# Over gRPC and over HTTP (Connect in binary, gRPC over HTTP/2): the same statuses and fields.
pytestmark = [pytest.mark.in_process, pytest.mark.transports("grpc", "connect-proto", "grpc-http")]


@pytest.fixture
def world(server: Server) -> World:
    return make_world(server)


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
