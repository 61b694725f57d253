"""Validations end to end, on SQLite and PostgreSQL (as the app role).

The scenario tier0-tutorial has three success criteria (total_profit >= 1500,
stockout_rate <= 0.05, customer_rating >= 4.0, each on the latest value). Runs complete through
their worker's final status, through UpdateRun, or are made to look unchecked as after a crash;
each must end with exactly one verdict per criterion.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import sqlalchemy
from google.protobuf import field_mask_pb2, json_format

from simtrack.server.domain.validations import CHECKS_PER_TRANSACTION
from simtrack.v1 import runs_pb2, telemetry_pb2, validations_pb2
from tests.support import Refusal, Server, StartServer, StreamKit
from tests.support.waiting import wait_until

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

Request = telemetry_pb2.StreamRunRequest
RunStatus = runs_pb2.RunStatus
CRITERIA = ["customer_rating", "stockout_rate", "total_profit"]


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    # Short liveness settings make the sweeper (which also catches unchecked runs) run often.
    return start_server(served_url, SIMTRACK_HEARTBEAT_TIMEOUT="2", SIMTRACK_CANCEL_GRACE="2")


def validations(server: Server, run_id: str, filter: str = "") -> list[validations_pb2.Validation]:
    request = validations_pb2.ListValidationsRequest(run_id=run_id, filter=filter)
    return list(server.validations.ListValidations(request).validations)


async def wait_validations(
    server: Server, run_id: str, count: int
) -> list[validations_pb2.Validation]:
    await wait_until(
        lambda: len(validations(server, run_id)) >= count, what=f"{count} validations of {run_id}"
    )
    return validations(server, run_id)


def forget_judgement(database_url: str, run_id: str) -> None:
    """Make a completed run look as if the server died between its completion and its check."""
    engine = sqlalchemy.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://"),
        poolclass=sqlalchemy.NullPool,
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text("DELETE FROM validations WHERE run_id = :run"), {"run": run_id}
            )
            connection.execute(
                sqlalchemy.text("UPDATE runs SET criteria_checked_at = NULL WHERE id = :run"),
                {"run": run_id},
            )
    finally:
        engine.dispose()


async def a_sweep_has_passed(server: Server, streams: StreamKit, database_url: str) -> None:
    """Return once the sweeper has run since the call: it judged a run left unchecked for it
    (the sweep that judges it sees everything settled before, so whatever it would do to
    those runs is done by then).
    """
    control = streams.new_run(server)
    await complete_with_metrics(server, streams, control.id)
    await wait_validations(server, control.id, 3)
    forget_judgement(database_url, control.id)
    await wait_validations(server, control.id, 3)


def by_kind(found: list[validations_pb2.Validation]) -> dict[str, validations_pb2.Validation]:
    return {v.kind: v for v in found}


async def complete_with_metrics(server: Server, streams: StreamKit, run_id: str) -> None:
    stream = await streams.open(server, run_id)
    series = [
        telemetry_pb2.MetricSeries(name="total_profit", steps=[0, 59], values=[100.0, 2000.0]),
        telemetry_pb2.MetricSeries(name="stockout_rate", steps=[59], values=[0.1]),
    ]
    await stream.send(Request(seq=1, metrics=telemetry_pb2.MetricBatch(series=series)))
    done = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_COMPLETED)
    await stream.send(Request(seq=2, status=done))
    await stream.wait_acked(2)
    await stream.finish()


async def test_a_completed_run_is_judged_once_on_its_scenarios_criteria(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    await complete_with_metrics(server, streams, run.id)
    found = await wait_validations(server, run.id, 3)
    verdicts = by_kind(found)
    assert sorted(verdicts) == CRITERIA
    profit = verdicts["total_profit"]
    assert (profit.validator, profit.passed, profit.score) == ("scenario", True, 2000.0)
    assert json_format.MessageToDict(profit.details) == {
        "metric": "total_profit",
        "op": ">=",
        "value": 1500.0,
        "stat": "last",
        "description": "Cumulative net profit in USD after all fees.",
        "scenario_hash_matches": True,
    }
    assert (verdicts["stockout_rate"].passed, verdicts["stockout_rate"].score) == (False, 0.1)
    rating = verdicts["customer_rating"]
    assert not rating.passed and not rating.HasField("score")
    assert "no finite value" in rating.details.fields["reason"].string_value
    assert [v.kind for v in validations(server, run.id, 'passed = "true"')] == ["total_profit"]

    # The worker resends its final status after a reconnect: nothing is judged twice, also
    # not by the sweeper.
    stream = await streams.open(server, run.id)
    done = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_COMPLETED)
    await stream.send(Request(seq=2, status=done))
    await stream.wait_acked(2)
    await stream.finish()
    await a_sweep_has_passed(server, streams, database_url)
    assert sorted(v.id for v in validations(server, run.id)) == sorted(v.id for v in found)


async def test_update_run_to_completed_judges_in_the_same_call(
    server: Server, streams: StreamKit
) -> None:
    run = streams.new_run(server)
    for status in (RunStatus.RUN_STATUS_STARTING, RunStatus.RUN_STATUS_RUNNING):
        server.runs.UpdateRun(
            runs_pb2.UpdateRunRequest(
                run=runs_pb2.Run(id=run.id, status=status),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            )
        )
    assert validations(server, run.id) == []
    server.runs.UpdateRun(
        runs_pb2.UpdateRunRequest(
            run=runs_pb2.Run(id=run.id, status=RunStatus.RUN_STATUS_COMPLETED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        )
    )
    verdicts = by_kind(validations(server, run.id))  # no waiting: written with the status
    assert sorted(verdicts) == CRITERIA and not any(v.passed for v in verdicts.values())


async def test_failed_runs_are_not_judged(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    run = streams.new_run(server)
    stream = await streams.open(server, run.id)
    failed = telemetry_pb2.FinalStatus(outcome=telemetry_pb2.RUN_OUTCOME_FAILED)
    await stream.send(Request(seq=1, status=failed))
    await stream.wait_acked(1)
    await stream.finish()
    await a_sweep_has_passed(server, streams, database_url)
    assert validations(server, run.id) == []


async def test_the_sweeper_judges_runs_a_crash_left_unchecked(
    server: Server, streams: StreamKit, database_url: str
) -> None:
    # More than one transaction's worth (CHECKS_PER_TRANSACTION runs each).
    runs = [streams.new_run(server) for _ in range(CHECKS_PER_TRANSACTION + 4)]
    await asyncio.gather(*(complete_with_metrics(server, streams, run.id) for run in runs))
    for run in runs:
        await wait_validations(server, run.id, 3)
    for run in runs:  # at once, so one sweep finds them all
        forget_judgement(database_url, run.id)
    found = {run.id: await wait_validations(server, run.id, 3) for run in runs}
    await a_sweep_has_passed(server, streams, database_url)  # and judges them no second time
    for run in runs:
        assert len(validations(server, run.id)) == len(found[run.id]) == 3
        assert by_kind(found[run.id])["total_profit"].passed


def test_external_validators_record_their_own_verdicts(
    server: Server, streams: StreamKit, refusal: Refusal
) -> None:
    from simtrack.client import Client

    run = streams.new_run(server)
    with Client(server.address) as client:
        made = client.create_validation(
            run.id, "judge-llm", "negotiation_quality", False, score=0.25, details={"notes": "x"}
        )
        assert (made.validator, made.kind, made.passed, made.score) == (
            "judge-llm",
            "negotiation_quality",
            False,
            0.25,
        )
        assert made.HasField("create_time")
        read = server.validations.GetValidation(
            validations_pb2.GetValidationRequest(id=made.id)
        ).validation
        assert read == made
        unscored = client.create_validation(run.id, "judge-llm", "tone", True)
        assert not unscored.HasField("score")
        assert [v.kind for v in client.list_validations(run.id, 'validator = "judge-llm"')] == [
            "negotiation_quality",
            "tone",
        ]
        assert [v.kind for v in client.list_validations(run.id, 'passed = "false"')] == [
            "negotiation_quality"
        ]

    V = validations_pb2.Validation
    create = server.validations.CreateValidation

    def request(**fields: Any) -> validations_pb2.CreateValidationRequest:
        base: dict[str, Any] = {"run_id": run.id, "validator": "judge", "kind": "k"}
        return validations_pb2.CreateValidationRequest(validation=V(**{**base, **fields}))

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (request(validator="scenario"), invalid, ["validation.validator"]),
        (request(validator=""), invalid, ["validation.validator"]),
        (request(kind=""), invalid, ["validation.kind"]),
        (request(kind="x" * 201), invalid, ["validation.kind"]),
        (request(score=float("nan")), invalid, ["validation.score"]),
        (request(run_id="nope"), invalid, ["validation.run_id"]),
        (
            request(run_id="00000000-0000-4000-8000-000000000000"),
            grpc.StatusCode.NOT_FOUND,
            [],
        ),
        (
            request(validator="judge-llm", kind="tone"),
            grpc.StatusCode.ALREADY_EXISTS,
            [],
        ),
    ]
    for bad, code, fields in cases:
        assert refusal(create, bad) == (code, fields), bad
    list_bad = validations_pb2.ListValidationsRequest(run_id=run.id, filter='passed = "maybe"')
    assert refusal(server.validations.ListValidations, list_bad) == (invalid, ["filter"])
    assert len(validations(server, run.id)) == 2, "nothing stored by the refused calls"
