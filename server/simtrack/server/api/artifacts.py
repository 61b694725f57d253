"""ArtifactService: proto <-> domain for the files of runs, uploaded and downloaded in chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from simtrack.errors import InvalidArgument
from simtrack.server.api.convert import EnumMapping
from simtrack.server.api.convert import timestamp as ts
from simtrack.server.core.model import ArtifactType
from simtrack.server.db.models import Artifact
from simtrack.server.domain.artifacts import ArtifactService
from simtrack.v1 import artifacts_pb2 as pb
from simtrack.v1 import artifacts_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

ARTIFACT_TYPE = EnumMapping(pb.ArtifactType, ArtifactType, "ARTIFACT_TYPE_")


def artifact_to_proto(a: Artifact) -> pb.Artifact:
    return pb.Artifact(
        id=a.id,
        run_id=a.run_id,
        name=a.name,
        type=ARTIFACT_TYPE.to_proto(a.type),
        content_type=a.content_type,
        size_bytes=a.size_bytes,
        sha256=a.sha256,
        create_time=ts(a.created_at),
    )


async def _chunks(requests: AsyncIterator[pb.UploadArtifactRequest]) -> AsyncIterator[bytes]:
    """The content messages after the metadata."""
    async for message in requests:
        if message.WhichOneof("kind") != "chunk":
            raise InvalidArgument.of("metadata", "only the first message carries metadata")
        yield message.chunk


class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    """Files of runs, streamed in and out in chunks."""

    def __init__(self, artifacts: ArtifactService) -> None:
        self.artifacts = artifacts

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Context
    ) -> pb.UploadArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "metadata":
            raise InvalidArgument.of("metadata", "the first message must carry the metadata")
        metadata = first.metadata
        a = metadata.artifact
        artifact = await self.artifacts.upload(
            run_id=a.run_id,
            name=a.name,
            type=ARTIFACT_TYPE.to_domain("metadata.artifact.type", a.type),
            content_type=a.content_type,
            sha256=metadata.sha256,
            chunks=_chunks(request_iterator),
        )
        return pb.UploadArtifactResponse(artifact=artifact_to_proto(artifact))

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: Context
    ) -> pb.GetArtifactResponse:
        return pb.GetArtifactResponse(
            artifact=artifact_to_proto(await self.artifacts.get(request.id))
        )

    async def GetArtifactContent(
        self, request: pb.GetArtifactContentRequest, context: Context
    ) -> AsyncIterator[pb.GetArtifactContentResponse]:
        artifact, content = await self.artifacts.content(request.id)
        yield pb.GetArtifactContentResponse(artifact=artifact_to_proto(artifact))
        async for chunk in content:
            yield pb.GetArtifactContentResponse(chunk=chunk)

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        page = await self.artifacts.list(
            request.run_id, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListArtifactsResponse(
            artifacts=[artifact_to_proto(a) for a in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: Context
    ) -> pb.DeleteArtifactResponse:
        await self.artifacts.delete(request.id)
        return pb.DeleteArtifactResponse()
