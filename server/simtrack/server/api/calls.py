"""What every call of the API goes through, whatever carries it (gRPC or HTTP): who is calling
(``api.auth``), the lease that ends a call whose key is revoked, and the call's metrics.

Each transport adapts its own call to this and maps what escapes to its own statuses from the
same ``error_mapping``: the gRPC interceptor (``api.interceptor``) and the Connect adapter
(``api.http``) run the same servicer methods through the same ``Calls``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from simtrack.server.api.auth import CallAuthorizer, Metadata, until_revoked, while_valid
from simtrack.server.api.error_mapping import status_code_name
from simtrack.server.observability import ServerMetrics

T = TypeVar("T")


class Calls:
    """Runs a call as its authenticated caller and counts it."""

    def __init__(self, authorizer: CallAuthorizer, metrics: ServerMetrics) -> None:
        self.authorizer = authorizer
        self.metrics = metrics

    async def unary(
        self,
        method: str,
        metadata: Metadata | None,
        call: Callable[[], Awaitable[T]],
        *,
        lasting: bool = False,
    ) -> T:
        """``call()``'s response, run as the caller; ``lasting``: its requests are a stream
        (UploadArtifact), so its key is kept checked. Counted and timed: a unary call's length
        is the service's latency.
        """
        started = time.perf_counter()

        def done(code: str) -> None:
            # Before the status goes out: a caller that has its answer can scrape it.
            self.metrics.rpc_done(method, code, time.perf_counter() - started)

        try:
            async with self.authorizer.scope(method, metadata, lasting=lasting) as lease:
                response = await until_revoked(lease, call())
        except asyncio.CancelledError:  # the caller went away or its deadline passed
            done("CANCELLED")
            raise
        except Exception as exc:
            done(status_code_name(exc))
            raise
        done("OK")
        return response

    async def stream(
        self, method: str, metadata: Metadata | None, responses: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """``responses()`` as the caller, ended once its key no longer admits the call. Not
        timed: a stream's length says nothing about the service's latency (streams have
        gauges of their own).
        """
        async with self.authorizer.scope(method, metadata, lasting=True) as lease:
            async for response in while_valid(lease, responses()):
                yield response
