"""Tenant isolation end to end, for every RPC, on SQLite and PostgreSQL.

One server per backend with API keys required (on PostgreSQL it connects as the application role,
so row-level security applies too). Tenants A and B and a writer key each are made with the real
operator CLI. Each test gives both tenants fresh objects of every kind and checks one RPC with
A's key against B's objects:

- Get, Update and Delete of B's ids answer NOT_FOUND exactly like an id that never existed
  (same code, same message and ResourceInfo apart from the id itself), and change nothing;
- List never includes B's rows (A's own are there), not with B's ids in the filter nor with a
  page token B was given;
- Create (and Update) referring to B's objects answer NOT_FOUND; names are unique per tenant only;
- B's objects read the same before and after.

The RPCs come from the service descriptors: a new RPC without a case here fails its own test,
and the coverage test fails while the server serves a service this module does not know.
ScenarioService is a shared, read-only catalogue: both tenants see the same scenarios.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

import tests.support.tenancy_cases_catalog  # noqa: F401  (registers its cases in CASES)
import tests.support.tenancy_cases_runs  # noqa: F401  (registers its cases in CASES)
from simtrack.v1 import (
    agents_pb2,
    scenarios_pb2,
)
from tests.support import Client, ServerPool, SimtrackCli
from tests.support.protos import (
    SCENARIO,
    TIMEOUT,
)
from tests.support.tenancy import (
    ALL_SERVICES,
    CASES,
    ISOLATED_METHODS,
    SHARED_SERVICES,
    Scene,
    World,
    create_objects,
    observe,
)

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process


@pytest.fixture(scope="module")
def world(
    module_database_url: str, module_server_pool: ServerPool, simtrack_cli: SimtrackCli
) -> World:
    server = module_server_pool.start(module_database_url, auth=True)
    clients = []
    for tenant in ("tenant-a", "tenant-b"):
        simtrack_cli("tenants", "create", tenant, database_url=server.database_url)
        created = simtrack_cli(
            "keys",
            "create",
            "--tenant",
            tenant,
            "--role",
            "writer",
            database_url=server.database_url,
        )
        client = server.connect(f"Bearer {created.stdout.strip()}")
        # The key's first use (which stamps its last use) must work like any other.
        client.agents.ListAgents(agents_pb2.ListAgentsRequest(), timeout=TIMEOUT)
        clients.append(client)
    return World(server, *clients)


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(
        world.server,
        world.a,
        world.b,
        mine=create_objects(world.a, "a"),
        theirs=create_objects(world.b, "b"),
    )


# The tests


@pytest.mark.parametrize("method", ISOLATED_METHODS)
def test_tenant_a_cannot_reach_tenant_bs_objects(method: str, scene: Scene) -> None:
    check = CASES.get(method)
    assert check is not None, f"{method} has no tenant-isolation case: add one to CASES"
    theirs_before = observe(scene.b, scene.theirs)
    check(scene)
    theirs_after = observe(scene.b, scene.theirs)
    assert theirs_after == theirs_before, "B's objects changed"
    # The other way round too: B's lists hold none of A's objects.
    for name in ("agents", "templates", "experiments", "simulations", "runs"):
        rows = getattr(theirs_after[name], name)
        assert not {row.id for row in rows} & scene.mine.ids(), name


def test_every_served_rpc_has_an_isolation_case(world: World) -> None:
    """The cases cover exactly the RPCs of the tenant-owned services the server really serves."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(world.server.reflection.ServerReflectionInfo(iter([request]), timeout=10))
    served = {
        s.name
        for s in responses[0].list_services_response.service
        if s.name.startswith("simtrack.")
    }
    assert served == set(ALL_SERVICES), "a service the tests do not know about is served"
    served_methods = {
        f"{service.name}.{method.name}"
        for name in served - SHARED_SERVICES
        for service in [descriptor_pool.Default().FindServiceByName(name)]
        for method in service.methods
    }
    assert set(CASES) == served_methods == set(ISOLATED_METHODS)


def test_both_tenants_see_the_same_scenario_catalogue(world: World) -> None:
    def catalogue(client: Client) -> list[scenarios_pb2.Scenario]:
        scenarios: list[scenarios_pb2.Scenario] = []
        token = ""
        while True:
            response = client.scenarios.ListScenarios(
                scenarios_pb2.ListScenariosRequest(page_size=2, page_token=token), timeout=TIMEOUT
            )
            scenarios += response.scenarios
            token = response.next_page_token
            if not token:
                return scenarios

    theirs, mine = catalogue(world.b), catalogue(world.a)
    assert mine == theirs and SCENARIO in {s.id for s in mine}
    for scenario in mine:
        request = scenarios_pb2.GetScenarioRequest(id=scenario.id)
        assert (
            world.a.scenarios.GetScenario(request).scenario
            == world.b.scenarios.GetScenario(request).scenario
        )
