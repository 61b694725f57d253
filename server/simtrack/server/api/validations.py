"""ValidationService: proto <-> domain for the verdicts on runs."""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.server.api.convert import dict_to_struct, struct_to_dict
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.db.models import Validation
from simtrack.server.domain.validations import ValidationService
from simtrack.v1 import validations_pb2 as pb
from simtrack.v1 import validations_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


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


class ValidationServicer(validations_pb2_grpc.ValidationServiceServicer):
    """Verdicts on runs: external validators record theirs; anyone may read them back."""

    def __init__(self, validations: ValidationService) -> None:
        self.validations = validations

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
            request.run_id, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListValidationsResponse(
            validations=[validation_to_proto(v) for v in page.items],
            next_page_token=page.next_page_token,
        )
