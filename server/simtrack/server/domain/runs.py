"""Runs of experiments and the agents taking part in them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from simtrack.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.filters import (
    PARAMS,
    ordered_text,
    parse_duration,
    parse_int,
    parse_number,
    parse_time,
)
from simtrack.server.core.listing import Listing, Page, enum_parser
from simtrack.server.core.model import (
    RUN_FINAL,
    RunStatus,
    bounded_text,
    check_range,
    check_status_update,
    distinct,
    json_object,
    merge_params,
    require_id,
    require_name,
    set_run_status,
)
from simtrack.server.db.models import Metric, Participant, Run
from simtrack.server.domain.agents import load_agent
from simtrack.server.domain.criteria import check_success_criteria
from simtrack.server.domain.experiments import load_experiment, refresh_experiment_status
from simtrack.server.domain.ports import RunReads, UnitOfWork, UnitOfWorkFactory
from simtrack.server.scenario_catalogue import ScenarioCatalogue

T = TypeVar("T")

RUN_LISTING = Listing(
    "runs",
    {
        "experiment_id": str,
        "scenario_id": str,
        "agent_id": str,  # the experiment's agent or a participant's (filter_sql.py)
        "status": enum_parser(RunStatus),
        "worker_id": str,
        "run_number": parse_int,
        "create_time": parse_time,
        "start_time": parse_time,
        "end_time": parse_time,
        "duration": parse_duration,
        "params.*": PARAMS,
        "metrics.*": parse_number,
    },
)
PARTICIPANT_LISTING = Listing(
    "participants",
    {
        "agent_id": str,
        "role": ordered_text,
        "create_time": parse_time,
        "update_time": parse_time,
    },
)
WORKER_ID_MAX = 200
ROLE_MAX = 100


async def load_run(uow: UnitOfWork, run_id: str, field: str = "id") -> Run:
    run = await uow.runs.get(require_id(field, run_id))
    if run is None:
        raise NotFound("run", run_id, field)
    return run


async def load_participant(uow: UnitOfWork, participant_id: str, field: str = "id") -> Participant:
    participant = await uow.participants.get(require_id(field, participant_id))
    if participant is None:
        raise NotFound("participant", participant_id, field)
    return participant


LATEST_METRICS_MAX = 20  # metric names a ListRuns call may ask the latest values of


@dataclass(frozen=True)
class RunPage(Page[Run]):
    """A page of runs, and the metrics asked for of each (by run id; those it has, by name)."""

    metrics: dict[str, list[Metric]]


def metric_names(field: str, names: Sequence[str]) -> list[str]:
    """Distinct metric names, at most ``LATEST_METRICS_MAX`` of them."""
    if len(names) > LATEST_METRICS_MAX:
        raise InvalidArgument.of(
            field, f"must list at most {LATEST_METRICS_MAX} names, got {len(names)}"
        )
    return distinct(field, [require_name(f"{field}[{i}]", n) for i, n in enumerate(names)])


class RunService:
    """Runs; ``reads``, when given, serves GetRun and ListRuns (else a unit of work does)."""

    def __init__(
        self, uow: UnitOfWorkFactory, catalogue: ScenarioCatalogue, reads: RunReads | None = None
    ) -> None:
        self.uow = uow
        self.catalogue = catalogue
        self.reads = reads

    async def create(
        self,
        *,
        experiment_id: str,
        status: RunStatus | None,
        params: Mapping[str, Any],
        total_ticks: int,
        worker_id: str,
    ) -> Run:
        if status not in (None, RunStatus.PENDING):
            raise InvalidArgument.of("run.status", "a new run is pending")
        params = json_object("run.params", params)
        check_range("run.total_ticks", total_ticks, 0)
        worker_id = bounded_text("run.worker_id", worker_id, max_len=WORKER_ID_MAX)
        if not experiment_id:
            raise InvalidArgument.of("run.experiment_id", "is required")
        async with self.uow() as uow:
            experiment = await load_experiment(uow, experiment_id, "run.experiment_id")
            scenario = self.catalogue.get(experiment.scenario_id)
            if scenario is None:
                raise FailedPrecondition(
                    f"the experiment's scenario {experiment.scenario_id!r} is no longer in the "
                    "catalogue"
                )
            run = Run(
                experiment_id=experiment.id,
                run_number=await uow.experiments.next_run_number(experiment.id),
                scenario_id=scenario.id,
                scenario_hash=scenario.content_hash,
                params=merge_params(experiment.params, params),
                status=RunStatus.PENDING,
                total_ticks=total_ticks or scenario.duration,
                worker_id=worker_id,
            )
            await uow.runs.add(run)
            await refresh_experiment_status(uow, experiment.id)
            await uow.commit()
        return run

    async def get(self, run_id: str) -> Run:
        if self.reads is None:
            async with self.uow() as uow:
                return await load_run(uow, run_id)
        run = await self.reads.run(require_id("id", run_id))
        if run is None:
            raise NotFound("run", run_id, "id")
        return run

    async def rendered(self, run_id: str, render: Callable[[Run], T]) -> T:
        """``render(run)``: GetRun's answer. The reads may keep it while the run is unchanged
        (rendering costs more than reading), never past a write committed before the call.
        """
        if self.reads is None:
            return render(await self.get(run_id))
        answer = await self.reads.rendered(require_id("id", run_id), render)
        if answer is None:
            raise NotFound("run", run_id, "id")
        return answer

    async def list(
        self,
        page_size: int,
        page_token: str,
        filter_text: str,
        order_by: str = "",
        latest_metrics: Sequence[str] = (),
    ) -> RunPage:
        """A page of runs and, for ``latest_metrics`` (names), each run's metrics of those
        names that it has (a second statement, for the page's runs only).
        """
        names = metric_names("latest_metrics", latest_metrics)
        page = RUN_LISTING.request(page_size, page_token, filter_text, order_by=order_by)
        if self.reads is not None:
            rows, cursor = await self.reads.runs(page)
        else:
            async with self.uow() as uow:
                rows, cursor = await uow.runs.list(page)
        metrics: dict[str, list[Metric]] = {run.id: [] for run in rows}
        if names and rows:
            async with self.uow() as uow:
                for metric in await uow.metrics.named_in(list(metrics), names):
                    metrics[metric.run_id].append(metric)
        for found in metrics.values():
            found.sort(key=lambda metric: metric.name)
        return RunPage(rows, page.next_token(cursor), metrics)

    async def update(self, run_id: str, changes: Mapping[str, Any]) -> Run:
        async with self.uow() as uow:
            run = await load_run(uow, run_id, "run.id")
            status_changed = False
            for field, value in changes.items():
                if field == "status":
                    if value is None:
                        raise InvalidArgument.of("run.status", "is required")
                    check_status_update(run.status, value)
                    status_changed = value != run.status
                    set_run_status(run, value)
                elif field in ("current_tick", "total_ticks"):
                    check_range(f"run.{field}", value, 0)
                    setattr(run, field, value)
                elif field == "progress_percent":
                    check_range("run.progress_percent", value, 0, 100)
                    run.progress_percent = value
                elif field in ("metrics_summary", "results", "error_details"):
                    setattr(run, field, json_object(f"run.{field}", value))
                elif field == "error_message":
                    run.error_message = bounded_text("run.error_message", value)
                elif field == "worker_id":
                    run.worker_id = bounded_text("run.worker_id", value, max_len=WORKER_ID_MAX)
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.runs.flush()
            if status_changed:
                if run.status in RUN_FINAL:
                    await uow.metrics.finalize([run.id])
                await refresh_experiment_status(uow, run.experiment_id)
                await check_success_criteria(uow, run, self.catalogue)
            await uow.commit()
        return run

    async def delete(self, run_id: str) -> None:
        async with self.uow() as uow:
            run = await load_run(uow, run_id)
            await uow.runs.delete(run)
            await refresh_experiment_status(uow, run.experiment_id)
            await uow.commit()


class ParticipantService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def create(
        self, *, run_id: str, agent_id: str, role: str, config_override: Mapping[str, Any]
    ) -> Participant:
        role = bounded_text("participant.role", role, max_len=ROLE_MAX)
        config_override = json_object("participant.config_override", config_override)
        if not run_id:
            raise InvalidArgument.of("participant.run_id", "is required")
        if not agent_id:
            raise InvalidArgument.of("participant.agent_id", "is required")
        async with self.uow() as uow:
            run = await load_run(uow, run_id, "participant.run_id")
            agent = await load_agent(uow, agent_id, "participant.agent_id")
            if await uow.participants.exists_for(run.id, agent.id):
                raise AlreadyExists(f"agent {agent.name!r} already takes part in this run")
            participant = Participant(
                run_id=run.id, agent_id=agent.id, role=role, config_override=config_override
            )
            await uow.participants.add(participant)
            await uow.commit()
        return participant

    async def get(self, participant_id: str) -> Participant:
        async with self.uow() as uow:
            return await load_participant(uow, participant_id)

    async def list(
        self, run_id: str, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Participant]:
        run_id = require_id("run_id", run_id)
        page = PARTICIPANT_LISTING.request(page_size, page_token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.participants.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def update(self, participant_id: str, changes: Mapping[str, Any]) -> Participant:
        async with self.uow() as uow:
            participant = await load_participant(uow, participant_id, "participant.id")
            for field, value in changes.items():
                if field == "role":
                    participant.role = bounded_text("participant.role", value, max_len=ROLE_MAX)
                elif field == "config_override":
                    participant.config_override = json_object("participant.config_override", value)
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.participants.flush()
            await uow.commit()
        return participant

    async def delete(self, participant_id: str) -> None:
        async with self.uow() as uow:
            await uow.participants.delete(await load_participant(uow, participant_id))
            await uow.commit()
