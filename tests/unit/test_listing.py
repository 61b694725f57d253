"""List requests: the filter subset, page sizes and tokens."""

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
from simtrack.server.core.listing import (
    DEFAULT_PAGE_SIZE,
    FILTER_BOUNDS,
    INT64_MAX,
    INT64_MIN,
    Condition,
    Cursor,
    EnumField,
    FieldParsers,
    Listing,
    decode_position,
    encode_position,
    enum_parser,
    optional_str,
    parse_filter,
)
from simtrack.server.core.model import RunStatus
from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)

PROTO_MODULES = (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)

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


@pytest.mark.parametrize(
    "text",
    [
        "name",
        "name =",
        '= "x"',
        'unknown = "x"',
        'status = "sleeping"',
        "tier = two",
        'name = "a" OR name = "b"',
        'name = "a" AND',
        'name = "a" name = "b"',
        'name ~ "a"',
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
    cursor = Cursor(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "some-id")
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
    cursor = Cursor(datetime(2026, 1, 2, tzinfo=UTC), "some-id")
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
    # What a nesting grammar calls while parsing (this subset has no nesting yet).
    bounds.check_depth(bounds.max_depth)
    with pytest.raises(InvalidArgument) as error:
        bounds.check_depth(bounds.max_depth + 1)
    assert violation_field(error) == "filter"


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
        forged("runs/|", t="0001-01-01T00:00:00+01:00", i="id"),
        forged("runs/|", t="9999-12-31T23:59:59-01:00", i="id"),
        forged("runs/|", t="2026-01-01T00:00:00+00:00", i=""),
        forged("runs/|", t="2026-01-01T00:00:00+00:00", i="nul\x00"),
        forged("runs/|", t="2026-01-01T00:00:00+00:00", i=["a"]),
        forged("runs/|", t="2026-01-01T00:00:00+00:00", i="i" * 201),
        forged("runs/|", t=5, i="id"),
    ],
)
def test_tokens_we_did_not_issue_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        RUNS.request(10, token, "")
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
