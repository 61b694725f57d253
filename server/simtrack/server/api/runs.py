"""RunService: proto <-> domain for runs, their participants and their workers' commands;
watching a run; ranking and summarizing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from simtrack.server.api.convert import EnumMapping, dict_to_struct, mask_changes, struct_to_dict
from simtrack.server.api.convert import duration as dur
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.api.packed import Packed
from simtrack.server.core.commands import CommandMessage
from simtrack.server.core.model import RUN_FINAL, MetricAggregate, RankOrder, RunStatus
from simtrack.server.db.models import Metric, Participant, Run
from simtrack.server.domain.live_runs import LiveRuns
from simtrack.server.domain.rankings import Rankings
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.ingest.bus import InProcessBus
from simtrack.v1 import runs_pb2 as pb
from simtrack.v1 import runs_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
RUN_STATUS = EnumMapping(pb.RunStatus, RunStatus, "RUN_STATUS_")
METRIC_AGGREGATE = EnumMapping(pb.MetricAggregate, MetricAggregate, "METRIC_AGGREGATE_")
RANK_ORDER = EnumMapping(pb.RankOrder, RankOrder, "RANK_ORDER_")
WATCH_REFRESH = 5.0  # seconds: a watcher re-reads even without a notification

RUN_READERS = {
    "status": lambda r: RUN_STATUS.to_domain("run.status", r.status),
    "current_tick": lambda r: r.current_tick,
    "total_ticks": lambda r: r.total_ticks,
    "progress_percent": lambda r: r.progress_percent,
    "metrics_summary": lambda r: struct_to_dict("run.metrics_summary", r.metrics_summary),
    "results": lambda r: struct_to_dict("run.results", r.results),
    "error_message": lambda r: r.error_message,
    "error_details": lambda r: struct_to_dict("run.error_details", r.error_details),
    "worker_id": lambda r: r.worker_id,
}
PARTICIPANT_READERS = {
    "role": lambda p: p.role,
    "config_override": lambda p: struct_to_dict("participant.config_override", p.config_override),
}


def run_to_proto(r: Run) -> pb.Run:
    return pb.Run(
        id=r.id,
        experiment_id=r.experiment_id,
        run_number=r.run_number,
        scenario_id=r.scenario_id,
        scenario_hash=r.scenario_hash,
        params=dict_to_struct(r.params),
        status=RUN_STATUS.to_proto(r.status),
        current_tick=r.current_tick,
        total_ticks=r.total_ticks,
        progress_percent=r.progress_percent,
        start_time=ts(r.started_at),
        complete_time=ts(r.completed_at),
        duration=dur(r.duration),
        metrics_summary=dict_to_struct(r.metrics_summary),
        results=dict_to_struct(r.results),
        error_message=r.error_message,
        error_details=dict_to_struct(r.error_details),
        worker_id=r.worker_id,
        create_time=ts(r.created_at),
        update_time=ts(r.updated_at),
        cancel_reason=r.cancel_reason,
        vanish_time=ts(r.vanished_at),
        revive_time=ts(r.revived_at),
    )


def get_run_response(r: Run) -> Packed[pb.GetRunResponse]:
    """GetRun's answer as its bytes: kept as they are while the run is unchanged."""
    return Packed(pb.GetRunResponse(run=run_to_proto(r)).SerializeToString(), pb.GetRunResponse)


def participant_to_proto(p: Participant) -> pb.Participant:
    return pb.Participant(
        id=p.id,
        run_id=p.run_id,
        agent_id=p.agent_id,
        role=p.role,
        config_override=dict_to_struct(p.config_override),
        create_time=ts(p.created_at),
        update_time=ts(p.updated_at),
    )


def command_to_proto(command: CommandMessage) -> pb.Command:
    return pb.Command(id=command.id, name=command.name, args=dict_to_struct(command.args))


def _latest(metric: Metric) -> pb.LatestMetric:
    return pb.LatestMetric(
        name=metric.name,
        value=metric.last_value if metric.last_value is not None else math.nan,
        step=metric.last_step,  # None: unset (no finite value yet), 0 is a real step
        count=metric.count,
        min=metric.min_value if metric.min_value is not None else math.nan,
        max=metric.max_value if metric.max_value is not None else math.nan,
    )


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    """Runs and participants (CRUD), watching a run (the bus tells of changes), the commands
    to its worker (through the domain's LiveRuns), the leaderboard and run statistics.
    """

    def __init__(
        self,
        runs: RunService,
        participants: ParticipantService,
        live_runs: LiveRuns,
        queries: Rankings,
        bus: InProcessBus,
    ) -> None:
        self.runs = runs
        self.participants = participants
        self.live_runs = live_runs
        self.queries = queries
        self.bus = bus

    # Runs

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        r = request.run
        run = await self.runs.create(
            experiment_id=r.experiment_id,
            status=RUN_STATUS.to_domain("run.status", r.status),
            params=struct_to_dict("run.params", r.params),
            total_ticks=r.total_ticks,
            worker_id=r.worker_id,
        )
        return pb.CreateRunResponse(run=run_to_proto(run))

    async def GetRun(  # type: ignore[override]  # the interceptor sends Packed
        self, request: pb.GetRunRequest, context: Context
    ) -> Packed[pb.GetRunResponse]:
        return await self.runs.rendered(request.id, get_run_response)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        page = await self.runs.list(
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
            request.latest_metrics,
        )
        return pb.ListRunsResponse(
            runs=[run_to_proto(r) for r in page.items],
            next_page_token=page.next_page_token,
            latest_metrics=[
                pb.RunMetrics(run_id=r.id, metrics=[_latest(m) for m in page.metrics[r.id]])
                for r in page.items
            ]
            if request.latest_metrics
            else [],
        )

    async def UpdateRun(
        self, request: pb.UpdateRunRequest, context: Context
    ) -> pb.UpdateRunResponse:
        changes = mask_changes(request.run, request.update_mask, RUN_READERS)
        run = await self.runs.update(request.run.id, changes)
        return pb.UpdateRunResponse(run=run_to_proto(run))

    async def DeleteRun(
        self, request: pb.DeleteRunRequest, context: Context
    ) -> pb.DeleteRunResponse:
        await self.runs.delete(request.id)
        return pb.DeleteRunResponse()

    # Participants

    async def CreateParticipant(
        self, request: pb.CreateParticipantRequest, context: Context
    ) -> pb.CreateParticipantResponse:
        p = request.participant
        participant = await self.participants.create(
            run_id=p.run_id,
            agent_id=p.agent_id,
            role=p.role,
            config_override=struct_to_dict("participant.config_override", p.config_override),
        )
        return pb.CreateParticipantResponse(participant=participant_to_proto(participant))

    async def GetParticipant(
        self, request: pb.GetParticipantRequest, context: Context
    ) -> pb.GetParticipantResponse:
        participant = await self.participants.get(request.id)
        return pb.GetParticipantResponse(participant=participant_to_proto(participant))

    async def ListParticipants(
        self, request: pb.ListParticipantsRequest, context: Context
    ) -> pb.ListParticipantsResponse:
        page = await self.participants.list(
            request.run_id, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListParticipantsResponse(
            participants=[participant_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateParticipant(
        self, request: pb.UpdateParticipantRequest, context: Context
    ) -> pb.UpdateParticipantResponse:
        changes = mask_changes(request.participant, request.update_mask, PARTICIPANT_READERS)
        participant = await self.participants.update(request.participant.id, changes)
        return pb.UpdateParticipantResponse(participant=participant_to_proto(participant))

    async def DeleteParticipant(
        self, request: pb.DeleteParticipantRequest, context: Context
    ) -> pb.DeleteParticipantResponse:
        await self.participants.delete(request.id)
        return pb.DeleteParticipantResponse()

    # Watching and commanding a run's worker

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        run, _ = await self.live_runs.snapshot(request.id)
        with self.bus.watch(run.id) as changes:
            while True:
                run, metrics = await self.live_runs.snapshot(run.id)
                yield pb.WatchRunResponse(
                    run=run_to_proto(run), metrics=[_latest(m) for m in metrics]
                )
                if run.status in RUN_FINAL:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_REFRESH):
                        await changes.get()

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run, command = await self.live_runs.cancel(request.id, request.reason)
        return pb.CancelRunResponse(command=command_to_proto(command), run=run_to_proto(run))

    async def PauseRun(self, request: pb.PauseRunRequest, context: Context) -> pb.PauseRunResponse:
        run, command = await self.live_runs.pause(request.id)
        return pb.PauseRunResponse(command=command_to_proto(command), run=run_to_proto(run))

    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: Context
    ) -> pb.ResumeRunResponse:
        run, command = await self.live_runs.resume(request.id)
        return pb.ResumeRunResponse(command=command_to_proto(command), run=run_to_proto(run))

    async def SendCommand(
        self, request: pb.SendCommandRequest, context: Context
    ) -> pb.SendCommandResponse:
        args = struct_to_dict("args", request.args)
        command = await self.live_runs.send_custom(request.id, request.name, args)
        return pb.SendCommandResponse(command=command_to_proto(command))

    # Across runs

    async def GetLeaderboard(
        self, request: pb.GetLeaderboardRequest, context: Context
    ) -> pb.GetLeaderboardResponse:
        board = await self.queries.leaderboard(
            request.scenario_id,
            request.metric,
            METRIC_AGGREGATE.to_domain("aggregate", request.aggregate) or MetricAggregate.LATEST,
            RANK_ORDER.to_domain("order", request.order) or RankOrder.HIGHEST_FIRST,
            request.limit,
            request.experiment_id,
            request.include_unfinished,
        )
        return pb.GetLeaderboardResponse(
            entries=[
                pb.LeaderboardEntry(
                    rank=entry.rank,
                    run=run_to_proto(entry.ranked.run),
                    agent_id=entry.ranked.agent_id,
                    value=entry.ranked.value,
                    last_step=entry.ranked.last_step or 0,
                )
                for entry in board.entries
            ],
            ranked_runs=board.ranked_runs,
        )

    async def GetRunStats(
        self, request: pb.GetRunStatsRequest, context: Context
    ) -> pb.GetRunStatsResponse:
        stats = await self.queries.stats(request.filter)
        durations = stats.durations
        return pb.GetRunStatsResponse(
            total=stats.total,
            by_status=[
                pb.RunStatusCount(status=RUN_STATUS.to_proto(status), count=count)
                for status, count in stats.by_status.items()
            ],
            success_rate=stats.success_rate,
            durations=None
            if durations is None
            else pb.DurationStats(
                count=durations.count,
                mean=dur(durations.mean),
                min=dur(durations.min),
                p50=dur(durations.p50),
                p95=dur(durations.p95),
                max=dur(durations.max),
            ),
        )
