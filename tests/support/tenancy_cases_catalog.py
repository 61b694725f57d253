"""Tenant isolation cases (see ``tests/support/tenancy.py``): agents, experiments, simulations,
templates.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from simtrack.v1 import (
    agents_pb2,
    experiments_pb2,
)
from tests.support.clients import Client
from tests.support.protos import (
    SCENARIO,
    TIMEOUT,
    Agent,
    Experiment,
    Framework,
    Simulation,
    Template,
    mask,
    struct,
)
from tests.support.tenancy import (
    ALREADY_EXISTS,
    Scene,
    all_ids,
    assert_hidden,
    case,
    unique,
)

# AgentService


@case("AgentService.CreateAgent")
def create_agent(s: Scene) -> None:
    def create(client: Client, name: str) -> Agent:
        request = agents_pb2.CreateAgentRequest(
            agent=Agent(name=name, framework=Framework.FRAMEWORK_BASELINE)
        )
        return client.agents.CreateAgent(request, timeout=TIMEOUT).agent

    # Names are unique per tenant: A may take the name of B's agent, but not twice.
    twin = create(s.a, s.theirs.agent.name)
    assert twin.name == s.theirs.agent.name and twin.id != s.theirs.agent.id
    with pytest.raises(grpc.RpcError) as info:
        create(s.a, s.theirs.agent.name)
    assert info.value.code() == ALREADY_EXISTS, info.value.details()
    # ...and B does not see A's new agent.
    assert_hidden(
        s.server, lambda id: s.b.agents.GetAgent(agents_pb2.GetAgentRequest(id=id)), twin.id
    )
    listed = s.b.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=1000)).agents
    assert twin.id not in {a.id for a in listed}


@case("AgentService.GetAgent")
def get_agent(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.agents.GetAgent(agents_pb2.GetAgentRequest(id=id)),
        s.theirs.agent.id,
    )


@case("AgentService.ListAgents")
def list_agents(s: Scene) -> None:
    def fetch(filter: str = "", size: int = 2) -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = agents_pb2.ListAgentsRequest(page_size=size, page_token=token, filter=filter)
            response = s.a.agents.ListAgents(request, timeout=TIMEOUT)
            return [a.id for a in response.agents], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert {s.mine.agent.id, s.mine.spare_agent.id} <= set(listed)
    assert not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'name = "{s.theirs.agent.name}"')) == []
    # A page token handed to B, replayed by A, still lists only A's agents.
    their_page = s.b.agents.ListAgents(agents_pb2.ListAgentsRequest(page_size=1))
    assert their_page.next_page_token
    ids, token = fetch(size=1000)(their_page.next_page_token)
    assert not set(ids) & s.theirs.ids() and token == ""


@case("AgentService.UpdateAgent")
def update_agent(s: Scene) -> None:
    def update(id: str, name: str) -> Agent:
        request = agents_pb2.UpdateAgentRequest(
            agent=Agent(id=id, name=name), update_mask=mask("name")
        )
        return s.a.agents.UpdateAgent(request, timeout=TIMEOUT).agent

    assert_hidden(s.server, lambda id: update(id, unique("renamed")), s.theirs.agent.id)
    # The name of B's agent is free in A.
    assert update(s.mine.agent.id, s.theirs.agent.name).name == s.theirs.agent.name


@case("AgentService.DeleteAgent")
def delete_agent(s: Scene) -> None:
    def delete(id: str) -> object:
        return s.a.agents.DeleteAgent(agents_pb2.DeleteAgentRequest(id=id), timeout=TIMEOUT)

    # B's spare agent could be deleted by B; B's main one is in use (FAILED_PRECONDITION for B).
    assert_hidden(s.server, delete, s.theirs.spare_agent.id)
    assert_hidden(s.server, delete, s.theirs.agent.id)


# ExperimentService: experiments


def _experiment(agent_id: str) -> Experiment:
    return Experiment(name=unique("experiment"), agent_id=agent_id, scenario_id=SCENARIO)


@case("ExperimentService.CreateExperiment")
def create_experiment(s: Scene) -> None:
    def create(agent_id: str, template_id: str = "") -> object:
        request = experiments_pb2.CreateExperimentRequest(
            experiment=_experiment(agent_id), template_id=template_id
        )
        return s.a.experiments.CreateExperiment(request, timeout=TIMEOUT)

    assert_hidden(s.server, create, s.theirs.agent.id)
    assert_hidden(s.server, lambda id: create(s.mine.agent.id, id), s.theirs.template.id)


@case("ExperimentService.GetExperiment")
def get_experiment(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetExperiment(experiments_pb2.GetExperimentRequest(id=id)),
        s.theirs.experiment.id,
    )


@case("ExperimentService.ListExperiments")
def list_experiments(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListExperimentsRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListExperiments(request, timeout=TIMEOUT)
            return [e.id for e in response.experiments], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.experiment.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'agent_id = "{s.theirs.agent.id}"')) == []
    assert all_ids(fetch(f'name = "{s.theirs.experiment.name}"')) == []


@case("ExperimentService.UpdateExperiment")
def update_experiment(s: Scene) -> None:
    def update(id: str, agent_id: str) -> object:
        request = experiments_pb2.UpdateExperimentRequest(
            experiment=Experiment(id=id, agent_id=agent_id, description="changed"),
            update_mask=mask("description", "agent_id"),
        )
        return s.a.experiments.UpdateExperiment(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: update(id, s.mine.agent.id), s.theirs.experiment.id)
    # A's own experiment cannot be pointed at B's agent.
    assert_hidden(s.server, lambda id: update(s.mine.experiment.id, id), s.theirs.agent.id)


@case("ExperimentService.DeleteExperiment")
def delete_experiment(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteExperiment(experiments_pb2.DeleteExperimentRequest(id=id)),
        s.theirs.experiment.id,
    )


# ExperimentService: simulations


@case("ExperimentService.CreateSimulation")
def create_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.CreateSimulation(
            experiments_pb2.CreateSimulationRequest(simulation=Simulation(experiment_id=id)),
            timeout=TIMEOUT,
        ),
        s.theirs.experiment.id,
    )


@case("ExperimentService.GetSimulation")
def get_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetSimulation(experiments_pb2.GetSimulationRequest(id=id)),
        s.theirs.simulation.id,
    )


@case("ExperimentService.ListSimulations")
def list_simulations(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListSimulationsRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListSimulations(request, timeout=TIMEOUT)
            return [x.id for x in response.simulations], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.simulation.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'experiment_id = "{s.theirs.experiment.id}"')) == []


@case("ExperimentService.UpdateSimulation")
def update_simulation(s: Scene) -> None:
    def update(id: str, experiment_id: str) -> object:
        request = experiments_pb2.UpdateSimulationRequest(
            simulation=Simulation(
                id=id, experiment_id=experiment_id, metadata=struct({"host": "w1"})
            ),
            update_mask=mask("metadata", "experiment_id"),
        )
        return s.a.experiments.UpdateSimulation(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: update(id, s.mine.experiment.id), s.theirs.simulation.id)
    # A's own simulation cannot be attached to B's experiment.
    assert_hidden(s.server, lambda id: update(s.mine.simulation.id, id), s.theirs.experiment.id)


@case("ExperimentService.DeleteSimulation")
def delete_simulation(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteSimulation(experiments_pb2.DeleteSimulationRequest(id=id)),
        s.theirs.simulation.id,
    )


# ExperimentService: templates


@case("ExperimentService.CreateTemplate")
def create_template(s: Scene) -> None:
    def create(client: Client, name: str) -> Template:
        request = experiments_pb2.CreateTemplateRequest(template=Template(name=name))
        return client.experiments.CreateTemplate(request, timeout=TIMEOUT).template

    # Names are unique per tenant: A may take the name of B's template, but not twice.
    twin = create(s.a, s.theirs.template.name)
    assert twin.id != s.theirs.template.id
    with pytest.raises(grpc.RpcError) as info:
        create(s.a, s.theirs.template.name)
    assert info.value.code() == ALREADY_EXISTS, info.value.details()
    assert_hidden(
        s.server,
        lambda id: s.b.experiments.GetTemplate(experiments_pb2.GetTemplateRequest(id=id)),
        twin.id,
    )


@case("ExperimentService.GetTemplate")
def get_template(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.GetTemplate(experiments_pb2.GetTemplateRequest(id=id)),
        s.theirs.template.id,
    )


@case("ExperimentService.ListTemplates")
def list_templates(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = experiments_pb2.ListTemplatesRequest(
                page_size=5, page_token=token, filter=filter
            )
            response = s.a.experiments.ListTemplates(request, timeout=TIMEOUT)
            return [t.id for t in response.templates], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.template.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'name = "{s.theirs.template.name}"')) == []


@case("ExperimentService.UpdateTemplate")
def update_template(s: Scene) -> None:
    def update(id: str, name: str) -> Template:
        request = experiments_pb2.UpdateTemplateRequest(
            template=Template(id=id, name=name), update_mask=mask("name")
        )
        return s.a.experiments.UpdateTemplate(request, timeout=TIMEOUT).template

    assert_hidden(s.server, lambda id: update(id, unique("renamed")), s.theirs.template.id)
    assert update(s.mine.template.id, s.theirs.template.name).name == s.theirs.template.name


@case("ExperimentService.DeleteTemplate")
def delete_template(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.experiments.DeleteTemplate(experiments_pb2.DeleteTemplateRequest(id=id)),
        s.theirs.template.id,
    )
