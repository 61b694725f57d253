"""The gRPC edge: proto values to domain values, and simtrack errors to google.rpc statuses."""

from __future__ import annotations

import math

import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2

from simtrack.errors import (
    ERRORS_BY_CODE_NAME,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from simtrack.server.api.agents import FRAMEWORK, UPDATE_READERS
from simtrack.server.api.convert import dict_to_struct, mask_changes, struct_to_dict
from simtrack.server.api.errors import to_status
from simtrack.server.domain.model import Framework
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
