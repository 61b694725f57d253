"""Integration fixtures: the real domain services on a fresh migrated database (SQLite, PostgreSQL).

``services`` gives every test its own database (``database_url`` from tests/conftest.py) with an
engine, a unit-of-work factory, the built-in scenario catalogue and all domain services on top.
``make_services`` builds more of them on the same database with other engine settings (a bigger
pool for the concurrency tests); every engine is disposed after the test. ``Services`` itself
is in tests/support/services.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from simtrack.server.ingest.writer import GroupCommitWriter
from simtrack.server.scenario_catalogue import (
    ScenarioCatalogue,
    default_scenarios_dir,
    load_catalogue,
)
from tests.support import SCENARIO_ID, CommitLog, MakeServices, Services, running_writer


@pytest.fixture(scope="session")
def catalogue() -> ScenarioCatalogue:
    """The built-in scenarios, loaded once; they must all load cleanly."""
    loaded = load_catalogue(default_scenarios_dir())
    assert not loaded.problems, [str(p) for p in loaded.problems]
    assert SCENARIO_ID in loaded
    return loaded


@pytest.fixture
async def make_services(
    backend: str, database_url: str, catalogue: ScenarioCatalogue
) -> AsyncIterator[MakeServices]:
    """Build services on this test's database (or ``url``); other arguments go to the engine."""
    made: list[Services] = []

    def make(url: str | None = None, **engine_kwargs: Any) -> Services:
        services = Services.build(backend, url or database_url, catalogue, **engine_kwargs)
        made.append(services)
        return services

    try:
        yield make
    finally:
        for services in made:
            await services.close()


@pytest.fixture
async def services(make_services: MakeServices) -> Services:
    """The domain services on a fresh migrated database of this test's own."""
    return make_services()


@pytest.fixture
def stage() -> bool:
    """Whether ``writer`` stages small messages (a module runs both ways by overriding this
    with a parametrized ``stage``).
    """
    return False


@pytest.fixture
async def writer(
    services: Services, stage: bool
) -> AsyncIterator[tuple[GroupCommitWriter, CommitLog]]:
    """A started ingest writer on this test's database, connected as the server connects
    (staging small messages if ``stage``), and the log of its commits.
    """
    async with running_writer(services, stage=stage) as started:
        assert isinstance(started.observer, CommitLog)
        yield started, started.observer
