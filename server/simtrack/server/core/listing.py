"""List requests: page size and token validation; the filter language is ``core/filters.py``.

Each listable entity declares its filterable fields and how to parse their values (an enum's
in either spelling, see EnumField), so a bad filter is INVALID_ARGUMENT naming ``filter``. The
protos document each List request's filter; a unit test holds those comments to the fields
declared here. ``FILTER_BOUNDS`` caps a filter's length, terms and nesting before any query is
built: every term is a bound parameter, and a filter that could never run (PostgreSQL takes at
most 65,535 parameters) must be refused at once, not after seconds of work as "retry later".

Page tokens are opaque to callers; a token this server did not issue, whatever it decodes to,
is INVALID_ARGUMENT naming ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar, cast

from simtrack.errors import InvalidArgument
from simtrack.server.core.filters import (
    BadFilterValue,
    FieldParsers,
    Filter,
    parse_filter,
)
from simtrack.server.core.model import INT64_MAX, INT64_MIN, NAME_MAX, NUL
from simtrack.server.core.ordering import (
    SortKey,
    Types,
    decode_values,
    encode_values,
    key_types,
    parse_order_by,
)

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Ours are a digest, a position and sort keys: a metric name of 200 characters beyond the BMP,
# JSON-escaped, is ~2,400 characters; twice (its position and a key), base64-encoded, ~6,500.
MAX_TOKEN_LENGTH = 8192


# The default order of most lists: creation order, (created_at, id).
CREATION_ORDER: Types = (datetime, str)


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's values of the list's default order (``position``:
    (created_at, id), a metric's name, ...) and of the request's sort keys, if any; the keyset
    the next page starts after.
    """

    position: tuple[Any, ...]
    keys: tuple[Any, ...] = ()


@dataclass(frozen=True)
class PageRequest:
    """A validated list request; ``scope`` is what its tokens are bound to (filter, parent)."""

    size: int
    after: Cursor | None
    conditions: tuple[Filter, ...]  # all must hold (``core/filters.py``)
    scope: str
    order: tuple[SortKey, ...] = ()  # before the default order (``core/ordering.py``)

    def next_token(self, cursor: Cursor | None) -> str:
        """The next_page_token for a page that ended at ``cursor`` (empty on the last page)."""
        return encode_token(cursor, self.scope) if cursor is not None else ""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and the token of the next one."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True)
class Listing:
    """A listable collection: its name, which its page tokens are bound to, its filters (the
    orderable of which ``order_by`` takes), and the types of its default order's values.
    """

    collection: str
    fields: FieldParsers
    position: Types = CREATION_ORDER

    def request(
        self, size: int, token: str, filter_text: str, parent: str = "", order_by: str = ""
    ) -> PageRequest:
        """Validate page_size, page_token, filter and order_by of a List call (of
        ``parent``'s children).
        """
        size = page_size(size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        conditions = parse_filter(filter_text, self.fields)
        order = parse_order_by(order_by, self.fields)
        scope = f"{self.collection}/{parent}|{filter_text.strip()}"
        if order:  # a token resumes the order it was issued for
            scope += "|" + ",".join(f"{k.field}{' desc' if k.descending else ''}" for k in order)
        after = None
        if token:
            after = decode_token(token, scope, self.position, key_types(self.fields, order))
        return PageRequest(size, after, conditions, scope, order)


def page_size(size: int, default: int, maximum: int, field: str = "page_size") -> int:
    """A requested page size checked against ``maximum``; 0 means ``default``."""
    if size < 0 or size > maximum:
        raise InvalidArgument.of(field, f"must be between 0 and {maximum}, got {size}")
    return size or default


_NOT_OURS = "is not a token this server issued"


def _seal(payload: dict[str, Any], scope: str) -> str:
    """``payload`` as an opaque page token, bound to the list (``scope``) it was made for."""
    payload = {**payload, "s": hashlib.sha256(scope.encode()).hexdigest()[:16]}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _unseal(token: str, scope: str) -> dict[str, Any]:
    """The payload of a token made by ``_seal`` for ``scope``; else INVALID_ARGUMENT."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument.of("page_token", _NOT_OURS)
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        digest = payload.pop("s")
    except (
        binascii.Error,
        ValueError,
        KeyError,
        TypeError,
        UnicodeError,
        AttributeError,
        RecursionError,  # JSON nested deeper than the parser goes
    ):
        raise InvalidArgument.of("page_token", _NOT_OURS) from None
    if digest != hashlib.sha256(scope.encode()).hexdigest()[:16]:
        raise InvalidArgument.of("page_token", "was issued for a different filter or parent")
    return cast(dict[str, Any], payload)


def encode_token(cursor: Cursor, scope: str) -> str:
    """An opaque token for the page after ``cursor``, bound to the list it was made for."""
    payload: dict[str, Any] = {"p": encode_values(cursor.position)}
    if cursor.keys:
        payload["k"] = encode_values(cursor.keys)
    return _seal(payload, scope)


def decode_token(
    token: str, scope: str, position: Sequence[type], keys: Sequence[Types] = ()
) -> Cursor:
    """Read a token made by encode_token (a ``position`` of these types, sort values of
    ``keys``); anything else is INVALID_ARGUMENT on page_token.
    """
    payload = _unseal(token, scope)
    try:
        # Times in UTC, as every stored time is (and as ours are): none lies beyond years
        # 1-9999.
        at = decode_values(payload.get("p"), [(t,) for t in position], nullable=False)
        values = decode_values(payload["k"], keys, nullable=True) if keys else ()
    except (ValueError, OverflowError, KeyError):
        raise InvalidArgument.of("page_token", _NOT_OURS) from None
    if "" in at:  # no id, no name
        raise InvalidArgument.of("page_token", _NOT_OURS)
    return Cursor(at, values)


def encode_position(position: tuple[int | str, ...], scope: str) -> str:
    """A token for the page after ``position`` in a list ordered by these keys."""
    return _seal({"p": list(position)}, scope)


def decode_position(token: str, scope: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """Read a token made by encode_position for ``scope``, its keys of ``types``; else
    INVALID_ARGUMENT.
    """
    position = _unseal(token, scope).get("p")
    if (
        not isinstance(position, list)
        or len(position) != len(types)
        or not all(type(v) is t and _storable(v) for v, t in zip(position, types, strict=True))
    ):
        raise InvalidArgument.of("page_token", _NOT_OURS)
    return tuple(position)


def _storable(key: Any) -> bool:
    """Whether a key could be a stored column's: an int64, or a bounded text without NUL."""
    if isinstance(key, int):
        return INT64_MIN <= key <= INT64_MAX
    return isinstance(key, str) and len(key) <= NAME_MAX and NUL not in key


def proto_enum_prefix(enum: type[StrEnum]) -> str:
    """The prefix of an enum's values in the protos: ``RunStatus`` -> ``RUN_STATUS_`` (buf's
    lint makes every value carry its enum's name; the stubs' tests check each one exists).
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.__name__).upper() + "_"


@dataclass(frozen=True)
class EnumField:
    """Parses a filter value as a member of ``enum``, in either spelling and any case: the
    short one (``completed``) or the proto value's name (``RUN_STATUS_COMPLETED``), so a
    client holding the generated enum's names needs no table of ours. UNSPECIFIED is no
    member: it is refused like any unknown value.
    """

    enum: type[StrEnum]

    @property
    def proto_prefix(self) -> str:
        return proto_enum_prefix(self.enum)

    def spellings(self) -> dict[str, StrEnum]:
        """Every accepted spelling, lower-cased, with its member."""
        prefix = self.proto_prefix.lower()
        return {
            spelling: member
            for member in self.enum
            for spelling in (member.value, prefix + member.value)
        }

    def __call__(self, value: str) -> StrEnum:
        member = self.spellings().get(value.lower())
        if member is None:
            short = ", ".join(member.value for member in self.enum)
            raise BadFilterValue(f"accepted: {short}, or {self.proto_prefix}<VALUE>; any case")
        return member


def enum_parser(enum: type[StrEnum]) -> EnumField:
    """Parse a filter value as a member of a StrEnum (see EnumField)."""
    return EnumField(enum)
