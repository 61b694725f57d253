"""Bad input end to end, on SQLite and PostgreSQL: the List methods' page sizes, filters and
page tokens (garbage, issued for another query, forged, or beyond their bounds).

Every case asserts the status code, the field the google.rpc.BadRequest names (or the
ResourceInfo of a NOT_FOUND), and that the database is unchanged (``bad_input.rejects``). The
``server`` fixture adds that no call answered UNKNOWN or INTERNAL and that the server logged no
traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest

from simtrack.v1 import (
    agents_pb2,
    runs_pb2,
    telemetry_pb2,
)
from tests.support import Server, StreamKit
from tests.support.bad_input import (
    INVALID_ARGUMENT,
    SHORT,
    World,
    listers,
    make_world,
    rejects,
)
from tests.support.protos import (
    Agent,
    Framework,
    Participant,
    Run,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process


@pytest.fixture
def world(server: Server) -> World:
    return make_world(server)


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
        'name = "x" OR',
        'name = "x" AND',
        'name ~ "x"',
        'name = "unterminated',
        "= x",
        '(name = "x"',
        'name IN ("x"',
        "NOT " * 17 + 'name = "x"',
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
