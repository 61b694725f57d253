"""Who is calling: tenants, roles, API keys, and the caller's principal for this call.

The principal lives in a context variable set once per call by the API layer; repositories read
it to scope every query, so no service or servicer passes a tenant around by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from simtrack.errors import PermissionDenied, Unauthenticated

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

_current: ContextVar[Principal | None] = ContextVar("simtrack_principal", default=None)


def current_principal() -> Principal:
    """The caller of this call; a call that reaches the data without one is a bug, not a leak."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no principal set for this call: data access outside a request")
    return principal


def current_principal_or_none() -> Principal | None:
    return _current.get()


def current_tenant() -> str:
    return current_principal().tenant_id


def set_principal(principal: Principal | None) -> object:
    """Make ``principal`` the caller; returns a token for ``reset_principal``."""
    return _current.set(principal)


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
    security see that tenant's rows only."""
    token = set_principal(Principal(tenant_id, Role.ADMIN))
    try:
        yield
    finally:
        reset_principal(token)
