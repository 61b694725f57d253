"""The gRPC edge: proto values to domain values, and simtrack errors to google.rpc statuses."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2

from simtrack.errors import (
    ERRORS_BY_CODE_NAME,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    quote,
)
from simtrack.server.api.agents import FRAMEWORK, UPDATE_READERS
from simtrack.server.api.convert import (
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    check_timestamp,
    dict_to_struct,
    mask_changes,
    struct_to_dict,
    timestamp,
)
from simtrack.server.api.error_mapping import to_status
from simtrack.server.api.interceptor import message_parser
from simtrack.server.core.model import Framework
from simtrack.v1 import agents_pb2


def test_struct_round_trip_keeps_ints_and_nesting() -> None:
    data = {"a": 1, "b": 2.5, "c": [True, None, "s"], "d": {"e": {"f": -3}}}
    assert struct_to_dict("x", dict_to_struct(data)) == data


def test_struct_value_without_kind_is_named() -> None:
    struct = struct_pb2.Struct()
    struct.fields["inner"].struct_value.fields["empty"].CopyFrom(struct_pb2.Value())
    with pytest.raises(InvalidArgument) as error:
        struct_to_dict("agent.config", struct)
    assert error.value.violations[0].field == "agent.config.inner.empty"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.fields["list"].list_value.values.add().number_value = number
    with pytest.raises(InvalidArgument) as error:
        struct_to_dict("run.results", struct)
    assert error.value.violations[0].field == "run.results.list[0]"


def test_enum_mapping_both_ways() -> None:
    assert FRAMEWORK.to_domain("f", agents_pb2.FRAMEWORK_CREWAI) == Framework.CREWAI
    assert FRAMEWORK.to_domain("f", 0) is None
    for member in Framework:
        assert FRAMEWORK.to_domain("f", FRAMEWORK.to_proto(member)) == member
    with pytest.raises(InvalidArgument, match="unknown value 99") as error:
        FRAMEWORK.to_domain("agent.framework", 99)
    assert error.value.violations[0].field == "agent.framework"


def test_mask_changes_reads_only_masked_fields() -> None:
    agent = agents_pb2.Agent(name="n", framework=agents_pb2.FRAMEWORK_CUSTOM)
    changes = mask_changes(agent, field_mask_pb2.FieldMask(paths=["name"]), UPDATE_READERS)
    assert changes == {"name": "n"}
    with pytest.raises(InvalidArgument) as empty:
        mask_changes(agent, field_mask_pb2.FieldMask(), UPDATE_READERS)
    assert empty.value.violations[0].field == "update_mask"
    with pytest.raises(InvalidArgument, match="'id' cannot be updated"):
        mask_changes(agent, field_mask_pb2.FieldMask(paths=["id"]), UPDATE_READERS)


def test_invalid_argument_status_carries_field_violations() -> None:
    error = InvalidArgument([FieldViolation("a.b", "bad"), FieldViolation("c", "worse")])
    status = to_status(error)
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("a.b", "bad"),
        ("c", "worse"),
    ]


def test_not_found_status_carries_resource_info() -> None:
    status = to_status(NotFound("agent", "123", "experiment.agent_id"))
    assert status.code == code_pb2.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("agent", "123")
    assert "experiment.agent_id" in status.message


def test_every_error_class_has_a_real_status_code() -> None:
    for name, cls in ERRORS_BY_CODE_NAME.items():
        assert cls.code_name == name
        assert code_pb2.Code.Value(name) not in (code_pb2.UNKNOWN, code_pb2.INTERNAL, code_pb2.OK)
    assert to_status(FailedPrecondition("x")).code == code_pb2.FAILED_PRECONDITION


def test_statuses_stay_small_whatever_an_error_holds() -> None:
    """A status travels in metadata that gRPC caps (8 KiB soft): its size is bounded."""
    huge = "\N{ROCKET}" * 20_000  # four UTF-8 bytes each, percent-encoded in grpc-message
    errors = [
        InvalidArgument([FieldViolation(f"f{i}.{huge}", huge) for i in range(5_000)]),
        NotFound("scenario", huge, huge),
        FailedPrecondition(huge),
    ]
    for error in errors:
        status = to_status(error)
        assert len(status.message.encode()) <= 512
        assert len(status.SerializeToString()) < 4096
    bad_request = error_details_pb2.BadRequest()
    assert to_status(errors[0]).details[0].Unpack(bad_request)
    assert len(bad_request.field_violations) == 10
    assert bad_request.field_violations[0].field.startswith("f0.\N{ROCKET}")


def test_echoed_values_are_quoted_short() -> None:
    assert quote("short") == "'short'"
    assert quote("x" * 20_000) == f"{'x' * 100!r}… (20,000 characters)"
    not_found = NotFound("scenario", "s" * 20_000, "id")
    assert not_found.resource_id == "s" * 100 + "…"
    assert len(not_found.message) < 200
    long_key = struct_pb2.Struct()
    long_key.fields["k" * 20_000].number_value = math.nan
    with pytest.raises(InvalidArgument) as error:
        struct_to_dict("config", long_key)
    assert error.value.violations[0].field == "config." + "k" * 100 + "…"


def test_requests_that_do_not_decode_are_invalid_argument_naming_the_message() -> None:
    parse = message_parser(agents_pb2.GetAgentRequest.FromString)
    assert parse(agents_pb2.GetAgentRequest(id="x").SerializeToString()).id == "x"
    for data in (b"\xff" * 11, b"\x0a\x05abc", b"\x0a\x02\xc3\x28"):
        with pytest.raises(InvalidArgument) as error:
            parse(data)
        assert error.value.violations[0].field == "request"
        assert "simtrack.v1.GetAgentRequest" in error.value.message
    assert message_parser(None)(b"raw") == b"raw"


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (TIMESTAMP_MIN_SECONDS, 0, True),
        (TIMESTAMP_MAX_SECONDS, 999_999_999, True),
        (TIMESTAMP_MIN_SECONDS - 1, 0, False),
        (TIMESTAMP_MAX_SECONDS + 1, 0, False),
        (2**40, 0, False),
        (0, -1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_timestamps_must_be_in_protobufs_range(seconds: int, nanos: int, valid: bool) -> None:
    value = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    if valid:
        check_timestamp("event.time", value)
        value.ToDatetime()  # what the check guards
        return
    with pytest.raises(InvalidArgument) as error:
        check_timestamp("event.time", value)
    assert error.value.violations[0].field == "event.time"


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 5, 1, 2, 3, 456_789, tzinfo=UTC),
        datetime(1, 1, 1),  # naive: UTC, as FromDatetime reads it
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),  # before the epoch
        datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
def test_timestamps_convert_as_protobufs_own(value: datetime) -> None:
    want = timestamp_pb2.Timestamp()
    want.FromDatetime(value)
    assert timestamp(value) == want
    assert timestamp(None) is None
