"""The real domain services on one database (``Services``), for the integration tests: the
services themselves, helpers that create agents, experiments and runs, and raw SQL access.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from simtrack.server.core.model import Framework, utcnow
from simtrack.server.core.tenancy import DEFAULT_TENANT_ID
from simtrack.server.db.engine import create_engine
from simtrack.server.db.ingest_store import IngestStore
from simtrack.server.db.models import Agent, Experiment, Run, UTCDateTime
from simtrack.server.db.reads import SqlReads
from simtrack.server.db.unit_of_work import SqlUnitOfWorkFactory, tenant_aware_sessions
from simtrack.server.domain.agents import AgentService
from simtrack.server.domain.experiments import ExperimentService, TemplateService
from simtrack.server.domain.runs import ParticipantService, RunService
from simtrack.server.domain.simulations import SimulationService
from simtrack.server.ingest.writer import ChunksStored, GroupCommitWriter
from simtrack.server.scenario_catalogue import ScenarioCatalogue
from tests.support.databases import as_app_role

# The tier-0 scenario: small, stable, and its duration (60 ticks) is asserted on.
SCENARIO_ID = "tier0-tutorial"


@dataclass
class Services:
    """The domain services on one database, plus raw access for SQL-level checks."""

    backend: str
    url: str
    engine: AsyncEngine
    uow: SqlUnitOfWorkFactory
    catalogue: ScenarioCatalogue
    agents: AgentService
    experiments: ExperimentService
    templates: TemplateService
    simulations: SimulationService
    runs: RunService
    participants: ParticipantService
    reads: SqlReads
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def build(
        cls, backend: str, url: str, catalogue: ScenarioCatalogue, **engine_kwargs: Any
    ) -> Services:
        """The services on a new engine for ``url``; the caller disposes of ``engine``."""
        engine = create_engine(url, **engine_kwargs)
        uow = SqlUnitOfWorkFactory(tenant_aware_sessions(engine))
        reads = SqlReads(engine)
        return cls(
            backend=backend,
            url=url,
            engine=engine,
            uow=uow,
            catalogue=catalogue,
            agents=AgentService(uow),
            experiments=ExperimentService(uow, catalogue),
            templates=TemplateService(uow),
            simulations=SimulationService(uow),
            runs=RunService(uow, catalogue, reads),
            participants=ParticipantService(uow),
            reads=reads,
        )

    async def close(self) -> None:
        """Close the reads' connections and dispose of the engine."""
        await self.reads.close()
        await self.engine.dispose()

    def unique_name(self, prefix: str) -> str:
        return f"{prefix}-{next(self._names)}"

    async def agent(
        self,
        name: str | None = None,
        *,
        framework: Framework = Framework.BASELINE,
        config: Mapping[str, Any] | None = None,
    ) -> Agent:
        return await self.agents.create(
            name=name or self.unique_name("agent"), framework=framework, config=config or {}
        )

    async def experiment(
        self,
        agent_id: str | None = None,
        *,
        name: str | None = None,
        scenario_id: str = SCENARIO_ID,
        params: Mapping[str, Any] | None = None,
        template_id: str = "",
    ) -> Experiment:
        if agent_id is None:
            agent_id = (await self.agent()).id
        return await self.experiments.create(
            name=name or self.unique_name("experiment"),
            description="",
            agent_id=agent_id,
            scenario_id=scenario_id,
            params=params or {},
            hypothesis="",
            results_summary={},
            template_id=template_id,
        )

    async def run(
        self,
        experiment_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        total_ticks: int = 0,
    ) -> Run:
        return await self.runs.create(
            experiment_id=experiment_id,
            status=None,
            params=params or {},
            total_ticks=total_ticks,
            worker_id="",
        )

    async def execute(self, sql: str, **params: Any) -> None:
        """Run one raw SQL statement in its own transaction.

        ``:now`` binds the current time and ``:tenant`` the default tenant.
        """
        statement = text(sql)
        if ":tenant" in sql:
            params.setdefault("tenant", DEFAULT_TENANT_ID)
        if ":now" in sql:
            statement = statement.bindparams(bindparam("now", type_=UTCDateTime()))
            params.setdefault("now", utcnow())
        async with self.engine.begin() as connection:
            await connection.execute(statement, params)

    async def fetch(self, statement: Any, **params: Any) -> Sequence[Row[Any]]:
        """Run a read (raw SQL text or a SQLAlchemy statement) and return all its rows."""
        if isinstance(statement, str):
            statement = text(statement)
        async with self.engine.connect() as connection:
            return (await connection.execute(statement, params)).all()

    async def scalar(self, statement: Any, **params: Any) -> Any:
        """The single value a read returns."""
        rows = await self.fetch(statement, **params)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]


# Build services on the test's database (or ``url``); other arguments go to the engine.
MakeServices = Callable[..., Services]


@dataclass
class CommitLog:
    """A group-commit writer's observer that keeps the batches of each commit that landed."""

    commits: list[int] = field(default_factory=list)

    def group_committed(self, batches: int, points: int, events: int, seconds: float) -> None:
        self.commits.append(batches)


def server_url(services: Services) -> str:
    """The URL the server connects with: on PostgreSQL its role, under row-level security."""
    return services.url if services.backend == "sqlite" else as_app_role(services.url)


@asynccontextmanager
async def running_writer(
    services: Services, chunks_stored: ChunksStored | None = None, stage: bool = False
) -> AsyncIterator[GroupCommitWriter]:
    """The group-commit writer, as a server runs it, on the test's database (telling
    ``chunks_stored`` what it stored, as a server tells its compaction's ledger; staging
    small messages if ``stage``, as a server that compacts does).
    """
    engine = create_engine(server_url(services), poolclass=NullPool)

    async def notify(run_ids: Iterable[str]) -> None:
        pass

    writer = GroupCommitWriter(
        IngestStore(engine), notify, CommitLog(), None, chunks_stored, stage=stage
    )
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
        await engine.dispose()
