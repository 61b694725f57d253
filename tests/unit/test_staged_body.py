"""A staged message's body (``db/staged.py``) gives back each series bit for bit: its metric,
step range, count, summaries (None kept apart from 0), and packed columns, elided or not; a
reader asking for some metrics gets only theirs.
"""

from __future__ import annotations

import struct
import uuid

import numpy as np

from simtrack.server.db.staged import StagedSeries, pack_body, unpack_body, unpack_chunks
from simtrack.server.ingest.writer import metric_id
from tests.support.compaction import ODD_VALUES


def series(
    name: str, seq: int, steps: list[int], values: np.ndarray, **summaries: object
) -> StagedSeries:
    fields = {
        "vmin": None, "vmax": None, "vmin_step": None, "vmax_step": None, "vmin_ts": None,
        "vmax_ts": None,
    } | summaries  # fmt: skip
    packed_steps = (
        b""
        if steps == list(range(steps[0], steps[0] + len(steps)))
        else (np.array(steps, dtype="<i8").tobytes())
    )
    return StagedSeries(
        metric_id("run", name), seq, min(steps), max(steps), len(steps), **fields,  # type: ignore[arg-type]
        steps=packed_steps, vals=values.astype("<f8").tobytes(), ts=struct.pack("<d", 1.7e9),
    )  # fmt: skip


def test_a_body_gives_back_every_series_bit_for_bit() -> None:
    made = [
        series(
            "loss",
            7,
            [10, 11],
            np.array([0.5, -0.0]),
            vmin=-0.0,
            vmax=0.5,
            vmin_step=11,
            vmax_step=10,
            vmin_ts=1.7e9,
            vmax_ts=1.7e9,
        ),  # fmt: skip
        series("odd", 7, [3, 1, 3], ODD_VALUES[:3]),  # NaN payload, -0.0, inf: summaries None
        series(
            "zero",
            7,
            [-(2**63), 2**63 - 1],
            np.array([0.0, 0.0]),
            vmin=0.0,
            vmax=0.0,
            vmin_step=-(2**63),
            vmax_step=-(2**63),
            vmin_ts=0.0,
            vmax_ts=0.0,
        ),  # fmt: skip
    ]
    body = pack_body((s.metric_id, s) for s in made)
    back = list(unpack_body(7, body))
    assert back == made
    # None and 0 stay apart; the odd values' bits are kept.
    assert back[1].vmin is None and back[2].vmin == 0.0 and back[2].vmin_ts == 0.0
    assert back[1].vals == ODD_VALUES[:3].tobytes()
    assert isinstance(back[0].vmin_step, int) and back[1].steps != b""
    # The seq is the row's: the same body read as another message.
    assert {s.seq for s in unpack_body(8, body)} == {8}
    # Staging's read: the same chunk rows, by metric id, without the summaries.
    names: dict[bytes, str] = {}
    assert list(unpack_chunks(7, body, names)) == [(s.metric_id, s.stored()) for s in made]
    assert sorted(names.values()) == sorted(s.metric_id for s in made)


def test_a_reader_takes_only_the_metrics_it_asks_for() -> None:
    made = [series(f"m{i}", 3, [i, i + 1], np.array([i, -i], dtype="<f8")) for i in range(10)]
    body = pack_body((s.metric_id, s) for s in made)
    wanted = {metric_id("run", "m3"), metric_id("run", "m7")}
    assert list(unpack_body(3, body, wanted)) == [made[3], made[7]]
    assert list(unpack_body(3, body, {str(uuid.uuid4())})) == []
    assert list(unpack_body(3, b"")) == []
    # Any id: the writer's are UUIDs, but the body does not rely on it.
    odd = made[0]._replace(metric_id="m1")
    assert list(
        unpack_body(3, pack_body([(odd.metric_id, odd), (made[1].metric_id, made[1])]), {"m1"})
    ) == [odd]
