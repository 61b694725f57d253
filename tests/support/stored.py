"""What the server stored, read straight from its database: metrics with their chunks decoded,
events, the committed watermark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy

from simtrack.server.db.chunks import unpack
from tests.support.data import Checksum


@dataclass
class StoredMetric:
    """A metric as the database holds it: its chunks decoded, and its summary row."""

    name: str
    seqs: list[int]
    steps: np.ndarray[Any, Any]
    values: np.ndarray[Any, Any]
    timestamps: np.ndarray[Any, Any]
    raw_values: bytes  # the stored values' bytes, concatenated in seq order
    count: int
    min_value: float | None
    max_value: float | None
    last_step: int | None
    last_value: float | None

    def checksum(self) -> Checksum:
        return Checksum.of(self.steps, self.values)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    position: int
    step: int
    type: str
    agent_id: str | None
    payload: dict[str, Any]


class TelemetryDatabase:
    """Reads what the server stored straight from its database (PostgreSQL as the superuser
    that owns the test database, so row-level security hides nothing; SQLite from the file).
    """

    def __init__(self, url: str) -> None:
        parsed = sqlalchemy.make_url(url)
        if parsed.get_backend_name() == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.NullPool)

    def rows(self, query: str, **params: Any) -> list[sqlalchemy.Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(query), params))

    def metrics(self, run_id: str) -> dict[str, StoredMetric]:
        """Every metric of the run with its chunks decoded (each chunk's sizes checked)."""
        summaries = self.rows(
            "select id, name, count as point_count, min_value, max_value, last_step, last_value "
            "from metrics where run_id = :run",
            run=run_id,
        )
        chunks = self.rows(
            "select metric_id, seq, run_id, n, first_step, last_step, steps, vals, ts "
            "from metric_chunks where run_id = :run order by metric_id, seq",
            run=run_id,
        )
        stored = {}
        for summary in summaries:
            name = summary.name
            mine = [c for c in chunks if c.metric_id == summary.id]
            steps, values, stamps = [], [], []
            for chunk in mine:
                columns = (bytes(chunk.steps), bytes(chunk.vals), bytes(chunk.ts))
                chunk_steps, chunk_values, chunk_times = unpack(chunk.n, chunk.first_step, *columns)
                steps.append(chunk_steps)
                values.append(chunk_values)
                stamps.append(chunk_times)
                assert (chunk.first_step, chunk.last_step) == (
                    int(steps[-1].min()),
                    int(steps[-1].max()),
                ), f"chunk {chunk.seq} of {name}: wrong step range"
            stored[name] = StoredMetric(
                name=name,
                seqs=[c.seq for c in mine],
                steps=np.concatenate(steps) if steps else np.zeros(0, dtype="<i8"),
                values=np.concatenate(values) if values else np.zeros(0, dtype="<f8"),
                timestamps=np.concatenate(stamps) if stamps else np.zeros(0, dtype="<f8"),
                # Decoded (a compacted chunk's column is compressed), bit for bit.
                raw_values=b"".join(v.tobytes() for v in values),
                count=summary.point_count,
                min_value=summary.min_value,
                max_value=summary.max_value,
                last_step=summary.last_step,
                last_value=summary.last_value,
            )
        assert sum(len(m.seqs) for m in stored.values()) == len(chunks), "orphan chunks"
        return stored

    def checksums(self, run_id: str) -> dict[str, Checksum]:
        """Per metric: the checksum of its stored points; its summary count must agree."""
        result = {}
        for name, metric in self.metrics(run_id).items():
            assert metric.count == len(metric.steps), (
                f"{name}: the summary counts {metric.count} points, the chunks hold "
                f"{len(metric.steps)}"
            )
            result[name] = metric.checksum()
        return result

    def committed_seq(self, run_id: str) -> int:
        return int(self.rows("select committed_seq from runs where id = :run", run=run_id)[0][0])

    def events(self, run_id: str) -> list[StoredEvent]:
        rows = self.rows(
            "select seq, position, step, type, agent_id, payload from events "
            "where run_id = :run order by seq, position",
            run=run_id,
        )
        return [
            StoredEvent(
                r.seq,
                r.position,
                r.step,
                r.type,
                r.agent_id,
                json.loads(r.payload) if isinstance(r.payload, str) else r.payload,
            )
            for r in rows
        ]

    def dispose(self) -> None:
        self.engine.dispose()
