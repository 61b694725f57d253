"""What the ingest writer stores is exactly what was sent, on both databases.

The writer hands PostgreSQL each statement's rows as one JSON document and SQLite its rows one
by one; either way names that JSON must escape, the extremes of int64 and float64, non-finite
values, run endings (durations, error details, results) and event payloads come back intact.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

from google.protobuf import struct_pb2

from simtrack.server.api.telemetry import decode
from simtrack.server.core.tenancy import LOCAL_PRINCIPAL
from simtrack.server.ingest.items import Batch
from simtrack.server.ingest.writer import GroupCommitWriter, metric_id
from simtrack.v1 import telemetry_pb2 as tpb
from tests.support import CommitLog, Services

ODD_NAME = 'we"ird\\name\ttab ünï 🚀 \u2028 \'quoted\' {"json": [1]}'
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
STAMP = 1_767_225_600.123456


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


async def _store(writer: GroupCommitWriter, run_id: str, *messages: tpb.StreamRunRequest) -> None:
    for message in messages:
        batch: Batch = decode(message)
        assert await writer.submit(LOCAL_PRINCIPAL, run_id, batch) == message.seq


async def _row(services: Services, query: str, id_: str) -> Any:
    rows = await services.fetch(query, id=id_)
    assert len(rows) == 1, rows
    return rows[0]


async def _running_run(services: Services) -> str:
    run = await services.run((await services.experiment()).id)
    await services.execute(
        "UPDATE runs SET status = 'running', started_at = :now WHERE id = :id", id=run.id
    )
    return run.id


async def test_odd_names_and_extreme_numbers_are_stored_bit_for_bit(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    run_id = await _running_run(services)
    series = [
        tpb.MetricSeries(
            name=ODD_NAME,
            unit='m/s² "x"',
            steps=[INT64_MAX, INT64_MIN],
            values=[5e-324, 1.7976931348623157e308],
            timestamps=[STAMP, STAMP + 0.5],
        ),
        tpb.MetricSeries(
            name="specials",
            steps=[0, 1, 2, 3, 4],
            values=[-0.0, math.nan, math.inf, -math.inf, -1e-300],
            timestamps=[STAMP] * 5,
        ),
        tpb.MetricSeries(name="nothing finite", steps=[7], values=[math.nan], timestamps=[STAMP]),
    ]
    message = tpb.StreamRunRequest(seq=1, metrics=tpb.MetricBatch(series=series))
    expected = {chunk.name: chunk for chunk in decode(message).metrics}
    await _store(writer[0], run_id, message)

    for name, sent in expected.items():
        chunk = await _row(
            services,
            "SELECT first_step, last_step, n, vmin, vmax, vmin_step, vmax_step, steps, vals, ts"
            " FROM metric_chunks WHERE metric_id = :id",
            metric_id(run_id, name),
        )
        assert tuple(chunk[:7]) == (
            sent.first_step, sent.last_step, sent.n, sent.vmin, sent.vmax, sent.vmin_step,
            sent.vmax_step,
        ), name  # fmt: skip
        assert (bytes(chunk[7]), bytes(chunk[8]), bytes(chunk[9])) == (
            sent.steps,
            sent.vals,
            sent.ts,
        ), name
        summary = await _row(
            services,
            "SELECT name, unit, count, min_value, max_value, last_step, last_value"
            " FROM metrics WHERE id = :id",
            metric_id(run_id, name),
        )
        assert tuple(summary) == (
            name, sent.unit, sent.n, sent.vmin, sent.vmax, sent.last_value_step, sent.last_value,
        )  # fmt: skip
    specials = expected["specials"]
    # -0.0 and -1e-300 are the finite values: the summaries skip NaN and the infinities.
    assert (specials.vmin, specials.vmax, specials.vmin_step) == (-1e-300, -0.0, 4)
    assert specials.vmax is not None and math.copysign(1, specials.vmax) == -1
    assert expected["nothing finite"].vmin is None


async def test_a_run_ending_and_its_events_are_stored_as_sent(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    run_id = await _running_run(services)
    payload = {"text": ODD_NAME, "nested": {"list": [1, 2.5, None, True, {"deep": "ünï"}]}}
    events = tpb.EventBatch(
        events=[tpb.Event(step=INT64_MAX, type=ODD_NAME[:90], payload=_struct(payload))]
    )
    details = {"trace": ["a", 'b"c'], "code": 7}
    results = {"profit": 1.5, "label": ODD_NAME}
    final = tpb.FinalStatus(
        outcome=tpb.RUN_OUTCOME_FAILED,
        error_message=ODD_NAME,
        error_details=_struct(details),
        results=_struct(results),
    )
    await _store(
        writer[0],
        run_id,
        tpb.StreamRunRequest(seq=1, events=events),
        tpb.StreamRunRequest(seq=2, status=final),
    )

    event = await _row(
        services, "SELECT step, type, payload FROM events WHERE run_id = :id", run_id
    )
    assert (event[0], event[1]) == (INT64_MAX, ODD_NAME[:90])
    stored_payload = event[2] if isinstance(event[2], dict) else json.loads(event[2])
    assert stored_payload == payload
    run = await services.runs.get(run_id)
    assert (run.status.value, run.error_message, run.committed_seq) == ("failed", ODD_NAME, 2)
    assert run.error_details == details and run.results == results
    assert run.completed_at is not None and run.started_at is not None
    assert run.duration == run.completed_at - run.started_at
    assert run.duration >= timedelta(0)


async def test_deleting_a_run_deletes_its_chunks_through_its_metrics(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    """Chunks have no foreign key to their run (it would double a fleet's insert cost): the
    cascade goes runs -> metrics -> metric_chunks, and leaves other runs' chunks alone.
    """
    run_id, other = await _running_run(services), await _running_run(services)
    series = [tpb.MetricSeries(name=f"m{i}", steps=[0, 1], values=[1.0, 2.0]) for i in range(3)]
    message = tpb.StreamRunRequest(seq=1, metrics=tpb.MetricBatch(series=series))
    await _store(writer[0], run_id, message)
    await _store(writer[0], other, message)
    count = "SELECT count(*) FROM metric_chunks WHERE run_id = :id"
    assert await services.scalar(count, id=run_id) == 3

    await services.runs.delete(run_id)

    assert await services.scalar(count, id=run_id) == 0
    assert await services.scalar("SELECT count(*) FROM metrics WHERE run_id = :id", id=run_id) == 0
    assert await services.scalar(count, id=other) == 3


async def test_an_ended_runs_summaries_are_copied_for_ordered_lists_late_writes_too(
    services: Services, writer: tuple[GroupCommitWriter, CommitLog]
) -> None:
    """The copies ListRuns orders ended runs by (``final_*``) equal the summaries once the
    run ends, none while it runs, and follow a late write to the ended run.
    """
    run_id = await _running_run(services)
    query = (
        "SELECT last_value, min_value, max_value, final_last, final_min, final_max"
        " FROM metrics WHERE run_id = :id"
    )

    def points(seq: int, steps: list[int], values: list[float]) -> tpb.StreamRunRequest:
        series = tpb.MetricSeries(name="profit", steps=steps, values=values)
        return tpb.StreamRunRequest(seq=seq, metrics=tpb.MetricBatch(series=[series]))

    await _store(writer[0], run_id, points(1, [1, 2], [5.0, 7.0]))
    assert tuple(await _row(services, query, run_id)) == (7.0, 5.0, 7.0, None, None, None)
    final = tpb.FinalStatus(outcome=tpb.RUN_OUTCOME_COMPLETED)
    await _store(writer[0], run_id, tpb.StreamRunRequest(seq=2, status=final))
    assert tuple(await _row(services, query, run_id)) == (7.0, 5.0, 7.0) * 2
    await _store(writer[0], run_id, points(3, [3], [9.0]))  # late, after the end
    assert tuple(await _row(services, query, run_id)) == (9.0, 5.0, 9.0) * 2
