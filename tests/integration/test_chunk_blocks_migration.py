"""The migration to block summaries (``a4c2e9d17b35``) on SQLite and PostgreSQL: compacted
chunks stored before it get their blocks and paged columns, bit for bit the same points; raw
chunks stay as they were; views over them equal brute force; a downgrade unpages the columns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from simtrack.codec import encode_chunk, is_paged, is_tagged
from simtrack.server.core.model import INT64_MAX, INT64_MIN
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db import migrate
from simtrack.server.db.blocks import block_summaries
from simtrack.server.db.chunks import unpack
from simtrack.server.db.engine import create_engine
from simtrack.server.db.unit_of_work import SqlUnitOfWorkFactory, tenant_aware_sessions
from simtrack.server.domain.series import merge
from simtrack.server.domain.views import Grid, read_view
from tests.integration.test_history_views import allowed_grid, as_rows, brute_view
from tests.integration.test_upgrade_with_data import METRIC, RUN, insert_rows
from tests.support import connect
from tests.support.compaction import ODD_VALUES

BEFORE = "3e8d1f6a9c54"
Array = np.ndarray[Any, Any]


def compacted_points(seq: int, n: int) -> tuple[Array, Array, Array]:
    """A compacted chunk's points: steps from 100 * seq on (strided for odd seqs), values with
    odd ones now and then, a timestamp per point (even seqs: one for all).
    """
    rng = np.random.default_rng(seq)
    steps = 100_000 * seq + np.arange(n) * (1 + seq % 2)
    values = np.round(rng.standard_normal(n), 2)
    values[::53] = ODD_VALUES[np.arange(len(values[::53])) % len(ODD_VALUES)]
    stamps = np.full(n, 1.7e9) if seq % 2 == 0 else 1.7e9 + np.arange(n) * 1e-3
    return steps.astype("<i8"), values, stamps


SIZES = {2: 16_384, 3: 5_000, 4: 700}  # seq: points (seq 1: insert_rows's raw chunk)


def chunk_rows(connection: Connection) -> dict[int, Any]:
    rows = connection.execute(
        text("SELECT seq, n, first_step, steps, vals, ts, blocks FROM metric_chunks"
             " WHERE metric_id = :m ORDER BY seq"),
        {"m": METRIC},
    )  # fmt: skip
    return {
        int(r[0]): tuple(bytes(x) if isinstance(x, memoryview) else x for x in r[1:]) for r in rows
    }


def test_compacted_chunks_get_blocks_and_paged_columns(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, BEFORE)
    with connect(url) as connection:
        insert_rows(connection)
        for seq, n in SIZES.items():
            steps, values, stamps = compacted_points(seq, n)
            columns = encode_chunk(steps, values, stamps)  # as compaction stored them then
            assert any(is_tagged(c) for c in columns) and not any(is_paged(c) for c in columns)
            finite = values[np.isfinite(values)]
            connection.execute(
                text("INSERT INTO metric_chunks (metric_id, seq, tenant_id, run_id, first_step,"
                     " last_step, n, vmin, vmax, steps, vals, ts) VALUES (:m, :s, :t, :r, :f,"
                     " :l, :n, :lo, :hi, :steps, :vals, :ts)"),
                {"m": METRIC, "s": seq, "t": DEFAULT_TENANT_ID, "r": RUN,
                 "f": int(steps[0]), "l": int(steps[-1]), "n": n, "lo": float(finite.min()),
                 "hi": float(finite.max()), "steps": columns[0], "vals": columns[1],
                 "ts": columns[2]},
            )  # fmt: skip
    with connect(url) as connection:
        before = chunk_rows_before(connection)

    migrate.upgrade(url)
    with connect(url) as connection:
        after = chunk_rows(connection)
    assert after[1] == (*before[1], None)  # the raw chunk: as it was, no blocks
    for seq, n in SIZES.items():
        _, first, steps_col, vals_col, ts_col, blocks = after[seq]
        old = unpack(n, first, *before[seq][2:5])
        new = unpack(n, first, steps_col, vals_col, ts_col)
        assert [a.tobytes() for a in new] == [a.tobytes() for a in old]
        assert is_paged(vals_col)
        assert blocks == block_summaries(*old)
        assert blocks[:1] == (b"S" if seq % 2 == 0 else b"F")

    asyncio.run(check_views(url))

    migrate.downgrade(url, BEFORE)
    with connect(url) as connection:
        down = chunk_rows_before(connection)
    for seq, n in SIZES.items():
        _, first, steps_col, vals_col, ts_col = down[seq]
        assert not any(is_paged(c) for c in (steps_col, vals_col, ts_col))
        restored = unpack(n, first, steps_col, vals_col, ts_col)
        assert [a.tobytes() for a in restored] == [
            a.tobytes() for a in unpack(n, first, *before[seq][2:5])
        ]


def chunk_rows_before(connection: Connection) -> dict[int, Any]:
    """`chunk_rows` at the revision below: no blocks column."""
    rows = connection.execute(
        text("SELECT seq, n, first_step, steps, vals, ts FROM metric_chunks WHERE metric_id = :m"),
        {"m": METRIC},
    )
    return {
        int(r[0]): tuple(bytes(x) if isinstance(x, memoryview) else x for x in r[1:]) for r in rows
    }


async def check_views(url: str) -> None:
    """Views over the migrated chunks equal brute force."""
    engine = create_engine(url)
    uow = SqlUnitOfWorkFactory(tenant_aware_sessions(engine))
    try:
        async with uow() as unit:
            await unit.read_snapshot()
            every = await unit.chunks.overlapping(METRIC, INT64_MIN, INT64_MAX, None, None)
            points = merge(every, INT64_MIN, INT64_MAX).points
            for lo, hi, max_points in ((INT64_MIN, INT64_MAX, 1000), (200_500, 410_000, 77)):
                view = await read_view(unit.chunks, METRIC, lo, hi, max_points)
                grid = allowed_grid(points, lo, hi, max_points, view.grid)
                expected, count = brute_view(points, lo, hi, max_points, grid)
                assert as_rows(view.points, range(len(view.points))) == expected
                assert view.range_count == count
            grid = Grid(0, 500_000, 300)
            view = await read_view(unit.chunks, METRIC, 0, 500_000, 600, grid)
            assert (
                as_rows(view.points, range(len(view.points)))
                == brute_view(points, 0, 500_000, 600, grid)[0]
            )
    finally:
        await engine.dispose()
