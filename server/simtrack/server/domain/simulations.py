"""Simulations: engine instances, attached to an experiment or standalone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import PARAMS, optional_str, parse_time
from simtrack.server.core.listing import Listing, Page, enum_parser
from simtrack.server.core.model import (
    SIMULATION_FINAL,
    SimulationStatus,
    check_simulation_transition,
    json_object,
    require_id,
    utcnow,
)
from simtrack.server.db.models import Simulation
from simtrack.server.domain.experiments import load_experiment
from simtrack.server.domain.ports import UnitOfWork, UnitOfWorkFactory

LISTING = Listing(
    "simulations",
    {
        "experiment_id": optional_str,
        "status": enum_parser(SimulationStatus),
        "create_time": parse_time,
        "update_time": parse_time,
        "start_time": parse_time,
        "end_time": parse_time,
        "parameters.*": PARAMS,
    },
)


async def load_simulation(uow: UnitOfWork, simulation_id: str, field: str = "id") -> Simulation:
    simulation = await uow.simulations.get(require_id(field, simulation_id))
    if simulation is None:
        raise NotFound("simulation", simulation_id, field)
    return simulation


class SimulationService:
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def create(
        self,
        *,
        experiment_id: str,
        status: SimulationStatus | None,
        parameters: Mapping[str, Any],
        metadata: Mapping[str, Any],
        results_summary: Mapping[str, Any],
    ) -> Simulation:
        if status not in (None, SimulationStatus.PENDING):
            raise InvalidArgument.of("simulation.status", "a new simulation is pending")
        simulation = Simulation(
            status=SimulationStatus.PENDING,
            parameters=json_object("simulation.parameters", parameters),
            metadata_=json_object("simulation.metadata", metadata),
            results_summary=json_object("simulation.results_summary", results_summary),
        )
        async with self.uow() as uow:
            if experiment_id:
                experiment = await load_experiment(uow, experiment_id, "simulation.experiment_id")
                simulation.experiment_id = experiment.id
            await uow.simulations.add(simulation)
            await uow.commit()
        return simulation

    async def get(self, simulation_id: str) -> Simulation:
        async with self.uow() as uow:
            return await load_simulation(uow, simulation_id)

    async def list(
        self, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Simulation]:
        page = LISTING.request(page_size, page_token, filter_text, order_by=order_by)
        async with self.uow() as uow:
            rows, cursor = await uow.simulations.list(page)
        return Page(rows, page.next_token(cursor))

    async def update(self, simulation_id: str, changes: Mapping[str, Any]) -> Simulation:
        async with self.uow() as uow:
            simulation = await load_simulation(uow, simulation_id, "simulation.id")
            for field, value in changes.items():
                if field == "experiment_id":
                    simulation.experiment_id = (
                        (await load_experiment(uow, value, "simulation.experiment_id")).id
                        if value
                        else None
                    )
                elif field == "status":
                    if value is None:
                        raise InvalidArgument.of("simulation.status", "is required")
                    check_simulation_transition(simulation.status, value)
                    if value != simulation.status:
                        if value == SimulationStatus.RUNNING:
                            simulation.started_at = utcnow()
                        if value in SIMULATION_FINAL:
                            simulation.ended_at = utcnow()
                        simulation.status = value
                elif field == "metadata":
                    simulation.metadata_ = json_object("simulation.metadata", value)
                elif field in ("parameters", "results_summary"):
                    setattr(simulation, field, json_object(f"simulation.{field}", value))
                else:
                    raise InvalidArgument.of("update_mask", f"{field!r} cannot be updated")
            await uow.simulations.flush()
            await uow.commit()
        return simulation

    async def delete(self, simulation_id: str) -> None:
        async with self.uow() as uow:
            await uow.simulations.delete(await load_simulation(uow, simulation_id))
            await uow.commit()
