"""The protos document what the server does, for clients that never read its code.

The comments are read from protoc's source info (what the generated stubs of every language
carry as doc comments) and held to the server's own declarations: a listing's filterable fields
and enum values, the units of time fields, the error reasons the server can emit. A change on
one side without the other fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from simtrack.errors import ERRORS_BY_CODE_NAME, SimtrackError
from simtrack.server.api.error_mapping import (
    DESCRIPTION_MAX_BYTES,
    ERROR_DOMAIN,
    FIELD_MAX_BYTES,
    MESSAGE_MAX_BYTES,
    VIOLATIONS_MAX,
)
from simtrack.server.core.filters import orderable
from simtrack.server.core.listing import EnumField, Listing
from tests.unit.test_listing import declared_listings

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PACKAGE = "simtrack.v1"
# Requests that take a listing's filter besides its List{Collection}Request.
MORE_FILTERS = {"runs": ["GetRunStatsRequest"]}

# FileDescriptorProto field numbers in SourceCodeInfo paths.
MESSAGE_TYPE, ENUM_TYPE, SERVICE = 4, 5, 6
FIELD, NESTED_TYPE, METHOD = 2, 3, 2


@dataclass(frozen=True)
class Documented:
    """A proto element (``simtrack.v1.Run.start_time``) and its leading comment."""

    name: str
    comment: str
    field: descriptor_pb2.FieldDescriptorProto | None = None


def _load(tmp: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    out = tmp / "protos.pb"
    include = str(Path(protoc.__file__).parent / "_proto")
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info"]
    assert protoc.main([*args, f"--descriptor_set_out={out}", *sources]) == 0
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def _elements(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Documented]:
    comments = {
        tuple(location.path): location.leading_comments
        for location in file.source_code_info.location
    }
    found: dict[str, Documented] = {}

    def message(proto: descriptor_pb2.DescriptorProto, prefix: str, path: tuple[int, ...]) -> None:
        name = f"{prefix}.{proto.name}"
        found[name] = Documented(name, comments.get(path, ""))
        for i, field in enumerate(proto.field):
            full = f"{name}.{field.name}"
            found[full] = Documented(full, comments.get((*path, FIELD, i), ""), field)
        for i, nested in enumerate(proto.nested_type):
            message(nested, name, (*path, NESTED_TYPE, i))

    for i, proto in enumerate(file.message_type):
        message(proto, file.package, (MESSAGE_TYPE, i))
    for i, service in enumerate(file.service):
        name = f"{file.package}.{service.name}"
        found[name] = Documented(name, comments.get((SERVICE, i), ""))
        for j, method in enumerate(service.method):
            full = f"{name}.{method.name}"
            found[full] = Documented(full, comments.get((SERVICE, i, METHOD, j), ""))
    for i, enum in enumerate(file.enum_type):
        name = f"{file.package}.{enum.name}"
        found[name] = Documented(name, comments.get((ENUM_TYPE, i), ""))
    return found


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Documented]:
    """Every message, field, service, method and enum of simtrack.v1 with its comment."""
    found: dict[str, Documented] = {}
    for file in _load(tmp_path_factory.mktemp("descriptors")):
        if file.package == PACKAGE:
            found.update(_elements(file))
    assert f"{PACKAGE}.ListRunsRequest.filter" in found
    return found


def filter_requests(collection: str) -> list[str]:
    return [f"List{collection.title()}Request", *MORE_FILTERS.get(collection, [])]


@pytest.mark.parametrize("collection", sorted(declared_listings()))
def test_every_listing_documents_its_filter_fields_and_values(
    collection: str, documented: dict[str, Documented]
) -> None:
    listing: Listing = declared_listings()[collection]
    for request in filter_requests(collection):
        element = documented.get(f"{PACKAGE}.{request}.filter")
        assert element is not None, f"no {request}.filter in the protos for listing {collection}"
        comment = " ".join(element.comment.split())
        for field, parser in listing.fields.items():
            assert f" {field} (" in comment, f"{request}.filter does not document {field}"
            if isinstance(parser, EnumField):
                for member in parser.enum:
                    for spelling in (member.value, parser.proto_prefix + member.value.upper()):
                        assert spelling in comment, f"{request}.filter: {field} {spelling}"
        assert "AND" in comment and "!=" in comment, f"{request}.filter states no syntax"
        assert "INVALID_ARGUMENT" in comment, f"{request}.filter states no error"


@pytest.mark.parametrize("collection", sorted(declared_listings()))
def test_every_listing_documents_its_order_by_fields(
    collection: str, documented: dict[str, Documented]
) -> None:
    listing: Listing = declared_listings()[collection]
    request = f"List{collection.title()}Request"
    element = documented.get(f"{PACKAGE}.{request}.order_by")
    assert element is not None, f"no {request}.order_by in the protos"
    comment = " ".join(element.comment.split())
    for field, parser in listing.fields.items():
        if orderable(parser):
            name = field.removesuffix("*")  # params.KEY
            assert re.search(rf"\b{re.escape(name)}", comment), f"{request}.order_by: {field}"
    for word in ("desc", "AIP-132", "INVALID_ARGUMENT", "Empty:"):
        assert word in comment, f"{request}.order_by says nothing of {word}"


def test_every_filter_in_the_protos_is_a_listing_of_the_server(
    documented: dict[str, Documented],
) -> None:
    """The other way round: a documented filter the server does not parse would mislead."""
    served = {r for c in declared_listings() for r in filter_requests(c)}
    in_protos = {name.split(".")[-2] for name in documented if name.endswith("Request.filter")}
    assert in_protos == served


# -- time fields: unit, precision, clock ---------------------------------------------------------

TIME_TYPES = {".google.protobuf.Timestamp", ".google.protobuf.Duration"}
TIME_NAME = re.compile(
    r"(^|_)(time|times|timestamp|timestamps|duration|deadline|interval|timeout|tick|ticks)(_|$)"
    r"|_(ns|us|ms|seconds|secs)$"
)
UNITS = ("nanosecond", "microsecond", "millisecond", "second", "tick")


def time_fields(documented: dict[str, Documented]) -> list[Documented]:
    return [
        element
        for element in documented.values()
        if element.field is not None
        and (element.field.type_name in TIME_TYPES or TIME_NAME.search(element.field.name))
    ]


def test_time_fields_are_found(documented: dict[str, Documented]) -> None:
    names = {element.name.removeprefix(f"{PACKAGE}.") for element in time_fields(documented)}
    assert {
        "Run.create_time",
        "Run.duration",
        "Event.time",
        "MetricSeries.timestamps",
        "Welcome.heartbeat_interval_seconds",
        "DurationStats.p95",
        "Scenario.duration_ticks",
    } <= names


def test_every_time_field_states_its_unit(documented: dict[str, Documented]) -> None:
    missing = [
        element.name
        for element in time_fields(documented)
        if not any(unit in element.comment for unit in UNITS)
    ]
    assert not missing, f"time fields whose comment states no unit: {missing}"


def test_every_point_in_time_states_its_clock(documented: dict[str, Documented]) -> None:
    """A Timestamp (or Unix-seconds column) is the server's clock or the worker's: say which."""
    points = [
        element
        for element in time_fields(documented)
        if element.field is not None
        and (
            element.field.type_name == ".google.protobuf.Timestamp"
            or element.field.name.endswith("timestamps")
        )
    ]
    assert points
    missing = [element.name for element in points if "clock" not in element.comment]
    assert not missing, f"points in time whose comment names no clock: {missing}"


# -- errors: the google.rpc details the server attaches ----------------------------------------


def _subclasses(cls: type[SimtrackError]) -> set[type[SimtrackError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def emitted_reasons() -> set[str]:
    """Every google.rpc.ErrorInfo reason the server can send: the ``reason`` of an error class
    (api/error_mapping.py attaches it), and any literal reason given to ErrorInfo in the server.
    """
    declared = (cls.__dict__.get("reason") for cls in _subclasses(SimtrackError))
    reasons = {reason for reason in declared if isinstance(reason, str)}
    for source in (ROOT / "server" / "simtrack").rglob("*.py"):
        reasons |= set(re.findall(r"ErrorInfo\([^)]*reason=\"(\w+)\"", source.read_text(), re.S))
    return reasons


def test_every_service_points_to_the_error_documentation(
    documented: dict[str, Documented],
) -> None:
    services = [e for e in documented.values() if e.name.endswith("Service")]
    assert len(services) >= 7
    for service in services:
        assert "google.rpc" in service.comment, f"{service.name} says nothing of its errors"


def test_the_error_details_the_server_attaches_are_documented(
    documented: dict[str, Documented],
) -> None:
    comment = " ".join(documented[f"{PACKAGE}.RunService"].comment.split())
    reasons = emitted_reasons()
    assert "SEQUENCE_GAP" in reasons
    for reason in reasons:
        assert f'"{reason}"' in comment, f"ErrorInfo reason {reason} is not documented"
    assert f'domain "{ERROR_DOMAIN}"' in comment
    for metadata in ("expected_seq", "received_seq"):
        assert metadata in comment
    for code in {*ERRORS_BY_CODE_NAME, "INTERNAL", "RESOURCE_EXHAUSTED"}:
        assert f"{code}:" in comment, f"status {code} is not documented"
    for detail in ("google.rpc.BadRequest", "google.rpc.ResourceInfo", "google.rpc.ErrorInfo"):
        assert detail in comment
    for bound in (MESSAGE_MAX_BYTES, VIOLATIONS_MAX, FIELD_MAX_BYTES, DESCRIPTION_MAX_BYTES):
        assert str(bound) in comment
