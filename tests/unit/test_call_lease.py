"""Open calls hold their caller on a lease that the auth layer keeps checking.

The Authenticator is replaced by a fake whose answer the test changes (revoked, demoted, moved
to another tenant, database unreachable); the e2e tests (test_revocation.py) cover the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from simtrack.errors import PermissionDenied, SimtrackError, Unauthenticated, Unavailable
from simtrack.server.api import auth
from simtrack.server.api.auth import CallAuthorizer, until_revoked, while_valid
from simtrack.server.core.tenancy import Principal, Role, current_principal

CACHE = 0.02
WRITER = Principal("tenant-a", Role.WRITER, "key-1")
STREAM = "/simtrack.v1.TelemetryService/StreamRun"
WATCH = "/simtrack.v1.RunService/WatchRun"


class FakeKeys:
    """Stands in for the Authenticator: ``principal`` (or ``error``) for every check."""

    cache_seconds = CACHE

    def __init__(self) -> None:
        self.principal = WRITER
        self.error: SimtrackError | None = None
        self.checks = 0

    async def verify(self, token: str) -> tuple[Principal, float]:
        self.checks += 1
        if self.error is not None:
            raise self.error
        return self.principal, CACHE


METADATA = (("authorization", "Bearer stk_0123456789_secret"),)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> FakeKeys:
    monkeypatch.setattr(auth, "MIN_RECHECK", CACHE)
    return FakeKeys()


def authorizer(keys: FakeKeys) -> CallAuthorizer:
    return CallAuthorizer(keys)


class Idle:
    """A stream handler that says one thing, then waits for ever; notes its cleanup."""

    def __init__(self) -> None:
        self.cleaned_up = False

    async def responses(self) -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.Event().wait()
            yield "never"
        finally:
            self.cleaned_up = True


async def open_call(
    keys: FakeKeys, change: Callable[[], None], method: str = STREAM
) -> tuple[Idle, list[Any]]:
    """Run an idle stream under a lease; ``change`` the key after its first response; what the
    stream yielded and the error that ended it.
    """
    handler = Idle()
    said: list[Any] = []
    async with authorizer(keys).scope(method, METADATA, lasting=True) as lease:
        try:
            async for response in while_valid(lease, handler.responses()):
                said.append(response)
                await asyncio.sleep(3 * CACHE)  # a few checks that find nothing wrong
                change()
        except SimtrackError as error:
            said.append(error)
    return handler, said


def revoke(keys: FakeKeys) -> None:
    keys.error = Unauthenticated("unknown or revoked API key")


async def test_an_idle_stream_ends_with_the_reason_once_its_key_is_revoked(keys: FakeKeys) -> None:
    handler, said = await asyncio.wait_for(open_call(keys, lambda: revoke(keys)), 5)
    assert said[0] == "first" and len(said) == 2
    assert isinstance(said[1], Unauthenticated)
    assert said[1].message == "unknown or revoked API key (checked again while the call was open)"
    assert handler.cleaned_up, "the handler's cleanup did not run"
    assert keys.checks >= 2  # at least one that found nothing wrong, and the one that did


async def test_a_demoted_key_ends_a_writing_stream_but_not_a_reading_one(keys: FakeKeys) -> None:
    def demote() -> None:
        keys.principal = Principal("tenant-a", Role.READER, "key-1")

    _, said = await asyncio.wait_for(open_call(keys, demote), 5)
    assert isinstance(said[-1], PermissionDenied), said
    assert "a reader key cannot call StreamRun" in said[-1].message

    async with authorizer(keys).scope(WATCH, METADATA, lasting=True) as lease:
        await asyncio.sleep(5 * CACHE)
        assert lease.revoked is None, "a reader key may go on watching"


async def test_a_key_moved_to_another_tenant_ends_the_stream(keys: FakeKeys) -> None:
    def move() -> None:
        keys.principal = Principal("tenant-b", Role.WRITER, "key-1")

    _, said = await asyncio.wait_for(open_call(keys, move), 5)
    assert isinstance(said[-1], Unauthenticated), said
    assert "another tenant" in said[-1].message


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(CACHE / 4)


async def test_a_database_outage_during_a_check_does_not_end_the_call(keys: FakeKeys) -> None:
    async with authorizer(keys).scope(STREAM, METADATA, lasting=True) as lease:
        keys.error = Unavailable("the database is unreachable; retry later")
        await until(lambda: keys.checks >= 4)  # tried again and again, the call goes on
        assert lease.revoked is None
        keys.error = None
        checks = keys.checks
        await until(lambda: keys.checks >= checks + 2)
        assert lease.revoked is None


async def test_once_revoked_the_principal_is_refused_and_checks_stop(keys: FakeKeys) -> None:
    async with authorizer(keys).scope(STREAM, METADATA, lasting=True) as lease:
        assert current_principal() == WRITER
        revoke(keys)
        with pytest.raises(Unauthenticated):
            assert lease.revocation is not None
            await until_revoked(lease, asyncio.Event().wait())
        with pytest.raises(Unauthenticated):  # data access as this caller is refused now
            current_principal()
        checks = keys.checks
        await asyncio.sleep(3 * CACHE)
        assert keys.checks == checks, "a revoked lease is checked again"


async def test_unary_calls_are_checked_once_and_nothing_after_a_call(keys: FakeKeys) -> None:
    async with authorizer(keys).scope("/simtrack.v1.AgentService/GetAgent", METADATA) as lease:
        assert lease.revocation is None
        await asyncio.sleep(3 * CACHE)
    async with authorizer(keys).scope(STREAM, METADATA, lasting=True):
        pass
    await asyncio.sleep(3 * CACHE)
    assert keys.checks == 2
