"""List requests: the filter language, page sizes and tokens."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import pkgutil
from datetime import UTC, datetime

import pytest

from simtrack.errors import InvalidArgument
from simtrack.server import domain
from simtrack.server.core.filters import (
    FILTER_BOUNDS,
    AllOf,
    AnyOf,
    Condition,
    FieldParsers,
    Not,
    Pattern,
    holds,
    optional_str,
    ordered_text,
    parse_filter,
)
from simtrack.server.core.listing import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    EnumField,
    Listing,
    decode_position,
    encode_position,
    enum_parser,
)
from simtrack.server.core.model import INT64_MAX, INT64_MIN, RunStatus
from simtrack.server.core.ordering import SortKey, place
from tests.support.protos import PROTO_MODULES

FIELDS: FieldParsers = {
    "name": str,
    "status": enum_parser(RunStatus),
    "experiment_id": optional_str,
    "tier": int,
}
RUNS = Listing("runs", FIELDS)


def violation_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.violations[0].field


def test_parse_filter_terms() -> None:
    assert parse_filter("", FIELDS) == ()
    assert parse_filter('name = "a b" AND status != RUNNING AND tier=2', FIELDS) == (
        Condition("name", "=", "a b"),
        Condition("status", "!=", RunStatus.RUNNING),
        Condition("tier", "=", 2),
    )
    assert parse_filter('experiment_id = ""', FIELDS) == (Condition("experiment_id", "=", None),)
    assert parse_filter(r'name = "say \"hi\""', FIELDS) == (Condition("name", "=", 'say "hi"'),)


def test_or_binds_tighter_than_and_and_not_binds_tightest() -> None:
    a, b, c = (Condition("name", "=", v) for v in "abc")
    assert parse_filter("name = a AND name = b OR name = c", FIELDS) == (a, AnyOf((b, c)))
    assert parse_filter("name = a OR name = b name = c", FIELDS) == (AnyOf((a, b)), c)
    assert parse_filter("NOT name = a OR name = b", FIELDS) == (AnyOf((Not(a), b)),)
    assert parse_filter("NOT (name = a AND name = b) AND (name = c)", FIELDS) == (
        Not(AllOf((a, b))),
        c,
    )
    assert parse_filter("((name = a OR (name = b)))", FIELDS) == (AnyOf((a, b)),)


def test_comparisons_in_lists_and_wildcards() -> None:
    assert parse_filter("tier >= 2 AND tier < 10 AND tier != -1", FIELDS) == (
        Condition("tier", ">=", 2),
        Condition("tier", "<", 10),
        Condition("tier", "!=", -1),
    )
    assert parse_filter('status IN ("running", RUN_STATUS_COMPLETED) AND tier IN (3)', FIELDS) == (
        Condition("status", "in", (RunStatus.RUNNING, RunStatus.COMPLETED)),
        Condition("tier", "in", (3,)),
    )
    assert parse_filter('name = "tier0-*" AND name != *x*', FIELDS) == (
        Condition("name", "=", Pattern("tier0-*")),
        Condition("name", "!=", Pattern("*x*")),
    )
    # A wildcard only in a text field's = and !=: in a list a star is the value's own.
    assert parse_filter('name IN ("a*")', FIELDS) == (Condition("name", "in", ("a*",)),)
    assert Pattern("a*c").matches("abbc") and not Pattern("a*c").matches("abcd")
    assert Pattern("100%_/x*").like() == "100/%/_//x%"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ('name = "a" OR', 13),
        ('(name = "a"', 11),
        ('name = "a" )', 11),
        ("status < RUNNING", 7),
        ("nope = 1", 0),
        ("tier = 1 AND tier = x", 20),
        ('name = "open', 7),
        ("tier IN (1 2)", 11),
    ],
)
def test_syntax_errors_say_where(text: str, position: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_filter(text, FIELDS)
    assert f"at position {position}:" in error.value.message, error.value.message


def test_in_memory_evaluation_is_two_valued_and_sees_collections() -> None:
    row = {"name": ("b",), "tier": (2,), "tags": ("x", "y"), "experiment_id": ()}
    fields: FieldParsers = {**FIELDS, "tags": str}

    def check(text: str) -> bool:
        return all(holds(t, lambda f: row[f]) for t in parse_filter(text, fields))

    assert check('name = b AND tier > 1 AND tags = "y" AND tags != z AND tags = "x*"')
    assert not check("tags != x")
    # Not set: equal to "" only; no other comparison holds, != neither (NOT inverts).
    assert check('experiment_id = "" AND NOT experiment_id = e AND NOT experiment_id != e')
    assert not check('experiment_id != ""')
    assert not check("name IN (a, c) OR tier <= 1")


@pytest.mark.parametrize(
    "text",
    [
        "name",
        "name =",
        '= "x"',
        'unknown = "x"',
        'status = "sleeping"',
        "tier = two",
        'name = "a" AND',
        'name = "a" OR',
        'name ~ "a"',
        '(name = "a"',
        'name = "a")',
        "NOT",
        'NOT (name = "a") )',
        "status < RUNNING",
        "experiment_id > x",
        'name >= "a"',
        "name IN ()",
        'name IN ("a"',
        'name IN "a"',
        'name = "unclosed',
        "tier IN (1, two)",
        'name = "a" AND AND name = "b"',
    ],
)
def test_bad_filters_name_the_filter_field(text: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_filter(text, FIELDS)
    assert violation_field(error) == "filter"


def test_page_size_defaults_and_bounds() -> None:
    assert RUNS.request(0, "", "").size == DEFAULT_PAGE_SIZE
    assert RUNS.request(1000, "", "").size == 1000
    for bad in (-1, 1001, 2**31 - 1):
        with pytest.raises(InvalidArgument) as error:
            RUNS.request(bad, "", "")
        assert violation_field(error) == "page_size"


def test_tokens_round_trip_and_are_bound_to_filter_and_parent() -> None:
    cursor = Cursor((datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "some-id"))
    first = RUNS.request(10, "", 'name = "x"', parent="run-1")
    token = first.next_token(cursor)
    assert first.next_token(None) == ""
    again = RUNS.request(10, token, 'name = "x"', parent="run-1")
    assert again.after == cursor
    for text, parent in (('name = "y"', "run-1"), ('name = "x"', "run-2"), ("", "run-1")):
        with pytest.raises(InvalidArgument) as error:
            RUNS.request(10, token, text, parent=parent)
        assert violation_field(error) == "page_token"


def test_tokens_are_bound_to_their_collection() -> None:
    cursor = Cursor((datetime(2026, 1, 2, tzinfo=UTC), "some-id"))
    token = RUNS.request(10, "", "").next_token(cursor)
    with pytest.raises(InvalidArgument) as error:
        Listing("agents", FIELDS).request(10, token, "")
    assert violation_field(error) == "page_token"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"t": "yesterday", "i": "x", "s": "y"}').decode(),
        base64.urlsafe_b64encode(b'{"t": "2026-01-01T00:00:00", "i": "x", "s": "y"}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_garbage_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        RUNS.request(10, token, "")
    assert violation_field(error) == "page_token"


def test_filters_are_bounded_in_length_terms_and_depth() -> None:
    bounds = FILTER_BOUNDS
    term = 'name != "x"'
    assert len(parse_filter(" AND ".join([term] * bounds.max_terms), FIELDS)) == bounds.max_terms
    longest = 'name = "' + "n" * (bounds.max_length - 9) + '"'
    assert len(longest) == bounds.max_length
    assert parse_filter(longest, FIELDS) == (Condition("name", "=", "n" * (bounds.max_length - 9)),)
    for text in (" AND ".join([term] * (bounds.max_terms + 1)), longest + " "):
        with pytest.raises(InvalidArgument) as error:
            parse_filter(text, FIELDS)
        assert violation_field(error) == "filter"
    deepest = "(" * bounds.max_depth + term + ")" * bounds.max_depth
    assert parse_filter(deepest, FIELDS) == (Condition("name", "!=", "x"),)
    nots = "NOT " * bounds.max_depth + term
    assert len(parse_filter(nots, FIELDS)) == 1
    for text in ("(" + deepest + ")", "NOT " + nots, "NOT (" * 9 + term + ")" * 9):
        with pytest.raises(InvalidArgument) as error:
            parse_filter(text, FIELDS)
        assert violation_field(error) == "filter"
        assert "nests deeper" in error.value.message


def test_echoed_filter_values_are_quoted_short() -> None:
    for text in (
        "f" * 5_000 + ' = "x"',
        'tier = "' + "9x" * 1_000 + '"',
        'name = "x" ' + "?" * 999,
    ):
        with pytest.raises(InvalidArgument) as error:
            parse_filter(text, FIELDS)
        assert violation_field(error) == "filter"
        assert len(error.value.message) < 300, error.value.message


def forged(scope: str, **payload: object) -> str:
    """A token sealed for ``scope`` as the server seals its own, holding ``payload``."""
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(json.dumps({**payload, "s": digest}).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
        "x" * 5_000,
        forged("runs/|", p=[["t", "0001-01-01T00:00:00+01:00"], ["s", "id"]]),
        forged("runs/|", p=[["t", "9999-12-31T23:59:59-01:00"], ["s", "id"]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00"], ["s", "id"]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["s", ""]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["s", "nul\x00"]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["s", ["a"]]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["s", "i" * 201]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["i", 5]]),  # an id of a number
        forged("runs/|", p=[["i", 5], ["s", "id"]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"], ["n"]]),
        forged("runs/|", p=[["t", "2026-01-01T00:00:00+00:00"]]),
        forged("runs/|", t="2026-01-01T00:00:00+00:00", i="id"),  # the old form
    ],
)
def test_tokens_we_did_not_issue_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        RUNS.request(10, token, "")
    assert violation_field(error) == "page_token"


@pytest.mark.parametrize("keys", [[["s", "x"]], [["i", True]], [["f", "nan"]], [], [["n"], ["n"]]])
def test_sort_keys_we_did_not_issue_are_invalid_argument(keys: list[object]) -> None:
    position = [["t", "2026-01-01T00:00:00+00:00"], ["s", "id"]]
    assert RUNS.request(10, forged("runs/||tier", p=position, k=[["n"]]), "", order_by="tier")
    with pytest.raises(InvalidArgument) as error:
        RUNS.request(10, forged("runs/||tier", p=position, k=keys), "", order_by="tier")
    assert violation_field(error) == "page_token"


def test_positions_must_fit_the_stored_keys() -> None:
    assert decode_position(forged("s", p=[INT64_MAX, INT64_MIN]), "s", (int, int)) == (
        INT64_MAX,
        INT64_MIN,
    )
    longest_name = "\N{ROCKET}" * 200  # a metric name of 200 characters beyond the BMP
    token = encode_position((longest_name,), "s")
    assert decode_position(token, "s", (str,)) == (longest_name,)
    cases: list[tuple[list[object], tuple[type, ...]]] = [
        ([INT64_MAX + 1, 0], (int, int)),
        ([0, INT64_MIN - 1], (int, int)),
        ([True, 0], (int, int)),
        (["a" * 201], (str,)),
        (["nul\x00"], (str,)),
    ]
    for position, types in cases:
        with pytest.raises(InvalidArgument) as error:
            decode_position(forged("s", p=position), "s", types)
        assert violation_field(error) == "page_token"


# -- every listing of the server: enum values in both spellings ---------------------------------


def declared_listings() -> dict[str, Listing]:
    """Every Listing the server's domain declares, by collection: found, not enumerated, so a
    new listing is checked (here and by the protos' documentation tests) without a line more.
    """
    found: dict[str, Listing] = {}
    for info in pkgutil.iter_modules(domain.__path__, f"{domain.__name__}."):
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, Listing):
                found[value.collection] = value
    return found


def enum_fields() -> list[tuple[str, str, EnumField]]:
    return [
        (collection, field, parser)
        for collection, listing in sorted(declared_listings().items())
        for field, parser in listing.fields.items()
        if isinstance(parser, EnumField)
    ]


def test_listings_are_found() -> None:
    assert {"runs", "experiments", "simulations", "agents", "artifacts", "metrics"} <= set(
        declared_listings()
    )
    assert {(c, f) for c, f, _ in enum_fields()} >= {
        ("runs", "status"),
        ("experiments", "status"),
        ("simulations", "status"),
        ("agents", "framework"),
        ("artifacts", "type"),
        ("metrics", "kind"),
    }


@pytest.mark.parametrize(("collection", "field", "parser"), enum_fields())
def test_enum_filters_take_both_spellings_in_any_case(
    collection: str, field: str, parser: EnumField
) -> None:
    fields = declared_listings()[collection].fields
    for member in parser.enum:
        proto_name = parser.proto_prefix + member.value.upper()
        for spelling in (member.value, member.value.upper(), proto_name, proto_name.lower()):
            for text in (f'{field} = "{spelling}"', f"{field} != {spelling}"):
                (condition,) = parse_filter(text, fields)
                assert isinstance(condition, Condition), text
                assert condition.field == field and condition.value is member, text


@pytest.mark.parametrize(("collection", "field", "parser"), enum_fields())
def test_enum_filters_refuse_unspecified_and_unknown_values_listing_the_accepted(
    collection: str, field: str, parser: EnumField
) -> None:
    fields = declared_listings()[collection].fields
    for bad in (f"{parser.proto_prefix}UNSPECIFIED", "unspecified", "bogus", parser.proto_prefix):
        with pytest.raises(InvalidArgument) as error:
            parse_filter(f'{field} = "{bad}"', fields)
        assert violation_field(error) == "filter"
        description = error.value.violations[0].description
        assert field in description
        assert all(member.value in description for member in parser.enum), description
        assert f"{parser.proto_prefix}<VALUE>" in description


@pytest.mark.parametrize(("collection", "field", "parser"), enum_fields())
def test_enum_filters_proto_spellings_are_the_protos_enum_values(
    collection: str, field: str, parser: EnumField
) -> None:
    """The proto spelling the server accepts is exactly the generated enum's value names."""
    (enum,) = [
        module.DESCRIPTOR.enum_types_by_name[parser.enum.__name__]
        for module in PROTO_MODULES
        if parser.enum.__name__ in module.DESCRIPTOR.enum_types_by_name
    ]
    accepted = {parser.proto_prefix + member.value.upper() for member in parser.enum}
    assert {value.name for value in enum.values} == accepted | {f"{parser.proto_prefix}UNSPECIFIED"}


# -- order_by in memory, and its tokens ----------------------------------------------------------


def test_place_orders_as_the_databases_do() -> None:
    """Descending keys, missing values last either way, the default order breaking ties."""
    order = (SortKey("a", descending=True), SortKey("b"))
    rows = [(1, None, "x"), (None, 2, "y"), (1, 3, "z"), (2, 3, "w"), (1, 3, "a"), (None, 1, "v")]
    ranked = sorted(rows, key=lambda r: place(r[:2], order, r[2:]))
    assert ranked == [(2, 3, "w"), (1, 3, "a"), (1, 3, "z"), (1, None, "x"), (None, 1, "v"),
                      (None, 2, "y")]  # fmt: skip
    after = place((1, 3), order, ("a",))
    assert [r for r in ranked if place(r[:2], order, r[2:]) > after] == ranked[2:]


def test_the_longest_text_keys_fit_a_token() -> None:
    """A metric name of 200 characters beyond the BMP, as the position and as a sort key."""
    metrics = Listing("metrics", {"name": ordered_text}, position=(str,))
    longest = "\N{ROCKET}" * 200
    request = metrics.request(10, "", "", "run-1", "name desc")
    token = request.next_token(Cursor((longest,), (longest,)))
    assert metrics.request(10, token, "", "run-1", "name desc").after == Cursor(
        (longest,), (longest,)
    )
