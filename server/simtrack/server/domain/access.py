"""Authentication and the operators' management of tenants and API keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from simtrack.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from simtrack.server.core.model import require_name, utcnow
from simtrack.server.core.tenancy import (
    Principal,
    Role,
    mint_key,
    parse_token,
    token_matches,
)
from simtrack.server.db.models import ApiKey, Tenant
from simtrack.server.domain.ports import UnitOfWorkFactory

# last_used_at is a hint for operators, not an audit log: write it at most this often per key.
LAST_USED_RESOLUTION = 60.0


@dataclass
class _Verified:
    principal: Principal
    secret_hash: str
    checked_at: float
    touched_at: float


class Authenticator:
    """Turns a presented API key into a Principal.

    Verified keys are remembered for ``cache_seconds`` so a busy client does not cost a query
    per call; a revoked key therefore stops working within that time (in every process).
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uow = uow
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._verified: dict[str, _Verified] = {}

    async def authenticate(self, token: str) -> Principal:
        return (await self.verify(token))[0]

    async def verify(self, token: str) -> tuple[Principal, float]:
        """The key's principal, and for how many more seconds that answer stands (after which
        it is read from the database again: what bounds how late a revocation bites).
        """
        prefix = parse_token(token)
        now = self.clock()
        entry = self._verified.get(prefix)
        if entry is None or now - entry.checked_at >= self.cache_seconds:
            entry = await self._load(prefix, now)
        if not token_matches(token, entry.secret_hash):
            raise Unauthenticated("unknown or revoked API key")
        if now - entry.touched_at >= LAST_USED_RESOLUTION:
            entry.touched_at = now
            async with self.uow() as uow:
                await uow.access.touch_key(str(entry.principal.key_id), utcnow())
                await uow.commit()
        return entry.principal, entry.checked_at + self.cache_seconds - now

    async def _load(self, prefix: str, now: float) -> _Verified:
        previous = self._verified.pop(prefix, None)
        async with self.uow() as uow:
            key = await uow.access.key_by_prefix(prefix)
        if key is None or key.revoked_at is not None:
            raise Unauthenticated("unknown or revoked API key")
        # Re-checking a key does not reset when its last use was stamped.
        touched = previous.touched_at if previous else now - LAST_USED_RESOLUTION
        entry = _Verified(Principal(key.tenant_id, key.role, key.id), key.secret_hash, now, touched)
        self._verified[prefix] = entry
        return entry


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its token, which is shown once and never stored."""

    key: ApiKey
    token: str


class AccessAdmin:
    """What operators do with ``simtrack tenants`` and ``simtrack keys``."""

    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self.uow = uow

    async def create_tenant(self, name: str) -> Tenant:
        name = require_name("name", name)
        async with self.uow() as uow:
            if await uow.access.tenant_named(name) is not None:
                raise AlreadyExists(f"a tenant named {name!r} already exists")
            tenant = Tenant(name=name)
            await uow.access.add(tenant)
            await uow.commit()
        return tenant

    async def tenants(self) -> list[Tenant]:
        async with self.uow() as uow:
            return await uow.access.tenants()

    async def find_tenant(self, name_or_id: str) -> Tenant:
        async with self.uow() as uow:
            tenant = await uow.access.tenant_named(name_or_id) or await uow.access.tenant(
                name_or_id
            )
        if tenant is None:
            raise NotFound("tenant", name_or_id)
        return tenant

    async def create_key(self, tenant: str, role: Role, name: str = "") -> CreatedKey:
        owner = await self.find_tenant(tenant)
        minted = mint_key()
        key = ApiKey(
            tenant_id=owner.id,
            role=role,
            name=name,
            prefix=minted.prefix,
            secret_hash=minted.secret_hash,
        )
        async with self.uow() as uow:
            await uow.access.add(key)
            await uow.commit()
        return CreatedKey(key, minted.token)

    async def keys(self, tenant: str | None = None) -> list[ApiKey]:
        tenant_id = (await self.find_tenant(tenant)).id if tenant else None
        async with self.uow() as uow:
            return await uow.access.keys(tenant_id)

    async def revoke_key(self, prefix: str) -> ApiKey:
        if not prefix:
            raise InvalidArgument.of("prefix", "is required")
        async with self.uow() as uow:
            key = await uow.access.key_by_prefix(prefix)
            if key is None:
                raise NotFound("api key", prefix)
            if key.revoked_at is None:
                key.revoked_at = utcnow()
                await uow.commit()
        return key
