"""ExperimentService: proto <-> domain for experiments, simulations and templates."""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.server.api.convert import EnumMapping, dict_to_struct, mask_changes, struct_to_dict
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.core.model import ExperimentStatus, SimulationStatus
from simtrack.server.db.models import Experiment, Simulation, Template
from simtrack.server.domain.experiments import ExperimentService, TemplateService
from simtrack.server.domain.simulations import SimulationService
from simtrack.v1 import experiments_pb2 as pb
from simtrack.v1 import experiments_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
EXPERIMENT_STATUS = EnumMapping(pb.ExperimentStatus, ExperimentStatus, "EXPERIMENT_STATUS_")
SIMULATION_STATUS = EnumMapping(pb.SimulationStatus, SimulationStatus, "SIMULATION_STATUS_")

EXPERIMENT_READERS = {
    "name": lambda e: e.name,
    "description": lambda e: e.description,
    "agent_id": lambda e: e.agent_id,
    "params": lambda e: struct_to_dict("experiment.params", e.params),
    "hypothesis": lambda e: e.hypothesis,
    "results_summary": lambda e: struct_to_dict("experiment.results_summary", e.results_summary),
}
SIMULATION_READERS = {
    "experiment_id": lambda s: s.experiment_id,
    "status": lambda s: SIMULATION_STATUS.to_domain("simulation.status", s.status),
    "parameters": lambda s: struct_to_dict("simulation.parameters", s.parameters),
    "metadata": lambda s: struct_to_dict("simulation.metadata", s.metadata),
    "results_summary": lambda s: struct_to_dict("simulation.results_summary", s.results_summary),
}
TEMPLATE_READERS = {
    "name": lambda t: t.name,
    "description": lambda t: t.description,
    "config": lambda t: struct_to_dict("template.config", t.config),
}


def experiment_to_proto(e: Experiment) -> pb.Experiment:
    return pb.Experiment(
        id=e.id,
        name=e.name,
        description=e.description,
        agent_id=e.agent_id,
        scenario_id=e.scenario_id,
        params=dict_to_struct(e.params),
        hypothesis=e.hypothesis,
        status=EXPERIMENT_STATUS.to_proto(e.status),
        results_summary=dict_to_struct(e.results_summary),
        create_time=ts(e.created_at),
        update_time=ts(e.updated_at),
    )


def simulation_to_proto(s: Simulation) -> pb.Simulation:
    return pb.Simulation(
        id=s.id,
        experiment_id=s.experiment_id or "",
        status=SIMULATION_STATUS.to_proto(s.status),
        parameters=dict_to_struct(s.parameters),
        metadata=dict_to_struct(s.metadata_),
        start_time=ts(s.started_at),
        end_time=ts(s.ended_at),
        results_summary=dict_to_struct(s.results_summary),
        create_time=ts(s.created_at),
        update_time=ts(s.updated_at),
    )


def template_to_proto(t: Template) -> pb.Template:
    return pb.Template(
        id=t.id,
        name=t.name,
        description=t.description,
        config=dict_to_struct(t.config),
        create_time=ts(t.created_at),
        update_time=ts(t.updated_at),
    )


class ExperimentServicer(experiments_pb2_grpc.ExperimentServiceServicer):
    def __init__(
        self,
        experiments: ExperimentService,
        simulations: SimulationService,
        templates: TemplateService,
    ) -> None:
        self.experiments = experiments
        self.simulations = simulations
        self.templates = templates

    # Experiments

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Context
    ) -> pb.CreateExperimentResponse:
        e = request.experiment
        experiment = await self.experiments.create(
            name=e.name,
            description=e.description,
            agent_id=e.agent_id,
            scenario_id=e.scenario_id,
            params=struct_to_dict("experiment.params", e.params),
            hypothesis=e.hypothesis,
            results_summary=struct_to_dict("experiment.results_summary", e.results_summary),
            template_id=request.template_id,
        )
        return pb.CreateExperimentResponse(experiment=experiment_to_proto(experiment))

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: Context
    ) -> pb.GetExperimentResponse:
        experiment = await self.experiments.get(request.id)
        return pb.GetExperimentResponse(experiment=experiment_to_proto(experiment))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: Context
    ) -> pb.ListExperimentsResponse:
        page = await self.experiments.list(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListExperimentsResponse(
            experiments=[experiment_to_proto(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateExperiment(
        self, request: pb.UpdateExperimentRequest, context: Context
    ) -> pb.UpdateExperimentResponse:
        changes = mask_changes(request.experiment, request.update_mask, EXPERIMENT_READERS)
        experiment = await self.experiments.update(request.experiment.id, changes)
        return pb.UpdateExperimentResponse(experiment=experiment_to_proto(experiment))

    async def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: Context
    ) -> pb.DeleteExperimentResponse:
        await self.experiments.delete(request.id)
        return pb.DeleteExperimentResponse()

    # Simulations

    async def CreateSimulation(
        self, request: pb.CreateSimulationRequest, context: Context
    ) -> pb.CreateSimulationResponse:
        s = request.simulation
        simulation = await self.simulations.create(
            experiment_id=s.experiment_id,
            status=SIMULATION_STATUS.to_domain("simulation.status", s.status),
            parameters=struct_to_dict("simulation.parameters", s.parameters),
            metadata=struct_to_dict("simulation.metadata", s.metadata),
            results_summary=struct_to_dict("simulation.results_summary", s.results_summary),
        )
        return pb.CreateSimulationResponse(simulation=simulation_to_proto(simulation))

    async def GetSimulation(
        self, request: pb.GetSimulationRequest, context: Context
    ) -> pb.GetSimulationResponse:
        simulation = await self.simulations.get(request.id)
        return pb.GetSimulationResponse(simulation=simulation_to_proto(simulation))

    async def ListSimulations(
        self, request: pb.ListSimulationsRequest, context: Context
    ) -> pb.ListSimulationsResponse:
        page = await self.simulations.list(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListSimulationsResponse(
            simulations=[simulation_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateSimulation(
        self, request: pb.UpdateSimulationRequest, context: Context
    ) -> pb.UpdateSimulationResponse:
        changes = mask_changes(request.simulation, request.update_mask, SIMULATION_READERS)
        simulation = await self.simulations.update(request.simulation.id, changes)
        return pb.UpdateSimulationResponse(simulation=simulation_to_proto(simulation))

    async def DeleteSimulation(
        self, request: pb.DeleteSimulationRequest, context: Context
    ) -> pb.DeleteSimulationResponse:
        await self.simulations.delete(request.id)
        return pb.DeleteSimulationResponse()

    # Templates

    async def CreateTemplate(
        self, request: pb.CreateTemplateRequest, context: Context
    ) -> pb.CreateTemplateResponse:
        t = request.template
        template = await self.templates.create(
            name=t.name,
            description=t.description,
            config=struct_to_dict("template.config", t.config),
        )
        return pb.CreateTemplateResponse(template=template_to_proto(template))

    async def GetTemplate(
        self, request: pb.GetTemplateRequest, context: Context
    ) -> pb.GetTemplateResponse:
        return pb.GetTemplateResponse(
            template=template_to_proto(await self.templates.get(request.id))
        )

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.ListTemplatesResponse:
        page = await self.templates.list(
            request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListTemplatesResponse(
            templates=[template_to_proto(t) for t in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateTemplate(
        self, request: pb.UpdateTemplateRequest, context: Context
    ) -> pb.UpdateTemplateResponse:
        changes = mask_changes(request.template, request.update_mask, TEMPLATE_READERS)
        template = await self.templates.update(request.template.id, changes)
        return pb.UpdateTemplateResponse(template=template_to_proto(template))

    async def DeleteTemplate(
        self, request: pb.DeleteTemplateRequest, context: Context
    ) -> pb.DeleteTemplateResponse:
        await self.templates.delete(request.id)
        return pb.DeleteTemplateResponse()
