"""RunService's read queries: telemetry (ListMetrics, GetMetricHistory, ListEvents) and
questions across runs (GetLeaderboard, GetRunStats)."""

from __future__ import annotations

import math

from simtrack.server.api.convert import EnumMapping, dict_to_struct, timestamp_of_nanos
from simtrack.server.api.convert import duration as dur
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.api.runs import RUN_STATUS, Context, RunServicer, run_to_proto
from simtrack.server.db.models import Event, Metric
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.model import MetricAggregate, MetricKind, RankOrder
from simtrack.server.domain.rankings import RunQueries
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.domain.validations import ValidationService
from simtrack.v1 import runs_pb2 as pb
from simtrack.v1 import telemetry_pb2 as tpb

METRIC_KIND = EnumMapping(tpb.MetricKind, MetricKind, "METRIC_KIND_")
METRIC_AGGREGATE = EnumMapping(pb.MetricAggregate, MetricAggregate, "METRIC_AGGREGATE_")
RANK_ORDER = EnumMapping(pb.RankOrder, RankOrder, "RANK_ORDER_")


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def metric_to_proto(m: Metric) -> pb.Metric:
    return pb.Metric(
        run_id=m.run_id,
        name=m.name,
        unit=m.unit,
        kind=METRIC_KIND.to_proto(m.kind),
        count=m.count,
        last_step=m.last_step or 0,
        last_value=_or_nan(m.last_value),
        min=_or_nan(m.min_value),
        max=_or_nan(m.max_value),
        create_time=ts(m.created_at),
        update_time=ts(m.updated_at),
    )


def event_to_proto(e: Event) -> pb.StoredEvent:
    return pb.StoredEvent(
        event=tpb.Event(
            step=e.step,
            time=timestamp_of_nanos(e.time_ns),
            type=e.type,
            agent_id=e.agent_id or "",
            payload=dict_to_struct(e.payload),
        ),
        seq=e.seq,
        position=e.position,
    )


class RunQueryServicer(RunServicer):
    """RunService's CRUD (RunServicer) plus reading back what workers streamed and ranking
    and summarizing runs."""

    def __init__(
        self,
        runs: RunService,
        participants: ParticipantService,
        validations: ValidationService,
        history: HistoryService,
        queries: RunQueries,
    ) -> None:
        super().__init__(runs, participants, validations)
        self.history = history
        self.queries = queries

    async def ListMetrics(
        self, request: pb.ListMetricsRequest, context: Context
    ) -> pb.ListMetricsResponse:
        page = await self.history.list_metrics(
            request.run_id, request.page_size, request.page_token, request.filter
        )
        return pb.ListMetricsResponse(
            metrics=[metric_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def GetMetricHistory(
        self, request: pb.GetMetricHistoryRequest, context: Context
    ) -> pb.GetMetricHistoryResponse:
        found = await self.history.history(
            request.run_id,
            request.metric,
            request.start_step if request.HasField("start_step") else None,
            request.end_step if request.HasField("end_step") else None,
            request.max_points,
            request.page_size,
            request.page_token,
        )
        points = found.points
        return pb.GetMetricHistoryResponse(  # from lists: faster than from numpy arrays
            steps=points.steps.tolist(),
            values=points.values.tolist(),
            timestamps=points.timestamps.tolist(),
            next_page_token=found.next_page_token,
            range_count=found.range_count,
            downsampled=found.downsampled,
        )

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        page = await self.history.list_events(
            request.run_id, request.page_size, request.page_token, request.filter
        )
        return pb.ListEventsResponse(
            events=[event_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

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
