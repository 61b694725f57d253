"""Artifacts: files stored with runs, streamed in and out in chunks.

An upload checks its metadata and that the run exists before reading any content, writes the
content to the artifact store, and only then records the row, so a listed artifact is complete;
when the row cannot be written the file is removed again. Files of deleted runs (a run, or an
experiment with its runs, is deleted in the database) are removed by ``sweep``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from simtrack.errors import AlreadyExists, InvalidArgument, NotFound
from simtrack.server.artifact_store import ArtifactStore
from simtrack.server.core.filters import ordered_text, parse_int, parse_time
from simtrack.server.core.listing import Listing, Page, enum_parser
from simtrack.server.core.model import (
    ArtifactType,
    bounded_text,
    require_id,
    require_name,
)
from simtrack.server.core.tenancy import acting_for, current_tenant
from simtrack.server.db.models import Artifact, new_id
from simtrack.server.domain.ports import UnitOfWork, UnitOfWorkFactory
from simtrack.server.domain.runs import load_run

CONTENT_TYPE_MAX = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CHUNK = 1 << 20  # bytes per upload message
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ARTIFACT_LISTING = Listing(
    "artifacts",
    {
        "name": ordered_text,
        "type": enum_parser(ArtifactType),
        "content_type": str,
        "create_time": parse_time,
        "size_bytes": parse_int,
    },
)


async def load_artifact(uow: UnitOfWork, artifact_id: str, field: str = "id") -> Artifact:
    artifact = await uow.artifacts.get(require_id(field, artifact_id))
    if artifact is None:
        raise NotFound("artifact", artifact_id, field)
    return artifact


async def checked_chunks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if len(chunk) > MAX_CHUNK:
            raise InvalidArgument.of("chunk", f"at most {MAX_CHUNK} bytes per message")
        yield chunk


class ArtifactService:
    def __init__(self, uow: UnitOfWorkFactory, store: ArtifactStore, max_bytes: int) -> None:
        self.uow = uow
        self.store = store
        self.max_bytes = max_bytes

    async def upload(
        self,
        *,
        run_id: str,
        name: str,
        type: ArtifactType | None,
        content_type: str,
        sha256: str,
        chunks: AsyncIterator[bytes],
    ) -> Artifact:
        name = require_name("metadata.artifact.name", name)
        content_type = (
            bounded_text("metadata.artifact.content_type", content_type, max_len=CONTENT_TYPE_MAX)
            or DEFAULT_CONTENT_TYPE
        )
        expected = sha256.lower()
        if expected and not _SHA256.match(expected):
            raise InvalidArgument.of("metadata.sha256", "must be 64 hex digits")
        async with self.uow() as uow:
            run = await load_run(uow, run_id, "metadata.artifact.run_id")
            await self._check_name_free(uow, run.id, name)
        tenant_id = current_tenant()
        artifact_id = new_id()
        size, digest = await self.store.write(
            tenant_id, run.id, artifact_id, checked_chunks(chunks), self.max_bytes
        )
        try:
            if expected and digest != expected:
                raise InvalidArgument.of(
                    "metadata.sha256", f"the content's SHA-256 is {digest}, not {expected}"
                )
            artifact = Artifact(
                id=artifact_id,
                run_id=run.id,
                name=name,
                type=type or ArtifactType.OTHER,
                content_type=content_type,
                size_bytes=size,
                sha256=digest,
            )
            async with self.uow() as uow:
                await load_run(uow, run.id, "metadata.artifact.run_id")  # not deleted meanwhile
                await self._check_name_free(uow, run.id, name)
                await uow.artifacts.add(artifact)
                await uow.commit()
        except BaseException:
            await self.store.remove(tenant_id, run.id, artifact_id)
            raise
        return artifact

    @staticmethod
    async def _check_name_free(uow: UnitOfWork, run_id: str, name: str) -> None:
        if await uow.artifacts.named(run_id, name):
            raise AlreadyExists(f"the run already has an artifact named {name!r}")

    async def get(self, artifact_id: str) -> Artifact:
        async with self.uow() as uow:
            return await load_artifact(uow, artifact_id)

    async def content(self, artifact_id: str) -> tuple[Artifact, AsyncIterator[bytes]]:
        """The artifact and its content, in chunks."""
        artifact = await self.get(artifact_id)
        return artifact, self.store.read(artifact.tenant_id, artifact.run_id, artifact.id)

    async def list(
        self, run_id: str, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[Artifact]:
        run_id = require_id("run_id", run_id)
        page = ARTIFACT_LISTING.request(page_size, page_token, filter_text, run_id, order_by)
        async with self.uow() as uow:
            await load_run(uow, run_id, "run_id")
            rows, cursor = await uow.artifacts.list(page, run_id=run_id)
        return Page(rows, page.next_token(cursor))

    async def delete(self, artifact_id: str) -> None:
        async with self.uow() as uow:
            artifact = await load_artifact(uow, artifact_id)
            await uow.artifacts.delete(artifact)
            await uow.commit()
        await self.store.remove(artifact.tenant_id, artifact.run_id, artifact.id)

    async def sweep(self) -> int:
        """Remove the files of runs that no longer exist, and abandoned partial uploads; how
        many run folders were removed.
        """
        removed = 0
        for tenant_id, run_ids in (await asyncio.to_thread(self.store.run_folders)).items():
            with acting_for(tenant_id):
                async with self.uow() as uow:
                    alive = await uow.runs.existing(run_ids)
            for run_id in run_ids:
                if run_id in alive:
                    await asyncio.to_thread(self.store.remove_abandoned_partials, tenant_id, run_id)
                else:
                    await asyncio.to_thread(self.store.remove_run, tenant_id, run_id)
                    removed += 1
        return removed
