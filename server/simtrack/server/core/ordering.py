"""``order_by`` (AIP-132): the keys a List call sorts by, and their values in page tokens.

``order_by`` is fields separated by commas, each followed by ``desc`` for descending order
(``metrics.total_profit desc, create_time``). A row without a value for a key (a run not
started, without the parameter or the metric) comes after every row with one, in either
direction; ties, and the end, are broken by the list's default order (creation order; a
run's metrics by name, its events as sent), so every row has one place and a page token (the
last row's keys and default-order values) resumes exactly after it, whatever was inserted
meanwhile. Only fields with an order both databases agree on are keys (``filters.orderable``):
numbers, times, durations, names (by code point), parameters (by their numeric value) and
metrics. The databases sort in SQL (``db/filter_sql.py``); ``place`` sorts lists kept in memory
alike.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simtrack.errors import InvalidArgument, quote
from simtrack.server.core.filters import (
    FieldParsers,
    field_parser,
    orderable,
    ordered_text,
    parse_duration,
    parse_time,
)
from simtrack.server.core.model import INT64_MAX, INT64_MIN, NAME_MAX, NUL

MAX_KEYS = 8
MAX_LENGTH = 1024
_KEY = re.compile(r"\s*([\w.:/\-]+)(?:\s+(asc|desc))?\s*(,|$)", re.IGNORECASE)


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False


def parse_order_by(text: str, fields: FieldParsers) -> tuple[SortKey, ...]:
    """``text`` as sort keys on ``fields`` with an order (``filters.orderable``: their
    filters take ``<``); INVALID_ARGUMENT on ``order_by``.
    """
    if len(text) > MAX_LENGTH:
        raise InvalidArgument.of("order_by", f"is longer than {MAX_LENGTH} characters")
    keys: list[SortKey] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _KEY.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidArgument.of(
                "order_by",
                f"at position {pos}: expected `field` or `field desc`, found "
                f"{quote(text[pos:], 20)}",
            )
        field = match.group(1)
        parse = field_parser(fields, field)
        if parse is None or not orderable(parse):
            allowed = ", ".join(f for f, p in fields.items() if orderable(p)) or "none"
            raise InvalidArgument.of(
                "order_by",
                f"at position {match.start(1)}: cannot sort by {quote(field)} "
                f"(sortable: {allowed})",
            )
        if any(key.field == field for key in keys):
            raise InvalidArgument.of("order_by", f"sorts by {quote(field)} twice")
        keys.append(SortKey(field, (match.group(2) or "").lower() == "desc"))
        if len(keys) > MAX_KEYS:
            raise InvalidArgument.of("order_by", f"has more than {MAX_KEYS} keys")
        pos = match.end()
        if match.group(3) == "," and pos >= len(text):
            raise InvalidArgument.of("order_by", "ends with a comma")
    return tuple(keys)


Types = tuple[type, ...]  # what a token's value may be (exactly: True is no int)

# The values a key's field sorts by, from its filter's parser; any other is a number.
_KEY_TYPES: dict[Callable[[str], Any], Types] = {
    parse_time: (datetime,),
    parse_duration: (timedelta,),
    ordered_text: (str,),
}


def key_types(fields: FieldParsers, order: Sequence[SortKey]) -> list[Types]:
    """The types of the values of each of ``order``'s keys (parameters: numbers)."""
    return [_KEY_TYPES.get(field_parser(fields, k.field) or float, (int, float)) for k in order]


@functools.total_ordering
class _Descending:
    """A value that sorts the other way round."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.value == other.value)

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __hash__(self) -> int:
        return hash(self.value)


def place(
    values: Sequence[Any], order: Sequence[SortKey], position: Sequence[Any]
) -> tuple[Any, ...]:
    """A row's place in ``order`` (its ``values`` of the keys; None last in either direction),
    then in the default order (``position``): for lists kept in memory, ordered as the
    databases order theirs. Places compare as tuples; a page starts after its cursor's.
    """
    keys = (
        (value is None, None if value is None else _Descending(value) if k.descending else value)
        for value, k in zip(values, order, strict=True)
    )
    return (*keys, *position)


# Sort values in tokens, typed: JSON has no datetime, no duration and no infinity.
def encode_values(values: Sequence[Any]) -> list[list[Any]]:
    encoded: list[list[Any]] = []
    for value in values:
        if value is None:
            encoded.append(["n"])
        elif isinstance(value, bool):  # before int: True is an int
            raise TypeError("booleans are not sort keys")
        elif isinstance(value, int):
            encoded.append(["i", value])
        elif isinstance(value, float):
            encoded.append(["f", value.hex()])
        elif isinstance(value, datetime):
            encoded.append(["t", value.astimezone(UTC).isoformat()])
        elif isinstance(value, timedelta):
            encoded.append(["d", value // timedelta(microseconds=1)])
        elif isinstance(value, str):
            encoded.append(["s", value])
        else:
            raise TypeError(f"{type(value).__name__} is not a sort key")
    return encoded


def decode_values(encoded: Any, types: Sequence[Types], nullable: bool) -> tuple[Any, ...]:
    """The values of ``encode_values``, each of its ``types`` (or None if ``nullable``);
    ValueError for anything else.
    """
    if not isinstance(encoded, list) or len(encoded) != len(types):
        raise ValueError("not our keys")
    values = _decoded(encoded)
    for value, allowed in zip(values, types, strict=True):
        if not (type(value) in allowed or (value is None and nullable)):
            raise ValueError("a key of another type")
    return values


def _decoded(encoded: list[Any]) -> tuple[Any, ...]:
    values: list[Any] = []
    for item in encoded:
        if not isinstance(item, list) or not item or not isinstance(item[0], str):
            raise ValueError("not a key")
        tag, rest = item[0], item[1:]
        if tag == "n" and not rest:
            values.append(None)
        elif tag == "i" and len(rest) == 1 and type(rest[0]) is int:
            if not INT64_MIN <= rest[0] <= INT64_MAX:
                raise ValueError("beyond int64")
            values.append(rest[0])
        elif tag == "f" and len(rest) == 1 and isinstance(rest[0], str):
            number = float.fromhex(rest[0])
            if math.isnan(number):
                raise ValueError("NaN is no key")
            values.append(number)
        elif tag == "t" and len(rest) == 1 and isinstance(rest[0], str):
            when = datetime.fromisoformat(rest[0])
            if when.tzinfo is None:
                raise ValueError("a time without its offset")
            values.append(when.astimezone(UTC))
        elif tag == "d" and len(rest) == 1 and type(rest[0]) is int:
            values.append(timedelta(microseconds=rest[0]))
        elif tag == "s" and len(rest) == 1 and isinstance(rest[0], str):
            if len(rest[0]) > NAME_MAX or NUL in rest[0]:
                raise ValueError("no stored text")
            values.append(rest[0])
        else:
            raise ValueError("not a key")
    return tuple(values)
