"""ScenarioService: the read-only catalogue over gRPC."""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.server.api.convert import dict_to_struct
from simtrack.server.domain.scenarios import ScenarioQueries
from simtrack.server.scenario_catalogue import ScenarioSpec
from simtrack.v1 import scenarios_pb2 as pb
from simtrack.v1 import scenarios_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def scenario_to_proto(spec: ScenarioSpec) -> pb.Scenario:
    data = spec.as_dict()
    return pb.Scenario(
        id=spec.id,
        name=spec.name,
        description=spec.description,
        difficulty_tier=spec.difficulty_tier,
        duration_ticks=spec.duration,
        tags=spec.tags,
        params=dict_to_struct(data["params"]),
        success_criteria=dict_to_struct(data["success_criteria"]),
        market_conditions=dict_to_struct(data["market_conditions"]),
        external_events=[dict_to_struct(e) for e in data["external_events"]],
        agent_constraints=dict_to_struct(data["agent_constraints"]),
        content_hash=spec.content_hash,
    )


class ScenarioServicer(scenarios_pb2_grpc.ScenarioServiceServicer):
    def __init__(self, scenarios: ScenarioQueries) -> None:
        self.scenarios = scenarios

    async def GetScenario(
        self, request: pb.GetScenarioRequest, context: Context
    ) -> pb.GetScenarioResponse:
        return pb.GetScenarioResponse(scenario=scenario_to_proto(self.scenarios.get(request.id)))

    async def ListScenarios(
        self, request: pb.ListScenariosRequest, context: Context
    ) -> pb.ListScenariosResponse:
        page = self.scenarios.list(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListScenariosResponse(
            scenarios=[scenario_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )
