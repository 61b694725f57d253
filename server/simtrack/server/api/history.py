"""RunService's telemetry reads: ListMetrics, GetMetricHistory, ListEvents."""

from __future__ import annotations

import math

from simtrack.server.api.convert import EnumMapping, dict_to_struct
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.api.runs import Context, RunServicer
from simtrack.server.db.models import Event, Metric
from simtrack.server.domain.history import HistoryService
from simtrack.server.domain.model import MetricKind
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.v1 import runs_pb2 as pb
from simtrack.v1 import telemetry_pb2 as tpb

METRIC_KIND = EnumMapping(tpb.MetricKind, MetricKind, "METRIC_KIND_")


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
            time=ts(e.time),
            type=e.type,
            agent_id=e.agent_id or "",
            payload=dict_to_struct(e.payload),
        ),
        seq=e.seq,
        position=e.position,
    )


class RunHistoryServicer(RunServicer):
    """RunService's CRUD (RunServicer) plus reading back what workers streamed."""

    def __init__(
        self, runs: RunService, participants: ParticipantService, history: HistoryService
    ) -> None:
        super().__init__(runs, participants)
        self.history = history

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
