"""Who may call what: the caller's key from the call's metadata, and each method's role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from simtrack.errors import Unauthenticated
from simtrack.server.domain.access import Authenticator
from simtrack.server.domain.tenancy import (
    LOCAL_PRINCIPAL,
    Principal,
    Role,
    reset_principal,
    set_principal,
)

_READ_METHODS = ("Get", "List", "Watch")


def required_role(method: str) -> Role:
    """Reads need a reader key, everything else a writer key (admins may do anything)."""
    name = method.rsplit("/", 1)[-1]
    return Role.READER if name.startswith(_READ_METHODS) else Role.WRITER


def bearer_token(metadata: Any) -> str:
    """The key in ``authorization: Bearer <key>`` metadata; never logged."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
    scheme, _, token = str(values[0]).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed authorization metadata: expected 'Bearer <key>'")
    return token.strip()


class CallAuthorizer:
    """Establishes the caller of each call (or the local principal when auth is disabled)."""

    def __init__(self, authenticator: Authenticator | None) -> None:
        self.authenticator = authenticator

    async def principal(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        if self.authenticator is None:
            return LOCAL_PRINCIPAL
        principal = await self.authenticator.authenticate(
            bearer_token(context.invocation_metadata())
        )
        principal.require(required_role(method), f"call {method.rsplit('/', 1)[-1]}")
        return principal

    @asynccontextmanager
    async def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Principal]:
        """Run the body as the call's caller."""
        principal = await self.principal(method, context)
        token = set_principal(principal)
        try:
            yield principal
        finally:
            reset_principal(token)
