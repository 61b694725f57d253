"""Who may call what: the caller's key from the call's metadata, and each method's role.

A call that stays open (a stream) holds its caller on a lease (``tenancy.Lease``): its key is
checked again whenever the cached check of it expires, and once the key no longer admits the
call the lease is revoked and the call ends with the reason (``until_revoked``,
``while_valid``). One check per cache interval and call, none per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from simtrack.errors import PermissionDenied, SimtrackError, Unauthenticated, Unavailable
from simtrack.server.core.tenancy import (
    LOCAL_PRINCIPAL,
    Lease,
    Principal,
    Role,
    reset_principal,
    set_principal,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_READ_METHODS = ("Get", "List", "Watch", "Compare", "Read")
# An open call's key is checked again when its cached check expires; with a cache shorter than
# this (SIMTRACK_AUTH_CACHE_SECONDS=0: no cache), this often, not in a tight loop.
MIN_RECHECK = 0.5


def required_role(method: str) -> Role:
    """Reads need a reader key, everything else a writer key (admins may do anything)."""
    name = method.rsplit("/", 1)[-1]
    return Role.READER if name.startswith(_READ_METHODS) else Role.WRITER


class KeyChecker(Protocol):
    """What the authorizer asks of the authenticator (``domain.access.Authenticator``)."""

    @property
    def cache_seconds(self) -> float: ...

    async def verify(self, token: str) -> tuple[Principal, float]:
        """The key's principal, and for how long that answer stands."""
        ...


Metadata = Iterable[tuple[str, Any]]
"""A call's metadata as (lower-case key, value) pairs: gRPC's, or HTTP's request headers."""


def bearer_token(metadata: Metadata | None) -> str:
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

    def __init__(self, authenticator: KeyChecker | None) -> None:
        self.authenticator = authenticator
        self._keepers: set[asyncio.Task[None]] = set()

    async def _admit(self, method: str, token: str) -> tuple[Principal, float]:
        """The caller, if its key may call ``method``; and how long that answer stands."""
        assert self.authenticator is not None
        principal, fresh_for = await self.authenticator.verify(token)
        principal.require(required_role(method), f"call {method.rsplit('/', 1)[-1]}")
        return principal, fresh_for

    @asynccontextmanager
    async def scope(
        self, method: str, metadata: Metadata | None, *, lasting: bool = False
    ) -> AsyncIterator[Lease]:
        """Run the body as the call's caller; a ``lasting`` call's key is kept checked."""
        closed: asyncio.Event | None = None
        if self.authenticator is None:
            lease = Lease(LOCAL_PRINCIPAL)
        else:
            token = bearer_token(metadata)
            principal, fresh_for = await self._admit(method, token)
            lease = Lease(principal, revocable=lasting)
            if lasting:
                closed = asyncio.Event()
                keeper = asyncio.create_task(self._keep(lease, method, token, fresh_for, closed))
                self._keepers.add(keeper)
                keeper.add_done_callback(self._keepers.discard)
        context_token = set_principal(lease)
        try:
            yield lease
        finally:
            if closed is not None:
                # Not cancelled: a check half-way through a driver call is left to finish.
                closed.set()
            reset_principal(context_token)

    async def _keep(
        self, lease: Lease, method: str, token: str, fresh_for: float, closed: asyncio.Event
    ) -> None:
        """Check the key again whenever the cached check expires, until the call ends; revoke
        the lease once the key no longer admits the call.
        """
        assert self.authenticator is not None
        shortest = MIN_RECHECK if self.authenticator.cache_seconds < MIN_RECHECK else 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(fresh_for, shortest)):
                    await closed.wait()
            if closed.is_set():
                return
            try:
                principal, fresh_for = await self._admit(method, token)
                if principal.tenant_id != lease.principal.tenant_id:
                    raise Unauthenticated("the API key now belongs to another tenant")
            except (Unauthenticated, PermissionDenied) as error:
                reason = f"{error.message} (checked again while the call was open)"
                lease.revoke(type(error)(reason))
                return
            except Exception as error:
                if closed.is_set():  # the call ended meanwhile (e.g. the server is stopping)
                    return
                if not isinstance(error, SimtrackError):
                    log.exception("checking the key of an open call failed")
                    lease.revoke(Unavailable("the API key could not be checked again; call again"))
                    return
                # The database is unreachable: the call's own work needs it too, so the call is
                # left to fail (or carry on) by itself; the key is checked again shortly.
                log.warning("could not check the key of an open call again: %s", error.message)
                fresh_for = MIN_RECHECK


async def until_revoked(lease: Lease, call: Awaitable[T]) -> T:
    """``call``'s result, unless ``lease`` is revoked first: then ``call`` is cancelled (its
    cleanup runs) and the lease's reason is raised.
    """
    revocation = lease.revocation
    if revocation is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        await asyncio.wait((task, revocation), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the call itself is being cancelled (its client left)
        await _cancel(task)
        raise
    if task.done():
        return task.result()
    await _cancel(task)
    raise revocation.result().with_traceback(None)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until its cleanup ran."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # seen: what ends the call is the revocation (or its own cancel)


async def while_valid(lease: Lease, responses: AsyncIterator[T]) -> AsyncIterator[T]:
    """``responses`` until ``lease`` is revoked: then the step in progress is cancelled (the
    handler's cleanup runs) and the lease's reason is raised; an idle stream ends too.
    """
    if lease.revocation is None:
        async for response in responses:
            yield response
        return
    try:
        while True:
            step: T | None = await until_revoked(lease, _next(responses))
            if step is None:
                return
            yield step
    finally:
        if isinstance(responses, AsyncGenerator):
            await responses.aclose()


async def _next(responses: AsyncIterator[T]) -> T | None:
    return await anext(responses, None)
