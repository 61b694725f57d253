"""AgentService: proto <-> domain for agents."""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.server.api.convert import EnumMapping, dict_to_struct, mask_changes, struct_to_dict
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.core.model import Framework
from simtrack.server.db.models import Agent
from simtrack.server.domain.agents import AgentService
from simtrack.v1 import agents_pb2 as pb
from simtrack.v1 import agents_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
FRAMEWORK = EnumMapping(pb.Framework, Framework, "FRAMEWORK_")

UPDATE_READERS = {
    "name": lambda a: a.name,
    "framework": lambda a: FRAMEWORK.to_domain("agent.framework", a.framework),
    "config": lambda a: struct_to_dict("agent.config", a.config),
}


def agent_to_proto(agent: Agent) -> pb.Agent:
    return pb.Agent(
        id=agent.id,
        name=agent.name,
        framework=FRAMEWORK.to_proto(agent.framework),
        config=dict_to_struct(agent.config),
        create_time=ts(agent.created_at),
        update_time=ts(agent.updated_at),
    )


class AgentServicer(agents_pb2_grpc.AgentServiceServicer):
    def __init__(self, agents: AgentService) -> None:
        self.agents = agents

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: Context
    ) -> pb.CreateAgentResponse:
        a = request.agent
        agent = await self.agents.create(
            name=a.name,
            framework=FRAMEWORK.to_domain("agent.framework", a.framework),
            config=struct_to_dict("agent.config", a.config),
        )
        return pb.CreateAgentResponse(agent=agent_to_proto(agent))

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=agent_to_proto(await self.agents.get(request.id)))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        page = await self.agents.list(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListAgentsResponse(
            agents=[agent_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: Context
    ) -> pb.UpdateAgentResponse:
        changes = mask_changes(request.agent, request.update_mask, UPDATE_READERS)
        agent = await self.agents.update(request.agent.id, changes)
        return pb.UpdateAgentResponse(agent=agent_to_proto(agent))

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: Context
    ) -> pb.DeleteAgentResponse:
        await self.agents.delete(request.id)
        return pb.DeleteAgentResponse()
