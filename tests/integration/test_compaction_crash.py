"""A server killed (SIGKILL) while its compaction loop works through a backlog loses and
doubles nothing; a compactor started afterwards finishes the work. Both databases.

The server is the real ``simtrack serve`` in a subprocess with compaction every 20 ms and no
settle time and small batches of metrics per transaction; the backlog is written first by the
ingest writer (many metrics of small chunks), and the test kills the server once some metrics,
not all, are compacted.
"""

from __future__ import annotations

from pathlib import Path

from simtrack.server.db.engine import create_engine
from tests.support import Services, running_writer, server_url
from tests.support.compaction import (
    compactor,
    expected_series,
    kill_compacting_server_when,
    send,
    stored_points,
)

METRICS = [f"m{i:03}" for i in range(100)]  # the most one batch may hold
BATCHES = 300
BATCH = 8  # metrics per compaction transaction: several batches, the kill between or in one


async def compacted_metrics(services: Services, run_id: str) -> tuple[int, int]:
    """(metrics down to one chunk, chunks of the run)."""
    rows = await services.fetch(
        "SELECT metric_id, count(*) FROM metric_chunks WHERE run_id = :run GROUP BY metric_id",
        run=run_id,
    )
    counts = [int(tuple(r)[1]) for r in rows]
    return sum(1 for c in counts if c == 1), sum(counts)


async def test_a_server_killed_mid_compaction_loses_and_doubles_nothing(
    services: Services, tmp_path: Path
) -> None:
    run = await services.run((await services.experiment()).id)
    async with running_writer(services) as writer:
        await send(writer, run.id, range(1, BATCHES + 1), METRICS)
    expected = expected_series(range(1, BATCHES + 1), METRICS)

    async def midway() -> bool:
        return (await compacted_metrics(services, run.id))[0] >= 3

    # The backlog is idle at once (its writer is gone): compaction's scan finds it due.
    await kill_compacting_server_when(
        services, tmp_path, midway, compaction_batch_metrics=str(BATCH), compaction_idle="0"
    )
    done, chunks = await compacted_metrics(services, run.id)
    assert 3 <= done < len(METRICS), "killed before or after the work, not during it"
    # Every metric is whole: compacted into one chunk, or its BATCHES chunks untouched (a
    # batch killed before its commit left each of its metrics untouched).
    assert chunks == done + (len(METRICS) - done) * BATCHES
    for name in METRICS:
        assert await stored_points(services, run.id, name) == expected[name], name

    engine = create_engine(server_url(services))
    try:
        report = await compactor(engine).run_round()
    finally:
        await engine.dispose()
    # The rest, each once; the killed server's work stands as it was committed.
    assert len(report.compacted) == len(METRICS) - done
    assert sum(c.chunks_in for c in report.compacted) == (len(METRICS) - done) * BATCHES
    assert await compacted_metrics(services, run.id) == (len(METRICS), len(METRICS))
    for name in METRICS:
        assert await stored_points(services, run.id, name) == expected[name], name
