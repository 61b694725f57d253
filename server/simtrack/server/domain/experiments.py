"""Experiments and the templates they can be created from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simtrack.errors import AlreadyExists, InvalidArgument, NotFound
from simtrack.server.core.filters import PARAMS, ordered_text, parse_time
from simtrack.server.core.listing import Listing, Page, enum_parser
from simtrack.server.core.model import (
    ExperimentStatus,
    bounded_text,
    derive_experiment_status,
    json_object,
    merge_params,
    require_id,
    require_name,
)
from simtrack.server.db.models import Experiment, Template
from simtrack.server.domain.agents import load_agent
from simtrack.server.domain.ports import UnitOfWork, UnitOfWorkFactory
from simtrack.server.scenario_catalogue import ScenarioCatalogue

EXPERIMENT_LISTING = Listing(
    "experiments",
    {
        "name": ordered_text,
        "agent_id": str,
        "scenario_id": str,
        "status": enum_parser(ExperimentStatus),
        "create_time": parse_time,
        "update_time": parse_time,
        "params.*": PARAMS,
    },
)
TEMPLATE_LISTING = Listing(
    "templates",
    {"name": ordered_text, "create_time": parse_time, "update_time": parse_time},
)


async def load_experiment(uow: UnitOfWork, experiment_id: str, field: str = "id") -> Experiment:
    experiment = await uow.experiments.get(require_id(field, experiment_id))
    if experiment is None:
        raise NotFound("experiment", experiment_id, field)
    return experiment


async def load_template(uow: UnitOfWork, template_id: str, field: str = "id") -> Template:
    template = await uow.templates.get(require_id(field, template_id))
    if template is None:
        raise NotFound("template", template_id, field)
    return template


async def refresh_experiment_status(uow: UnitOfWork, experiment_id: str) -> None:
    """Re-derive an experiment's status after its runs changed (same transaction).

    The experiment row is locked and re-read first, so two transactions changing runs of one
    experiment take turns and the second derives from what the first committed.
    """
    experiment = await uow.experiments.get(experiment_id, for_update=True)
    if experiment is not None:
        experiment.status = derive_experiment_status(
            await uow.experiments.run_statuses(experiment_id)
        )
        await uow.experiments.flush()


class ExperimentService:
    def __init__(self, uow: UnitOfWorkFactory, catalogue: ScenarioCatalogue) -> None:
        self.uow = uow
        self.catalogue = catalogue

    def _check_scenario(self, scenario_id: str) -> str:
        if not scenario_id:
            raise InvalidArgument.of("experiment.scenario_id", "is required")
        if self.catalogue.get(scenario_id) is None:
            raise NotFound("scenario", scenario_id, "experiment.scenario_id")
        return scenario_id

    async def create(
        self,
        *,
        name: str,
        description: str,
        agent_id: str,
        scenario_id: str,
        params: Mapping[str, Any],
        hypothesis: str,
        results_summary: Mapping[str, Any],
        template_id: str = "",
    ) -> Experiment:
        experiment = Experiment(
            name=require_name("experiment.name", name),
            description=bounded_text("experiment.description", description),
            scenario_id=self._check_scenario(scenario_id),
            hypothesis=bounded_text("experiment.hypothesis", hypothesis),
            results_summary=json_object("experiment.results_summary", results_summary),
            status=ExperimentStatus.DRAFT,
        )
        params = json_object("experiment.params", params)
        if not agent_id:
            raise InvalidArgument.of("experiment.agent_id", "is required")
        async with self.uow() as uow:
            experiment.agent_id = (await load_agent(uow, agent_id, "experiment.agent_id")).id
            if template_id:
                template = await load_template(uow, template_id, "template_id")
                params = merge_params(template.config, params)
            experiment.params = params
            await uow.experiments.add(experiment)
            await uow.commit()
        return experiment

    async def get(self, experiment_id: str) -> Experiment:
        async with self.uow() as uow:
            return await load_experiment(uow, experiment_id)

    async def list(
        self, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Experiment]:
        page = EXPERIMENT_LISTING.request(page_size, page_token, filter_text, order_by=order_by)
        async with self.uow() as uow:
            rows, cursor = await uow.experiments.list(page)
        return Page(rows, page.next_token(cursor))

    async def update(self, experiment_id: str, changes: Mapping[str, Any]) -> Experiment:
        async with self.uow() as uow:
            experiment = await load_experiment(uow, experiment_id, "experiment.id")
            for field, value in changes.items():
                if field == "name":
                    experiment.name = require_name("experiment.name", value)
                elif field in ("description", "hypothesis"):
                    setattr(experiment, field, bounded_text(f"experiment.{field}", value))
                elif field == "agent_id":
                    if not value:
                        raise InvalidArgument.of("experiment.agent_id", "is required")
                    experiment.agent_id = (await load_agent(uow, value, "experiment.agent_id")).id
                elif field in ("params", "results_summary"):
                    setattr(experiment, field, json_object(f"experiment.{field}", value))
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.experiments.flush()
            await uow.commit()
        return experiment

    async def delete(self, experiment_id: str) -> None:
        # The database cascades to runs (and their participants) and detaches simulations.
        async with self.uow() as uow:
            await uow.experiments.delete(await load_experiment(uow, experiment_id))
            await uow.commit()


class TemplateService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def create(self, *, name: str, description: str, config: Mapping[str, Any]) -> Template:
        name = require_name("template.name", name)
        template = Template(
            name=name,
            description=bounded_text("template.description", description),
            config=json_object("template.config", config),
        )
        async with self.uow() as uow:
            if await uow.templates.name_taken(name):
                raise AlreadyExists(f"a template named {name!r} already exists")
            await uow.templates.add(template)
            await uow.commit()
        return template

    async def get(self, template_id: str) -> Template:
        async with self.uow() as uow:
            return await load_template(uow, template_id)

    async def list(
        self, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Template]:
        page = TEMPLATE_LISTING.request(page_size, page_token, filter_text, order_by=order_by)
        async with self.uow() as uow:
            rows, cursor = await uow.templates.list(page)
        return Page(rows, page.next_token(cursor))

    async def update(self, template_id: str, changes: Mapping[str, Any]) -> Template:
        async with self.uow() as uow:
            template = await load_template(uow, template_id, "template.id")
            for field, value in changes.items():
                if field == "name":
                    name = require_name("template.name", value)
                    if await uow.templates.name_taken(name, other_than=template.id):
                        raise AlreadyExists(f"a template named {name!r} already exists")
                    template.name = name
                elif field == "description":
                    template.description = bounded_text("template.description", value)
                elif field == "config":
                    template.config = json_object("template.config", value)
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.templates.flush()
            await uow.commit()
        return template

    async def delete(self, template_id: str) -> None:
        async with self.uow() as uow:
            await uow.templates.delete(await load_template(uow, template_id))
            await uow.commit()
