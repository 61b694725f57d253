"""The artifact store: artifact files on a local (or shared) file system.

Layout: ``<root>/<tenant_id>/<run_id>/<artifact_id>``. An upload goes to a ``.partial-*`` file
beside its final name and is fsynced and renamed only when complete, so a file under its final
name is always whole; content streams through in chunks and is never held whole in memory. File
I/O runs in worker threads, off the event loop. Several server processes must share ``root``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from simtrack.errors import InvalidArgument

READ_CHUNK = 256 * 1024  # bytes per download message
PARTIAL_PREFIX = ".partial-"
PARTIAL_MAX_AGE = 24 * 3600.0  # an upload's partial file older than this was abandoned


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, tenant_id: str, run_id: str, artifact_id: str) -> Path:
        return self.root / tenant_id / run_id / artifact_id

    async def write(
        self,
        tenant_id: str,
        run_id: str,
        artifact_id: str,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
    ) -> tuple[int, str]:
        """Store ``chunks`` as the artifact's file; its size and SHA-256 (hex). Nothing is left
        behind when the chunks fail or exceed ``max_bytes``.
        """
        final = self.path(tenant_id, run_id, artifact_id)
        await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
        partial = final.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}")
        digest = hashlib.sha256()
        size = 0
        # Opened here, not in a thread: a cancel (the client gone) arriving while a thread
        # opened it would leave the file behind, created after the cleanup below.
        file: BinaryIO = open(partial, "xb")  # noqa: ASYNC230 - a local create, microseconds
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidArgument.of("chunk", f"the artifact exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
                await asyncio.to_thread(_flush_and_sync, file)
            finally:
                file.close()
            await asyncio.to_thread(os.replace, partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    async def read(self, tenant_id: str, run_id: str, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content in chunks of at most READ_CHUNK bytes."""
        path = self.path(tenant_id, run_id, artifact_id)
        file: BinaryIO = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, READ_CHUNK):
                yield chunk
        finally:
            file.close()

    async def remove(self, tenant_id: str, run_id: str, artifact_id: str) -> None:
        await asyncio.to_thread(self.path(tenant_id, run_id, artifact_id).unlink, missing_ok=True)

    def run_folders(self) -> dict[str, list[str]]:
        """The run folders present, by tenant."""
        if not self.root.is_dir():
            return {}
        return {
            tenant.name: [run.name for run in tenant.iterdir() if run.is_dir()]
            for tenant in self.root.iterdir()
            if tenant.is_dir()
        }

    def remove_run(self, tenant_id: str, run_id: str) -> None:
        shutil.rmtree(self.root / tenant_id / run_id, ignore_errors=True)

    def remove_abandoned_partials(self, tenant_id: str, run_id: str) -> None:
        cutoff = time.time() - PARTIAL_MAX_AGE
        for partial in (self.root / tenant_id / run_id).glob(f"{PARTIAL_PREFIX}*"):
            if partial.stat().st_mtime < cutoff:
                partial.unlink(missing_ok=True)


def _flush_and_sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())
