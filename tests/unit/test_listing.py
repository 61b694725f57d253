"""List requests: the filter subset, page sizes and tokens."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from simtrack.errors import InvalidArgument
from simtrack.server.domain.listing import (
    DEFAULT_PAGE_SIZE,
    Condition,
    Cursor,
    FieldParsers,
    Listing,
    enum_parser,
    optional_str,
    parse_filter,
)
from simtrack.server.domain.model import RunStatus

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
