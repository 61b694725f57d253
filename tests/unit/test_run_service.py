"""The run service's rules on fakes: numbering, inherited params, derived experiment status,
and pausing (a run's state that its worker is told of now and on every reconnect).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from simtrack.errors import FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.commands import CommandMessage
from simtrack.server.core.model import ExperimentStatus, RunStatus
from simtrack.server.db.models import Experiment, Metric, Run, Validation
from simtrack.server.domain.live_runs import LiveRuns
from simtrack.server.domain.runs import RunService
from simtrack.server.scenario_catalogue import ScenarioCatalogue, load_catalogue
from tests.unit.fakes import Unfaked

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@dataclass
class FakeRuns(Unfaked):
    rows: dict[str, Run] = field(default_factory=dict)

    async def get(self, id: str, *, for_update: bool = False) -> Run | None:
        return self.rows.get(id)

    async def add(self, run: Run) -> Run:
        run.id = run.id or f"00000000-0000-0000-0000-{len(self.rows) + 1:012d}"
        self.rows[run.id] = run
        return run

    async def delete(self, run: Run) -> None:
        del self.rows[run.id]

    async def flush(self) -> None:
        pass


@dataclass
class FakeExperiments(Unfaked):
    runs: FakeRuns
    rows: dict[str, Experiment] = field(default_factory=dict)

    async def get(self, id: str, *, for_update: bool = False) -> Experiment | None:
        return self.rows.get(id)

    async def next_run_number(self, experiment_id: str) -> int:
        experiment = self.rows[experiment_id]
        experiment.last_run_number += 1
        return experiment.last_run_number

    async def run_statuses(self, experiment_id: str) -> list[RunStatus]:
        return [r.status for r in self.runs.rows.values() if r.experiment_id == experiment_id]

    async def flush(self) -> None:
        pass


@dataclass
class FakeMetrics(Unfaked):
    rows: list[Metric] = field(default_factory=list)

    finalized: list[str] = field(default_factory=list)

    async def for_run(self, run_id: str) -> list[Metric]:
        return [m for m in self.rows if m.run_id == run_id]

    async def finalize(self, run_ids: Sequence[str]) -> None:
        self.finalized += run_ids


@dataclass
class FakeValidations(Unfaked):
    rows: list[Validation] = field(default_factory=list)

    async def add(self, validation: Validation) -> Validation:
        self.rows.append(validation)
        return validation


class FakeUnitOfWork(Unfaked):
    def __init__(self) -> None:
        self.runs = FakeRuns()
        self.experiments = FakeExperiments(self.runs)
        self.metrics = FakeMetrics()
        self.validations = FakeValidations()
        self.commits = 0

    async def __aenter__(self) -> FakeUnitOfWork:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    async def commit(self) -> None:
        self.commits += 1


EXPERIMENT_ID = "11111111-1111-1111-1111-111111111111"


@pytest.fixture
def catalogue() -> ScenarioCatalogue:
    return load_catalogue(SCENARIOS)


@pytest.fixture
def uow() -> FakeUnitOfWork:
    fake = FakeUnitOfWork()
    fake.experiments.rows[EXPERIMENT_ID] = Experiment(
        id=EXPERIMENT_ID,
        scenario_id="tier0-tutorial",
        params={"seed": 1, "market": {"demand": 10, "noise": 0.1}},
        status=ExperimentStatus.DRAFT,
        last_run_number=0,
    )
    return fake


@pytest.fixture
def service(uow: FakeUnitOfWork, catalogue: ScenarioCatalogue) -> RunService:
    return RunService(lambda: uow, catalogue)


async def create(service: RunService, **overrides: Any) -> Run:
    args: dict[str, Any] = dict(
        experiment_id=EXPERIMENT_ID, status=None, params={}, total_ticks=0, worker_id=""
    )
    args.update(overrides)
    return await service.create(**args)


async def test_runs_are_numbered_per_experiment_and_numbers_are_not_reused(
    service: RunService,
) -> None:
    numbers = [(await create(service)).run_number for _ in range(3)]
    assert numbers == [1, 2, 3]
    await service.delete((await create(service)).id)  # number 4 is gone...
    assert (await create(service)).run_number == 5  # ...and not handed out again


async def test_new_run_inherits_params_scenario_and_duration(
    service: RunService, catalogue: ScenarioCatalogue
) -> None:
    run = await create(service, params={"market": {"demand": 20}, "extra": True})
    assert run.params == {"seed": 1, "market": {"demand": 20, "noise": 0.1}, "extra": True}
    scenario = catalogue.get("tier0-tutorial")
    assert scenario is not None
    assert run.scenario_id == scenario.id
    assert run.scenario_hash == scenario.content_hash
    assert run.total_ticks == scenario.duration
    assert (await create(service, total_ticks=7)).total_ticks == 7


def experiment_status(uow: FakeUnitOfWork) -> ExperimentStatus:
    return uow.experiments.rows[EXPERIMENT_ID].status


async def test_experiment_status_follows_its_runs(service: RunService, uow: FakeUnitOfWork) -> None:
    run = await create(service)
    assert experiment_status(uow) == ExperimentStatus.RUNNING
    await service.update(run.id, {"status": RunStatus.STARTING})
    await service.update(run.id, {"status": RunStatus.RUNNING})
    await service.update(run.id, {"status": RunStatus.FAILED, "error_message": "boom"})
    assert experiment_status(uow) == ExperimentStatus.FAILED
    second = await create(service)
    await service.update(second.id, {"status": RunStatus.STARTING})
    await service.update(second.id, {"status": RunStatus.RUNNING})
    await service.update(second.id, {"status": RunStatus.COMPLETED})
    assert experiment_status(uow) == ExperimentStatus.COMPLETED


async def test_completing_a_run_checks_its_scenarios_criteria_once(
    service: RunService, uow: FakeUnitOfWork
) -> None:
    run = await create(service)
    uow.metrics.rows = [
        Metric(run_id=run.id, name="total_profit", count=2, last_value=2000.0, min_value=5.0),
        Metric(run_id=run.id, name="stockout_rate", count=9, last_value=0.01, max_value=0.2),
    ]
    for status in (RunStatus.STARTING, RunStatus.RUNNING):
        await service.update(run.id, {"status": status})
    assert uow.validations.rows == []
    await service.update(run.id, {"status": RunStatus.COMPLETED})
    verdicts = {v.kind: (v.passed, v.score) for v in uow.validations.rows}
    assert verdicts == {
        "customer_rating": (False, None),  # never logged
        "stockout_rate": (True, 0.01),
        "total_profit": (True, 2000.0),
    }
    assert run.criteria_checked_at is not None
    await service.update(run.id, {"results": {"x": 1}})
    assert len(uow.validations.rows) == 3, "checked once"


async def test_status_moves_stamp_times(service: RunService, uow: FakeUnitOfWork) -> None:
    run = await create(service)
    assert run.started_at is None
    await service.update(run.id, {"status": RunStatus.STARTING})
    await service.update(run.id, {"status": RunStatus.RUNNING})
    assert run.started_at is not None and run.completed_at is None
    assert uow.metrics.finalized == []  # a run not ended keeps no copies
    await service.update(run.id, {"status": RunStatus.COMPLETED})
    assert run.completed_at is not None
    assert run.duration == run.completed_at - run.started_at
    assert uow.metrics.finalized == [run.id]  # its metrics' summaries copied for ordering


async def test_illegal_moves_and_bad_values_are_rejected(service: RunService) -> None:
    run = await create(service)
    with pytest.raises(FailedPrecondition):
        await service.update(run.id, {"status": RunStatus.COMPLETED})
    with pytest.raises(InvalidArgument) as error:
        await service.update(run.id, {"progress_percent": 101.0})
    assert error.value.violations[0].field == "run.progress_percent"
    with pytest.raises(InvalidArgument):
        await create(service, status=RunStatus.RUNNING)
    with pytest.raises(NotFound):
        await create(service, experiment_id="22222222-2222-2222-2222-222222222222")


async def test_a_run_needs_its_scenario_in_the_catalogue(
    service: RunService, uow: FakeUnitOfWork
) -> None:
    uow.experiments.rows[EXPERIMENT_ID].scenario_id = "withdrawn"
    with pytest.raises(FailedPrecondition, match="withdrawn"):
        await create(service)


# Pausing: LiveRuns on the same fakes, with a bus that records what it was told.


@dataclass
class FakeBus:
    commands: list[CommandMessage] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    async def publish_command(self, command: CommandMessage) -> None:
        self.commands.append(command)

    async def publish_runs(self, run_ids: Iterable[str]) -> None:
        self.changed.extend(run_ids)


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def live_runs(uow: FakeUnitOfWork, bus: FakeBus) -> LiveRuns:
    return LiveRuns(lambda: uow, bus)


async def running_run(service: RunService, live_runs: LiveRuns) -> Run:
    run = await create(service)
    await live_runs.attach(run.id, "worker-1")
    assert run.status == RunStatus.RUNNING
    return run


def names(commands: list[CommandMessage]) -> list[tuple[str, str]]:
    return [(c.name, c.id) for c in commands]


async def test_a_pause_is_stored_pushed_and_told_to_a_worker_that_reconnects(
    service: RunService, live_runs: LiveRuns, bus: FakeBus, uow: FakeUnitOfWork
) -> None:
    run = await running_run(service, live_runs)
    started = run.started_at
    paused, command = await live_runs.pause(run.id)
    assert paused.status == RunStatus.PAUSED and paused.paused_at is not None
    assert bus.commands == [command] and command.name == "pause"
    assert experiment_status(uow) == ExperimentStatus.RUNNING, "paused counts as running"

    again, _ = await live_runs.attach(run.id, "worker-2")  # a worker (re)connects
    assert again.status == RunStatus.PAUSED, "attaching does not resume"
    assert names(_) == names([command]), "the same pause, in the welcome"
    repeated, same = await live_runs.pause(run.id)  # a retried PauseRun changes nothing
    assert repeated.status == RunStatus.PAUSED and same.id == command.id

    resumed, resume = await live_runs.resume(run.id)
    assert resumed.status == RunStatus.RUNNING and resume.name == "resume"
    assert resumed.started_at == started, "resuming is not starting again"
    _, pending = await live_runs.attach(run.id, "worker-3")  # away during the resume
    assert names(pending) == names([resume])

    _, second = await live_runs.pause(run.id)
    assert second.id != command.id, "a new pause, a new id"


async def test_pause_and_resume_are_refused_where_the_run_cannot_move(
    service: RunService, live_runs: LiveRuns, bus: FakeBus
) -> None:
    pending = await create(service)
    with pytest.raises(FailedPrecondition, match="only a running run can be paused"):
        await live_runs.pause(pending.id)
    with pytest.raises(FailedPrecondition, match="only a paused run can be resumed"):
        await live_runs.resume(pending.id)
    run = await running_run(service, live_runs)
    await live_runs.pause(run.id)
    await service.update(run.id, {"status": RunStatus.COMPLETED})  # a paused run may end
    for call in (live_runs.pause, live_runs.resume):
        with pytest.raises(FailedPrecondition, match="this run is completed"):
            await call(run.id)
    assert [c.name for c in bus.commands] == ["pause"]
    with pytest.raises(InvalidArgument, match="PauseRun"):
        await service.update((await running_run(service, live_runs)).id, {"status": "paused"})


async def test_cancel_of_a_paused_run_is_told_instead_of_the_pause(
    service: RunService, live_runs: LiveRuns
) -> None:
    run = await running_run(service, live_runs)
    await live_runs.pause(run.id)
    cancelled, cancel = await live_runs.cancel(run.id, "enough")
    assert cancelled.status == RunStatus.PAUSED, "paused until the worker confirms"
    _, pending = await live_runs.attach(run.id, "worker-2")
    assert names(pending) == names([cancel])
