"""Keys, roles and the authenticator's cache, on fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import pytest

from simtrack.errors import PermissionDenied, Unauthenticated
from simtrack.server.api.auth import bearer_token, required_role
from simtrack.server.core.tenancy import (
    Principal,
    Role,
    current_principal,
    hash_token,
    mint_key,
    parse_token,
    reset_principal,
    set_principal,
    token_matches,
)
from simtrack.server.db.models import ApiKey
from simtrack.server.domain.access import Authenticator
from tests.unit.fakes import Unfaked


def test_minted_keys_are_unique_and_only_their_hash_matches() -> None:
    keys = [mint_key() for _ in range(50)]
    assert len({k.token for k in keys}) == 50
    key = keys[0]
    assert parse_token(key.token) == key.prefix
    assert key.secret_hash == hash_token(key.token) and key.token not in key.secret_hash
    assert token_matches(key.token, key.secret_hash)
    assert not token_matches(key.token + "x", key.secret_hash)
    assert not token_matches(keys[1].token, key.secret_hash)


@pytest.mark.parametrize(
    "token", ["", "garbage", "stk_short_x", "xyz_0123456789_secret", "stk_0123456789_"]
)
def test_malformed_tokens_are_unauthenticated(token: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_token(token)


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.WRITER) and Role.WRITER.allows(Role.READER)
    assert not Role.READER.allows(Role.WRITER) and not Role.WRITER.allows(Role.ADMIN)
    with pytest.raises(PermissionDenied, match="reader key cannot"):
        Principal("t", Role.READER).require(Role.WRITER, "call CreateAgent")


def test_methods_need_the_right_role() -> None:
    assert required_role("/simtrack.v1.AgentService/GetAgent") == Role.READER
    assert required_role("/simtrack.v1.RunService/ListParticipants") == Role.READER
    for method in ("CreateAgent", "UpdateRun", "DeleteExperiment", "CreateParticipant"):
        assert required_role(f"/simtrack.v1.X/{method}") == Role.WRITER


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ((("authorization", "Bearer abc"),), True),
        ((("authorization", "bearer  abc "),), True),
        ((), False),
        ((("authorization", "Basic abc"),), False),
        ((("authorization", "Bearer"),), False),
        ((("x-other", "Bearer abc"),), False),
    ],
)
def test_bearer_token(metadata: tuple[tuple[str, str], ...], ok: bool) -> None:
    if ok:
        assert bearer_token(metadata) == "abc"
    else:
        with pytest.raises(Unauthenticated):
            bearer_token(metadata)


def test_principal_is_per_context() -> None:
    token = set_principal(Principal("tenant-1", Role.READER))
    try:
        assert current_principal().tenant_id == "tenant-1"
    finally:
        reset_principal(token)
    nobody = set_principal(None)  # (the suite's autouse fixture set the local caller)
    try:
        with pytest.raises(RuntimeError, match="no principal"):
            current_principal()
    finally:
        reset_principal(nobody)


@dataclass
class FakeAccess(Unfaked):
    by_prefix: dict[str, ApiKey] = field(default_factory=dict)
    lookups: int = 0
    touches: int = 0

    async def key_by_prefix(self, prefix: str) -> ApiKey | None:
        self.lookups += 1
        return self.by_prefix.get(prefix)

    async def touch_key(self, key_id: str, when: object) -> None:
        self.touches += 1


class FakeUnitOfWork(Unfaked):
    def __init__(self, access: FakeAccess) -> None:
        self.access = access

    async def __aenter__(self) -> FakeUnitOfWork:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    async def commit(self) -> None:
        pass


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_authenticator_caches_verified_keys_and_sees_revocation_after_ttl() -> None:
    access = FakeAccess()
    minted = mint_key()
    key = ApiKey(
        id="k1", tenant_id="t1", role=Role.WRITER, prefix=minted.prefix,
        secret_hash=minted.secret_hash, revoked_at=None,
    )  # fmt: skip
    access.by_prefix[minted.prefix] = key
    clock = Clock()
    auth = Authenticator(lambda: FakeUnitOfWork(access), cache_seconds=2.0, clock=clock)
    principal = await auth.authenticate(minted.token)
    assert (principal.tenant_id, principal.role, principal.key_id) == ("t1", Role.WRITER, "k1")
    await auth.authenticate(minted.token)
    assert access.lookups == 1 and access.touches == 1  # cached; last use stamped once
    with pytest.raises(Unauthenticated):  # a wrong secret is refused even when cached
        await auth.authenticate(minted.token[:-3] + "xyz")
    key.revoked_at = object()  # type: ignore[assignment]
    await auth.authenticate(minted.token)  # still inside the cache window
    clock.now += 2.0
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(minted.token)
    assert access.lookups == 2
