"""RunService: proto <-> domain for runs and their participants."""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.server.api.convert import EnumMapping, dict_to_struct, mask_changes, struct_to_dict
from simtrack.server.api.convert import duration as dur
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.db.models import Participant, Run, Validation
from simtrack.server.domain.model import RunStatus
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.domain.validations import ValidationService
from simtrack.v1 import runs_pb2 as pb
from simtrack.v1 import runs_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
RUN_STATUS = EnumMapping(pb.RunStatus, RunStatus, "RUN_STATUS_")

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


def validation_to_proto(v: Validation) -> pb.Validation:
    return pb.Validation(
        id=v.id,
        run_id=v.run_id,
        validator=v.validator,
        kind=v.kind,
        passed=v.passed,
        score=v.score,
        details=dict_to_struct(v.details),
        create_time=ts(v.created_at),
    )


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    def __init__(
        self, runs: RunService, participants: ParticipantService, validations: ValidationService
    ) -> None:
        self.runs = runs
        self.participants = participants
        self.validations = validations

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

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_to_proto(await self.runs.get(request.id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        page = await self.runs.list(request.page_size, request.page_token, request.filter)
        return pb.ListRunsResponse(
            runs=[run_to_proto(r) for r in page.items], next_page_token=page.next_page_token
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
            request.run_id, request.page_size, request.page_token, request.filter
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

    # Validations

    async def CreateValidation(
        self, request: pb.CreateValidationRequest, context: Context
    ) -> pb.CreateValidationResponse:
        v = request.validation
        validation = await self.validations.create(
            run_id=v.run_id,
            validator=v.validator,
            kind=v.kind,
            passed=v.passed,
            score=v.score if v.HasField("score") else None,
            details=struct_to_dict("validation.details", v.details),
        )
        return pb.CreateValidationResponse(validation=validation_to_proto(validation))

    async def GetValidation(
        self, request: pb.GetValidationRequest, context: Context
    ) -> pb.GetValidationResponse:
        validation = await self.validations.get(request.id)
        return pb.GetValidationResponse(validation=validation_to_proto(validation))

    async def ListValidations(
        self, request: pb.ListValidationsRequest, context: Context
    ) -> pb.ListValidationsResponse:
        page = await self.validations.list(
            request.run_id, request.page_size, request.page_token, request.filter
        )
        return pb.ListValidationsResponse(
            validations=[validation_to_proto(v) for v in page.items],
            next_page_token=page.next_page_token,
        )
