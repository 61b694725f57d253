r"""The filter language of every List call (AIP-160's core), parsed into terms SQL is built from.

::

    filter     := sequence
    sequence   := any ( [AND] any )*          a space means AND, as in AIP-160
    any        := unary ( OR unary )*         OR binds tighter than AND (AIP-160)
    unary      := [NOT] unary | primary
    primary    := "(" sequence ")" | comparison
    comparison := FIELD op VALUE | FIELD IN "(" VALUE ( "," VALUE )* ")"
    op         := = | != | < | <= | > | >=

A value is a double-quoted string (``\\"`` and ``\\\\`` escaped) or a bare word; each field
parses its own (numbers, enums in both spellings, ...). In a text field's ``=`` and ``!=``,
``*`` matches any run of characters (``scenario_id = "tier0-*"``). Errors are
INVALID_ARGUMENT on ``filter`` with the position (0-based, in characters) of what is wrong;
``FILTER_BOUNDS`` caps length, comparisons and nesting before anything is built.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Union

from simtrack.errors import InvalidArgument, quote
from simtrack.server.core.model import INT64_MAX, INT64_MIN, NUL, NUL_MESSAGE

FieldParsers = Mapping[str, Callable[[str], Any]]


@dataclass(frozen=True)
class FilterBounds:
    """How big a filter may be: characters, terms (comparisons) and nesting (parentheses or
    NOT inside each other). Checked before and while parsing, so nothing is built beyond them.
    """

    max_length: int
    max_terms: int
    max_depth: int

    def check_text(self, text: str) -> None:
        if len(text) > self.max_length:
            raise InvalidArgument.of(
                "filter", f"is longer than {self.max_length} characters ({len(text):,})"
            )

    def check_terms(self, count: int) -> None:
        if count > self.max_terms:
            raise InvalidArgument.of("filter", f"has more than {self.max_terms} terms")

    def check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise InvalidArgument.of("filter", f"nests deeper than {self.max_depth} levels")


FILTER_BOUNDS = FilterBounds(max_length=4096, max_terms=100, max_depth=16)


class BadFilterValue(ValueError):
    """A value its filter field cannot take; the message says which it can."""


def optional_str(value: str) -> str | None:
    """Empty string means "not set" (e.g. ``experiment_id = ""`` for detached simulations)."""
    return value or None


def ordered_text(value: str) -> str:
    """Text with an order: by code point, as Python compares strings, SQLite's BINARY
    collation and PostgreSQL's "C" (so alike on both databases, whatever their locale). For
    names; other text (ids, enums) has no order worth the name.
    """
    return value


def parse_bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise BadFilterValue("accepted: true, false; any case")
    return value.lower() == "true"


def parse_time(value: str) -> datetime:
    """An RFC 3339 time with its offset (``2026-12-04T10:00:00Z``)."""
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None or "T" not in value.upper():
            raise ValueError("no offset, or a date")
        return when.astimezone(UTC)
    except (ValueError, OverflowError):  # the year 1 less an hour is no time either
        raise BadFilterValue(
            "an RFC 3339 time with its offset, e.g. 2026-12-04T10:00:00Z"
        ) from None


def parse_duration(value: str) -> timedelta:
    """Seconds, as AIP-160 and protobuf's Duration write them: ``90s``, ``0.5s``."""
    number = value[:-1] if value.endswith("s") else ""
    try:
        seconds = float(number)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or abs(seconds) > _MAX_SECONDS:
        raise BadFilterValue("seconds with an s, e.g. 90s or 0.5s")
    return timedelta(seconds=seconds)


def parse_int(value: str) -> int:
    """An integer a database column holds (int64)."""
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise BadFilterValue(f"an integer from {INT64_MIN} to {INT64_MAX}")
    return number


def parse_number(value: str) -> float:
    """A number (``1e-3``, ``-inf``), not NaN: NaN equals nothing, itself included."""
    number = float(value)
    if math.isnan(number):
        raise BadFilterValue("a number; NaN matches nothing")
    return number


_MAX_SECONDS = 315_576_000_000  # protobuf Duration's bound (10,000 years)


class JsonValue:
    """A value of a JSON object's key (``params.KEY``), typed as written: a quoted string is
    a string; a bare ``true``/``false`` a boolean; a bare number a number; another bare word
    a string. Comparisons hold only between values of one type, and order only numbers.
    """

    def __call__(self, value: str) -> bool | int | float | str:
        if value in ("true", "false"):
            return value == "true"
        for number in (int, float):
            try:
                parsed = number(value)
            except ValueError:
                continue
            if math.isfinite(parsed) and (number is float or INT64_MIN <= parsed <= INT64_MAX):
                return parsed
        return value


PARAMS = JsonValue()


# Fields parsed by these hold text: ``*`` in their ``=``/``!=`` values is a wildcard.
TEXT_FIELDS = (str, optional_str, ordered_text)
ORDERING = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Pattern:
    """A text value with ``*`` wildcards: the pieces between them, matched in order."""

    text: str

    def like(self) -> str:
        """As a SQL LIKE pattern (``escape="/"``): ``*`` is ``%``; ``%``, ``_``, ``/`` escaped."""
        escaped = re.sub(r"([/%_])", r"/\1", self.text)
        return escaped.replace("*", "%")

    def matches(self, value: str) -> bool:
        pieces = ".*".join(map(re.escape, self.text.split("*")))
        return re.fullmatch(pieces, value, re.S) is not None


@dataclass(frozen=True)
class Condition:
    """One comparison: ``field op value``; ``value`` is parsed (None: "not set"; a Pattern;
    for ``in``, a tuple of values).
    """

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    terms: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    terms: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    term: Filter


Filter = Union[Condition, AllOf, AnyOf, Not]  # noqa: UP007 - a runtime alias, before 3.12

_TOKEN = re.compile(
    r"""(?P<punct>[(),])|(?P<op>!=|<=|>=|=|<|>)|"(?P<quoted>(?:[^"\\]|\\.)*)"|"""
    r"""(?P<word>[\w.:+*/\-]+)"""
)
_KEYWORDS = {"AND", "OR", "NOT", "IN"}


@dataclass(frozen=True)
class _Token:
    kind: str  # punct, op, quoted, word, keyword, end
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            found.append(_Token("end", "", pos))
            return found
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] == '"':
                raise _error(pos, "a quoted value is not closed")
            raise _error(pos, f"unexpected text {quote(text[pos:], 20)}")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        if kind == "quoted":
            raw = re.sub(r"\\(.)", r"\1", raw, flags=re.S)
        elif kind == "word" and raw in _KEYWORDS:
            kind = "keyword"
        found.append(_Token(kind, raw, pos))
        pos = match.end()


def _error(pos: int, message: str) -> InvalidArgument:
    return InvalidArgument.of("filter", f"at position {pos}: {message}")


class _Parser:
    def __init__(self, text: str, fields: FieldParsers) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.fields = fields
        self.terms = 0

    @property
    def next(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, kind: str, text: str, what: str) -> _Token:
        token = self.next
        if token.kind != kind or token.text != text:
            raise _error(token.pos, f"expected {what}, found {_shown(token)}")
        return self.take()

    def sequence(self, depth: int) -> list[Filter]:
        terms = [self.any(depth)]
        while self.next.kind != "end" and not (self.next.kind == "punct" and self.next.text == ")"):
            if self.next.kind == "keyword" and self.next.text == "AND":
                self.take()
            terms.append(self.any(depth))
        return terms

    def any(self, depth: int) -> Filter:
        terms = [self.unary(depth)]
        while self.next.kind == "keyword" and self.next.text == "OR":
            self.take()
            terms.append(self.unary(depth))
        return terms[0] if len(terms) == 1 else AnyOf(tuple(terms))

    def unary(self, depth: int) -> Filter:
        token = self.next
        if token.kind == "keyword" and token.text == "NOT":
            self.take()
            FILTER_BOUNDS.check_depth(depth + 1)
            return Not(self.unary(depth + 1))
        if token.kind == "punct" and token.text == "(":
            self.take()
            FILTER_BOUNDS.check_depth(depth + 1)
            terms = self.sequence(depth + 1)
            self.expect("punct", ")", "`)`")
            return terms[0] if len(terms) == 1 else AllOf(tuple(terms))
        return self.comparison()

    def comparison(self) -> Condition:
        name = self.take()
        if name.kind != "word":
            raise _error(name.pos, f"expected a field name, found {_shown(name)}")
        parse = field_parser(self.fields, name.text)
        if parse is None:
            allowed = ", ".join(sorted(self.fields)) or "none"
            raise _error(name.pos, f"cannot filter on {quote(name.text)} (allowed: {allowed})")
        self.terms += 1
        FILTER_BOUNDS.check_terms(self.terms)
        op = self.take()
        if op.kind == "keyword" and op.text == "IN":
            self.expect("punct", "(", "`(` after IN")
            values = [self.value(name.text, parse, "in")]
            while self.next.kind == "punct" and self.next.text == ",":
                self.take()
                values.append(self.value(name.text, parse, "in"))
            self.expect("punct", ")", "`,` or `)`")
            return Condition(name.text, "in", tuple(values))
        if op.kind != "op":
            raise _error(op.pos, f"expected an operator after {name.text}, found {_shown(op)}")
        if op.text in ORDERING and not orderable(parse):
            raise _error(op.pos, f"{name.text} has no order: it takes =, != and IN")
        at = self.next.pos
        value = self.value(name.text, parse, op.text)
        if op.text in ORDERING and isinstance(parse, JsonValue) and not _is_number(value):
            raise _error(at, f"{name.text} {op.text} takes a number")
        return Condition(name.text, op.text, value)

    def value(self, field: str, parse: Callable[[str], Any], op: str) -> Any:
        token = self.take()
        if token.kind not in ("quoted", "word"):
            raise _error(token.pos, f"expected a value for {field}, found {_shown(token)}")
        if "*" in token.text and parse in TEXT_FIELDS and op in ("=", "!="):
            return Pattern(token.text)
        if token.kind == "quoted" and isinstance(parse, JsonValue):
            return token.text  # a string, whatever it looks like
        try:
            return parse(token.text)
        except BadFilterValue as error:
            message = f"bad value for {field}: {quote(token.text, 40)} ({error})"
        except ValueError:
            message = f"bad value for {field}: {quote(token.text)}"
        raise _error(token.pos, message)


def orderable(parse: Callable[[str], Any]) -> bool:
    """Numbers, times and names (``ordered_text``): other text would order by each database's
    collation, not alike on both.
    """
    orderable = (int, parse_int, float, parse_number, parse_time, parse_duration, ordered_text)
    return parse in orderable or isinstance(parse, JsonValue)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_parser(fields: FieldParsers, name: str) -> Callable[[str], Any] | None:
    """The parser of field ``name``: declared, or a key of a declared prefix (``params.lr``
    of ``params.*``); None if there is none.
    """
    head, dot, key = name.partition(".")
    return fields.get(name) or (fields.get(f"{head}.*") if dot and key else None)


def _shown(token: _Token) -> str:
    return "the end" if token.kind == "end" else quote(token.text, 20)


def parse_filter(text: str, fields: FieldParsers) -> tuple[Filter, ...]:
    """``text`` as terms that must all hold; raises InvalidArgument on ``filter``."""
    FILTER_BOUNDS.check_text(text)
    if NUL in text:
        raise InvalidArgument.of("filter", NUL_MESSAGE)
    parser = _Parser(text, fields)
    if parser.next.kind == "end":
        return ()
    terms = parser.sequence(0)
    if parser.next.kind != "end":
        raise _error(parser.next.pos, f"unexpected {_shown(parser.next)}")
    flat: list[Filter] = []
    for term in terms:
        flat.extend(term.terms if isinstance(term, AllOf) else (term,))
    return tuple(flat)


def holds(term: Filter, values: Callable[[str], tuple[Any, ...]]) -> bool:
    """Whether ``term`` holds of an object whose fields have ``values`` (several for a
    collection, such as tags: a comparison holds if one of them satisfies it; ``!=`` if none
    equals). For lists kept in memory; SQL is built from the same terms in ``db``.
    """
    if isinstance(term, AllOf):
        return all(holds(t, values) for t in term.terms)
    if isinstance(term, AnyOf):
        return any(holds(t, values) for t in term.terms)
    if isinstance(term, Not):
        return not holds(term.term, values)
    found = values(term.field) or (None,)  # nothing: "not set"
    if term.op == "!=":
        if term.value is None:
            return any(v is not None for v in found)
        known = [v for v in found if v is not None]
        return bool(known) and not any(_equal(v, term.value) for v in known)
    return any(_compare(v, term.op, term.value) for v in found)


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, Pattern):
        return isinstance(value, str) and wanted.matches(value)
    if isinstance(value, bool) != isinstance(wanted, bool):  # True is not 1
        return False
    return bool(value == wanted)


def _compare(value: Any, op: str, wanted: Any) -> bool:
    if op == "=":
        return _equal(value, wanted)
    if op == "in":
        return any(_equal(value, w) for w in wanted)
    if value is None or wanted is None or _is_number(value) != _is_number(wanted):
        return False
    return bool(ORDER[op](value, wanted))


# The ordering comparisons, for values and SQL expressions alike.
ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
