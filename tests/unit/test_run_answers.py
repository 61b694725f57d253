"""RunAnswers (GetRun's answers kept while their run's version holds), with the database's two
statements played by a table in memory: a call with nothing kept reads the run whole, a call
with an answer kept asks the version, calls waiting together share one statement, and a run is
rendered again only when its version moved.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from simtrack.errors import Unavailable
from simtrack.server.db.run_answers import RunAnswers


class Table:
    """Runs by (tenant, id) -> (content, version); counts the statements asked of it."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[str, int]] = {}
        self.version_statements: list[list[str]] = []
        self.loads = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None  # set: statements wait for it

    def write(self, tenant: str, run_id: str, content: str) -> None:
        _, version = self.rows.get((tenant, run_id), ("", 0))
        self.rows[(tenant, run_id)] = (content, version + 1)

    async def versions(self, tenant: str, run_ids: list[str]) -> dict[str, int]:
        self.version_statements.append(run_ids)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {r: self.rows[(tenant, r)][1] for r in run_ids if (tenant, r) in self.rows}

    async def load(self, tenant: str, run_id: str) -> tuple[str, int] | None:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.rows.get((tenant, run_id))


class Renders:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, run: str) -> str:
        self.count += 1
        return f"answer({run})"


def answers_of(table: Table, **kwargs: Any) -> RunAnswers:
    return RunAnswers(table.versions, table.load, **kwargs)


async def kept(answers: RunAnswers, table: Table, render: Renders, *run_ids: str) -> None:
    """Each run's answer kept (read whole), the table's counts then started afresh."""
    for run_id in run_ids:
        assert await answers.get("t1", run_id, render) is not None
    table.version_statements, table.loads, render.count = [], 0, 0


async def test_an_unchanged_run_is_rendered_once_and_a_write_is_seen_by_the_next_call() -> None:
    table, render = Table(), Renders()
    table.write("t1", "r1", "v1")
    answers = answers_of(table)
    assert await answers.get("t1", "r1", render) == "answer(v1)"
    assert table.version_statements == []  # nothing kept: read whole, its version with it
    assert await answers.get("t1", "r1", render) == "answer(v1)"
    assert await answers.get("t1", "r1", render) == "answer(v1)"
    assert render.count == 1 and table.loads == 1
    assert table.version_statements == [["r1"], ["r1"]]  # an answer kept: each call asks
    table.write("t1", "r1", "v2")
    assert await answers.get("t1", "r1", render) == "answer(v2)"
    assert render.count == 2


async def test_a_missing_or_deleted_run_is_none_and_its_answer_dropped() -> None:
    table, render = Table(), Renders()
    answers = answers_of(table)
    assert await answers.get("t1", "nope", render) is None
    table.write("t1", "r1", "v1")
    assert await answers.get("t1", "r1", render) == "answer(v1)"
    del table.rows[("t1", "r1")]
    assert await answers.get("t1", "r1", render) is None
    assert render.count == 1


async def test_calls_waiting_together_share_one_statement() -> None:
    table, render = Table(), Renders()
    for i in range(20):
        table.write("t1", f"r{i}", f"v{i}")
    answers = answers_of(table)
    await kept(answers, table, render, *(f"r{i}" for i in range(20)))
    table.gate = asyncio.Event()
    first = asyncio.create_task(answers.get("t1", "r0", render))
    await asyncio.sleep(0)  # its statement is in flight
    rest = [asyncio.create_task(answers.get("t1", f"r{i % 20}", render)) for i in range(1, 60)]
    await asyncio.sleep(0)
    table.gate.set()
    got = await asyncio.gather(first, *rest)
    assert got == ["answer(v0)"] + [f"answer(v{i % 20})" for i in range(1, 60)]
    # the first alone, then all that came while it ran, each run asked once
    assert table.version_statements[0] == ["r0"]
    assert sorted(table.version_statements[1]) == sorted(f"r{i}" for i in range(20))
    assert len(table.version_statements) == 2


async def test_statements_are_per_tenant_and_a_tenant_sees_only_its_runs() -> None:
    table, render = Table(), Renders()
    table.write("t1", "r1", "mine")
    answers = answers_of(table)
    assert await answers.get("t2", "r1", render) is None
    assert await answers.get("t1", "r1", render) == "answer(mine)"
    assert await answers.get("t2", "r1", render) is None  # not the t1 answer kept


@pytest.mark.parametrize("cancelled", [0, 1], ids=["the call asking", "a call waiting"])
async def test_a_cancelled_call_leaves_the_others_their_answer(cancelled: int) -> None:
    table, render = Table(), Renders()
    table.write("t1", "r1", "v1")
    answers = answers_of(table)
    await kept(answers, table, render, "r1")
    table.gate = asyncio.Event()
    calls = [asyncio.create_task(answers.get("t1", "r1", render)) for _ in range(3)]
    await asyncio.sleep(0)  # the first asks, the others wait for the next statement
    calls[cancelled].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[cancelled]
    table.gate.set()
    others = [call for i, call in enumerate(calls) if i != cancelled]
    assert [await call for call in others] == ["answer(v1)"] * 2
    assert table.version_statements == [["r1"], ["r1"]]
    assert await answers.get("t1", "r1", render) == "answer(v1)"  # nothing left asking


async def test_a_failed_statement_fails_each_of_its_calls_and_the_next_call_asks_again() -> None:
    table, render = Table(), Renders()
    table.write("t1", "r1", "v1")
    answers = answers_of(table)
    await kept(answers, table, render, "r1")
    table.fail = Unavailable("the database is down")
    table.gate = asyncio.Event()
    calls = [asyncio.create_task(answers.get("t1", "r1", render)) for _ in range(3)]
    await asyncio.sleep(0)
    table.gate.set()
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, Unavailable)
    table.fail, table.gate = None, None
    assert await answers.get("t1", "r1", render) == "answer(v1)"


async def test_another_render_the_age_limit_and_the_capacity_each_render_again() -> None:
    table, render, other = Table(), Renders(), Renders()
    for i in range(3):
        table.write("t1", f"r{i}", f"v{i}")
    clock = [1000.0]
    answers = answers_of(table, capacity=2, max_age_s=60, clock=lambda: clock[0])
    await answers.get("t1", "r0", render)
    await answers.get("t1", "r0", other)  # another rendering of the same run
    assert (render.count, other.count) == (1, 1)
    clock[0] += 61
    await answers.get("t1", "r0", other)
    assert other.count == 2
    await answers.get("t1", "r1", render)
    await answers.get("t1", "r2", render)  # the third: r0's answer goes
    count = render.count
    await answers.get("t1", "r2", render)
    await answers.get("t1", "r0", render)
    assert render.count == count + 1
