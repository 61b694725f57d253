"""GetLeaderboard and GetRunStats end to end, on SQLite and PostgreSQL (as the app role).

Runs are driven through StreamRun by a raw worker to a known metric and a final status; the
rankings and counts that come back are compared with what the test made.
"""

from __future__ import annotations

import math
from typing import Any, cast

import grpc
import pytest

from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2, telemetry_pb2
from tests.support import Refusal, Server, StartServer, StreamKit

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

Request = telemetry_pb2.StreamRunRequest
RunStatus = runs_pb2.RunStatus
COMPLETED = telemetry_pb2.RUN_OUTCOME_COMPLETED
FAILED = telemetry_pb2.RUN_OUTCOME_FAILED


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url)


def new_experiment(server: Server, name: str, scenario_id: str = "tier0-tutorial") -> str:
    agent = server.agents.CreateAgent(
        agents_pb2.CreateAgentRequest(
            agent=agents_pb2.Agent(name=f"agent-{name}", framework=agents_pb2.FRAMEWORK_CUSTOM)
        )
    ).agent
    return server.experiments.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(
            experiment=experiments_pb2.Experiment(
                name=name, agent_id=agent.id, scenario_id=scenario_id
            )
        )
    ).experiment.id


async def drive(
    server: Server,
    streams: StreamKit,
    experiment_id: str,
    profit: list[float] | None,
    outcome: int | None = COMPLETED,
) -> str:
    """A run of the experiment that logged ``profit`` (steps 0, 1, ...) and ended as told
    (None: left running).
    """
    run = server.runs.CreateRun(
        runs_pb2.CreateRunRequest(run=runs_pb2.Run(experiment_id=experiment_id))
    ).run
    stream = await streams.open(server, run.id)
    seq = 0
    if profit is not None:
        seq += 1
        series = telemetry_pb2.MetricSeries(
            name="profit", steps=list(range(len(profit))), values=profit
        )
        await stream.send(Request(seq=seq, metrics=telemetry_pb2.MetricBatch(series=[series])))
    if outcome is not None:
        seq += 1
        status = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RunOutcome.ValueType(outcome))
        await stream.send(Request(seq=seq, status=status))
    if seq:
        await stream.wait_acked(seq)
    if outcome is not None:
        await stream.finish()
    return run.id


def leaderboard(server: Server, **fields: Any) -> runs_pb2.GetLeaderboardResponse:
    request = runs_pb2.GetLeaderboardRequest(scenario_id="tier0-tutorial", metric="profit")
    for name, value in fields.items():
        setattr(request, name, value)
    return server.runs.GetLeaderboard(request)


def ranking(response: runs_pb2.GetLeaderboardResponse) -> list[tuple[int, str, float]]:
    return [(e.rank, e.run.id, e.value) for e in response.entries]


async def test_leaderboard_ranks_a_scenarios_runs_by_a_metric(
    server: Server, streams: StreamKit
) -> None:
    first = new_experiment(server, "first")
    second = new_experiment(server, "second")
    low = await drive(server, streams, first, [1.0, 10.0])  # latest 10, min 1, max 10
    tie_a = await drive(server, streams, first, [40.0, 30.0])  # latest 30, max 40
    tie_b = await drive(server, streams, second, [5.0, 30.0])  # latest 30, min 5
    failed = await drive(server, streams, second, [100.0], outcome=FAILED)
    running = await drive(server, streams, second, [50.0], outcome=None)
    await drive(server, streams, first, None)  # completed without the metric: not ranked
    elsewhere = new_experiment(server, "elsewhere", scenario_id="tier1-product-launch")
    await drive(server, streams, elsewhere, [1000.0])  # another scenario

    board = leaderboard(server)
    assert ranking(board) == [(1, tie_a, 30.0), (1, tie_b, 30.0), (3, low, 10.0)]
    assert board.ranked_runs == 3
    entry = board.entries[0]
    assert entry.run.status == RunStatus.RUN_STATUS_COMPLETED and entry.last_step == 1
    agent = server.experiments.GetExperiment(
        experiments_pb2.GetExperimentRequest(id=first)
    ).experiment.agent_id
    assert entry.agent_id == agent

    lowest = leaderboard(server, order=runs_pb2.RANK_ORDER_LOWEST_FIRST)
    assert [e.run.id for e in lowest.entries] == [low, tie_a, tie_b]
    by_min = leaderboard(
        server, aggregate=runs_pb2.METRIC_AGGREGATE_MIN, order=runs_pb2.RANK_ORDER_LOWEST_FIRST
    )
    assert ranking(by_min) == [(1, low, 1.0), (2, tie_b, 5.0), (3, tie_a, 30.0)]
    by_max = leaderboard(server, aggregate=runs_pb2.METRIC_AGGREGATE_MAX)
    assert ranking(by_max)[0] == (1, tie_a, 40.0)
    top = leaderboard(server, limit=1)
    assert [e.run.id for e in top.entries] == [tie_a] and top.ranked_runs == 3
    assert [e.run.id for e in leaderboard(server, experiment_id=second).entries] == [tie_b]
    everyone = leaderboard(server, include_unfinished=True)
    assert [e.run.id for e in everyone.entries][:2] == [failed, running]
    assert everyone.ranked_runs == 5
    assert leaderboard(server, metric="nobody-logs-this").entries == []

    from simtrack.client import Client

    with Client(server.address) as client:
        assert ranking(client.leaderboard("tier0-tutorial", "profit")) == ranking(board)
        assert ranking(
            client.leaderboard("tier0-tutorial", "profit", aggregate="min", lowest_first=True)
        ) == ranking(by_min)
        assert client.run_stats(f'experiment_id = "{first}"').total == 3


async def test_run_stats_count_statuses_success_and_durations(
    server: Server, streams: StreamKit
) -> None:
    experiment = new_experiment(server, "stats")
    other = new_experiment(server, "other")
    for outcome in (COMPLETED, COMPLETED, COMPLETED, FAILED):
        await drive(server, streams, experiment, [1.0], outcome=outcome)
    await drive(server, streams, experiment, [1.0], outcome=None)  # running
    server.runs.CreateRun(runs_pb2.CreateRunRequest(run=runs_pb2.Run(experiment_id=experiment)))
    await drive(server, streams, other, None, outcome=FAILED)

    def stats(filter: str = "") -> runs_pb2.GetRunStatsResponse:
        return server.runs.GetRunStats(runs_pb2.GetRunStatsRequest(filter=filter))

    mine = stats(f'experiment_id = "{experiment}"')
    counts = {RunStatus.Name(c.status): c.count for c in mine.by_status}
    assert list(counts) == [
        "RUN_STATUS_PENDING",
        "RUN_STATUS_STARTING",
        "RUN_STATUS_RUNNING",
        "RUN_STATUS_PAUSED",
        "RUN_STATUS_COMPLETED",
        "RUN_STATUS_FAILED",
        "RUN_STATUS_STOPPED",
    ]
    assert counts == {
        "RUN_STATUS_PENDING": 1,
        "RUN_STATUS_STARTING": 0,
        "RUN_STATUS_RUNNING": 1,
        "RUN_STATUS_PAUSED": 0,
        "RUN_STATUS_COMPLETED": 3,
        "RUN_STATUS_FAILED": 1,
        "RUN_STATUS_STOPPED": 0,
    }
    assert mine.total == 6 and mine.success_rate == pytest.approx(0.75)
    durations = mine.durations
    assert durations.count == 4
    values = [getattr(durations, name).ToTimedelta() for name in ("min", "p50", "p95", "max")]
    assert values == sorted(values) and values[0].total_seconds() >= 0
    assert values[0] <= durations.mean.ToTimedelta() <= values[-1]

    everything = stats()
    assert everything.total == 7 and everything.success_rate == pytest.approx(3 / 5)
    pending = stats('status = "pending"')
    assert pending.total == 1 and math.isnan(pending.success_rate)
    assert not pending.HasField("durations")


def test_bad_ranking_requests_name_the_field(server: Server, refusal: Refusal) -> None:
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    Board = runs_pb2.GetLeaderboardRequest

    def ok(**fields: Any) -> runs_pb2.GetLeaderboardRequest:
        return Board(scenario_id="tier0-tutorial", metric="profit", **fields)

    cases: list[tuple[Any, grpc.StatusCode, list[str]]] = [
        (Board(metric="profit"), invalid, ["scenario_id"]),
        (Board(scenario_id="no-such-scenario", metric="profit"), not_found, []),
        (Board(scenario_id="tier0-tutorial"), invalid, ["metric"]),
        (ok(limit=1001), invalid, ["limit"]),
        (ok(limit=-1), invalid, ["limit"]),
        (ok(order=cast(Any, 9)), invalid, ["order"]),
        (ok(aggregate=cast(Any, 9)), invalid, ["aggregate"]),
        (ok(experiment_id="not-a-uuid"), invalid, ["experiment_id"]),
        (ok(experiment_id="00000000-0000-4000-8000-000000000000"), not_found, []),
    ]
    for request, code, fields in cases:
        assert refusal(server.runs.GetLeaderboard, request) == (code, fields), request
    bad_stats = runs_pb2.GetRunStatsRequest(filter="progress = 5")
    assert refusal(server.runs.GetRunStats, bad_stats) == (invalid, ["filter"])
