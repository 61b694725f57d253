"""The row-per-point limit: psycopg 3 binary COPY into an indexed table, one row per point.

The COPY payload (PostgreSQL's binary COPY format, big-endian) is built with numpy before the
clock starts, so what is timed is PostgreSQL taking the rows: parse, heap insert, btree insert
on (run_id, metric, step), WAL, and the durable COMMIT.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import psycopg

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
WRITE_SIZE = 1 << 20  # bytes per copy.write


@dataclass
class CopyFigures:
    rows: int
    seconds: float
    payload_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def copy_payload(run_id: str, metric: str, start: int, count: int) -> bytes:
    """Binary COPY tuples (run_id text, metric text, step int8, ts float8, value float8)."""
    run = run_id.encode()
    name = metric.encode()
    dtype = np.dtype(
        [
            ("fields", ">i2"),
            ("run_len", ">i4"),
            ("run", f"S{len(run)}"),
            ("metric_len", ">i4"),
            ("metric", f"S{len(name)}"),
            ("step_len", ">i4"),
            ("step", ">i8"),
            ("ts_len", ">i4"),
            ("ts", ">f8"),
            ("value_len", ">i4"),
            ("value", ">f8"),
        ]
    )
    rows = np.empty(count, dtype=dtype)
    rows["fields"] = 5
    rows["run_len"], rows["run"] = len(run), run
    rows["metric_len"], rows["metric"] = len(name), name
    rows["step_len"], rows["ts_len"], rows["value_len"] = 8, 8, 8
    rows["step"] = np.arange(start, start + count, dtype=np.int64)
    rows["ts"] = time.time()
    rows["value"] = np.random.default_rng(count).standard_normal(count)
    return rows.tobytes()


def copy_limit(url: str, points: int, runs: int = 4, metric: str = "loss") -> CopyFigures:
    """COPY ``points`` rows (split over ``runs`` run ids) in one transaction; time to COMMIT."""
    table = f"bench_points_{uuid.uuid4().hex[:8]}"
    per_run = points // runs
    body = b"".join(copy_payload(str(uuid.uuid4()), metric, 0, per_run) for _ in range(runs))
    payload = memoryview(HEADER + body + TRAILER)
    with psycopg.connect(url) as connection:
        connection.execute(
            f"CREATE TABLE {table} (run_id text NOT NULL, metric text NOT NULL,"
            " step int8 NOT NULL, ts float8 NOT NULL, value float8 NOT NULL)"
        )
        connection.execute(f"CREATE INDEX ON {table} (run_id, metric, step)")
        connection.commit()
        try:
            started = time.monotonic()
            with connection.cursor() as cursor:
                with cursor.copy(f"COPY {table} FROM STDIN WITH (FORMAT binary)") as copy:
                    for offset in range(0, len(payload), WRITE_SIZE):
                        copy.write(payload[offset : offset + WRITE_SIZE])
            connection.commit()
            seconds = time.monotonic() - started
            row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
            if row is None or row[0] != per_run * runs:
                raise RuntimeError(f"COPY stored {row} rows, expected {per_run * runs}")
        finally:
            connection.rollback()
            connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.commit()
    return CopyFigures(per_run * runs, seconds, len(payload) / 1e6)
