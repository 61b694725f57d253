"""Agents: the systems under test."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simtrack.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simtrack.server.core.filters import ordered_text, parse_time
from simtrack.server.core.listing import Listing, Page, enum_parser
from simtrack.server.core.model import Framework, json_object, require_id, require_name
from simtrack.server.db.models import Agent
from simtrack.server.domain.ports import UnitOfWork, UnitOfWorkFactory

LISTING = Listing(
    "agents",
    {
        "name": ordered_text,
        "framework": enum_parser(Framework),
        "create_time": parse_time,
        "update_time": parse_time,
    },
)
UPDATABLE = frozenset({"name", "framework", "config"})


async def load_agent(uow: UnitOfWork, agent_id: str, field: str = "id") -> Agent:
    agent = await uow.agents.get(require_id(field, agent_id))
    if agent is None:
        raise NotFound("agent", agent_id, field)
    return agent


class AgentService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def create(
        self, *, name: str, framework: Framework | None, config: Mapping[str, Any]
    ) -> Agent:
        name = require_name("agent.name", name)
        if framework is None:
            raise InvalidArgument.of("agent.framework", "is required")
        agent = Agent(name=name, framework=framework, config=json_object("agent.config", config))
        async with self.uow() as uow:
            if await uow.agents.name_taken(name):
                raise AlreadyExists(f"an agent named {name!r} already exists")
            await uow.agents.add(agent)
            await uow.commit()
        return agent

    async def get(self, agent_id: str) -> Agent:
        async with self.uow() as uow:
            return await load_agent(uow, agent_id)

    async def list(
        self, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Agent]:
        page = LISTING.request(page_size, page_token, filter_text, order_by=order_by)
        async with self.uow() as uow:
            rows, cursor = await uow.agents.list(page)
        return Page(rows, page.next_token(cursor))

    async def update(self, agent_id: str, changes: Mapping[str, Any]) -> Agent:
        async with self.uow() as uow:
            agent = await load_agent(uow, agent_id, "agent.id")
            for field, value in changes.items():
                if field == "name":
                    name = require_name("agent.name", value)
                    if await uow.agents.name_taken(name, other_than=agent.id):
                        raise AlreadyExists(f"an agent named {name!r} already exists")
                    agent.name = name
                elif field == "framework":
                    if value is None:
                        raise InvalidArgument.of("agent.framework", "is required")
                    agent.framework = value
                elif field == "config":
                    agent.config = json_object("agent.config", value)
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.agents.flush()
            await uow.commit()
        return agent

    async def delete(self, agent_id: str) -> None:
        async with self.uow() as uow:
            agent = await load_agent(uow, agent_id)
            if await uow.agents.is_referenced(agent.id):
                raise FailedPrecondition(
                    f"agent {agent.name!r} is used by an experiment or a run; delete those first"
                )
            await uow.agents.delete(agent)
            await uow.commit()
