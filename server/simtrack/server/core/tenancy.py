"""Who is calling: tenants, roles, API keys, and the caller's principal for this call.

The principal lives in a context variable set once per call by the API layer (as a ``Lease``);
repositories read it to scope every query, so no service or servicer passes a tenant around by
hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from simtrack.errors import PermissionDenied, SimtrackError, Unauthenticated

# Everything belongs to this tenant when auth is disabled (the local default).
DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_TENANT_NAME = "default"

TOKEN_PREFIX = "stk"
_PREFIX_LEN = 10


class Role(StrEnum):
    """What a key may do: readers read, writers also write, admins may do everything."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the current call."""

    tenant_id: str
    role: Role
    key_id: str | None = None

    def require(self, role: Role, action: str) -> None:
        if not self.role.allows(role):
            raise PermissionDenied(f"a {self.role} key cannot {action}; it needs {role}")


LOCAL_PRINCIPAL = Principal(DEFAULT_TENANT_ID, Role.ADMIN)


class Lease:
    """A call's hold on its principal, which lasts as long as the key admits the call.

    A call that stays open (a stream) outlives the cached check of its key: the API layer
    checks the key again while the call lasts and revokes the lease when the key no longer
    admits it (revoked, deleted, moved to another tenant, its role no longer enough). From then
    on the principal is refused (``check`` raises the reason), so nothing the call receives
    after the check that found it is taken in, and ``revocation`` tells whoever waits on the
    call to end it.
    """

    __slots__ = ("principal", "revoked", "revocation")

    def __init__(self, principal: Principal, *, revocable: bool = False) -> None:
        self.principal = principal
        self.revoked: SimtrackError | None = None
        # Resolved with the reason when revoked; None for a lease nobody re-checks.
        self.revocation: asyncio.Future[SimtrackError] | None = (
            asyncio.get_running_loop().create_future() if revocable else None
        )

    def check(self) -> Principal:
        """The principal, unless the lease was revoked (then the reason is raised)."""
        if self.revoked is not None:
            raise self.revoked.with_traceback(None)
        return self.principal

    def revoke(self, reason: SimtrackError) -> None:
        if self.revoked is None:
            self.revoked = reason
            if self.revocation is not None and not self.revocation.done():
                self.revocation.set_result(reason)


_current: ContextVar[Lease | None] = ContextVar("simtrack_principal", default=None)


def current_lease() -> Lease:
    """This call's lease on its caller (see ``current_principal``)."""
    lease = _current.get()
    if lease is None:
        raise RuntimeError("no principal set for this call: data access outside a request")
    return lease


def current_principal() -> Principal:
    """The caller of this call; a call that reaches the data without one is a bug, not a leak.

    Once the call's lease is revoked this raises the reason instead.
    """
    return current_lease().check()


def current_principal_or_none() -> Principal | None:
    lease = _current.get()
    return None if lease is None else lease.principal


def current_tenant() -> str:
    return current_principal().tenant_id


def set_principal(principal: Principal | Lease | None) -> object:
    """Make ``principal`` the caller; returns a token for ``reset_principal``."""
    return _current.set(Lease(principal) if isinstance(principal, Principal) else principal)


def reset_principal(token: object) -> None:
    try:
        _current.reset(token)  # type: ignore[arg-type]
    except ValueError:
        # A streaming call dropped by its client has its generators finalized later by
        # asyncio, in another context; that context's principal is not ours to restore.
        pass


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: the token is shown once; only prefix and hash are stored."""

    token: str
    prefix: str
    secret_hash: str


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()


def mint_key() -> NewKey:
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    token = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(token, prefix, hash_token(token))


def parse_token(token: str) -> str:
    """The lookup prefix of a well-formed token; anything else is UNAUTHENTICATED."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != _PREFIX_LEN or not parts[2]:
        raise Unauthenticated("malformed API key")
    return parts[1]


def token_matches(token: str, secret_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(token), secret_hash)


@contextmanager
def acting_for(tenant_id: str) -> Iterator[None]:
    """Run background work (sweeps) as an admin of one tenant: repositories and row-level
    security see that tenant's rows only.
    """
    token = set_principal(Principal(tenant_id, Role.ADMIN))
    try:
        yield
    finally:
        reset_principal(token)
