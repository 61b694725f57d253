"""Bad input end to end, on SQLite and PostgreSQL, at the wire's edge: requests that are not
protobuf at all (sent as raw bytes: no stub can make them), and values too long to quote back
in full (the status must still fit its metadata).

Every case asserts the status code, the field the google.rpc.BadRequest names (or the
ResourceInfo of a NOT_FOUND), and that the database is unchanged (``bad_input.rejects``). The
``server`` fixture adds that no call answered UNKNOWN or INTERNAL and that the server logged no
traceback.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    runs_pb2,
    scenarios_pb2,
)
from tests.support import Server
from tests.support.bad_input import (
    BOUNDED,
    GARBAGE,
    INVALID_ARGUMENT,
    NOT_FOUND,
    SHORT,
    UploadRequest,
    World,
    create_agent,
    create_agent_bytes,
    create_experiment,
    length_delimited,
    listers,
    make_world,
    nested_struct,
    raw_unary,
    raw_unary_stream,
    refused_shortly,
    rejects,
    update_agent,
)
from tests.support.protos import (
    Agent,
    Experiment,
    Framework,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process


@pytest.fixture
def world(server: Server) -> World:
    return make_world(server)


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
