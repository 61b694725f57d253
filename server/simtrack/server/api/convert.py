"""Conversions shared by all servicers: JSON objects, times, enums and field masks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from simtrack.errors import FieldViolation, InvalidArgument, prefix, quote

E = TypeVar("E", bound=StrEnum)
Msg = TypeVar("Msg", bound=Message)


def value_to_python(field: str, value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(field, value.struct_value)
    if kind == "list_value":
        return [value_to_python(f"{field}[{i}]", v) for i, v in enumerate(value.list_value.values)]
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument.of(field, f"{number} is not a JSON number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    raise InvalidArgument.of(field, "a JSON value with no kind set")


def struct_to_dict(field: str, struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain JSON object; malformed values are INVALID_ARGUMENT naming the path."""
    return {
        key: value_to_python(f"{field}.{prefix(key)}", value)
        for key, value in struct.fields.items()
    }


# The range of google.protobuf.Timestamp (0001-01-01 to 9999-12-31, UTC), in Unix seconds.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
TIMESTAMP_RANGE = "must be between 0001-01-01 and 9999-12-31 (UTC)"


def check_timestamp(field: str, value: timestamp_pb2.Timestamp) -> None:
    """A caller's Timestamp within protobuf's valid range (its own conversions raise beyond)."""
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        raise InvalidArgument.of(field, f"{TIMESTAMP_RANGE}, got {value.seconds} seconds")
    if not 0 <= value.nanos <= 999_999_999:
        raise InvalidArgument.of(field, f"nanos must be between 0 and 999999999, got {value.nanos}")


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """As ``Timestamp.FromDatetime`` (a naive time is UTC), a fifth of its cost: a page of
    runs converts hundreds.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


NANOS = 1_000_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def unix_nanos(field: str, value: timestamp_pb2.Timestamp) -> int:
    """A Timestamp as int64 nanoseconds since the epoch, exactly (1677-09-21 to 2262-04-11)."""
    if not 0 <= value.nanos < NANOS:
        raise InvalidArgument.of(f"{field}.nanos", f"must be 0 to 999999999, got {value.nanos}")
    nanos = value.seconds * NANOS + value.nanos
    if not INT64_MIN <= nanos <= INT64_MAX:
        raise InvalidArgument.of(
            field,
            "must be between 1677-09-21T00:12:43.145224192Z and 2262-04-11T23:47:16.854775807Z "
            "(kept as 64-bit nanoseconds since 1970)",
        )
    return nanos


def timestamp_of_nanos(nanos: int) -> timestamp_pb2.Timestamp:
    """int64 nanoseconds since the epoch as a Timestamp (nanos stay 0..999999999 before 1970)."""
    seconds, rest = divmod(nanos, NANOS)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest)


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def unknown_enum_value(proto: Any, field: str, number: int) -> InvalidArgument:
    """The error for a ``number`` that the proto enum ``proto`` lacks, naming ``field``."""
    allowed = ", ".join(n for n in proto.keys() if not n.endswith("_UNSPECIFIED"))
    return InvalidArgument.of(field, f"unknown value {number} (allowed: {allowed})")


class EnumMapping:
    """Maps a proto enum (``PREFIX_NAME`` values) to a domain StrEnum and back."""

    def __init__(self, proto: Any, domain: type[StrEnum], prefix: str) -> None:
        # ``proto`` is the generated enum (an EnumTypeWrapper at run time).
        self.proto = proto
        self.domain = domain
        self.prefix = prefix
        # Every known number's member, looked up once (ingest maps a kind per series).
        self._members: dict[int, Any] = {
            number: domain(name.removeprefix(prefix).lower())
            for name, number in proto.items()
            if number != 0
        }

    def to_domain(self, field: str, number: int) -> Any:
        """The domain member, None for UNSPECIFIED; unknown numbers are INVALID_ARGUMENT."""
        if number == 0:
            return None
        member = self._members.get(number)
        if member is None:
            raise unknown_enum_value(self.proto, field, number)
        return member

    def to_proto(self, member: StrEnum) -> Any:
        return self.proto.Value(self.prefix + member.value.upper())


def mask_changes(
    message: Msg,
    mask: field_mask_pb2.FieldMask,
    readers: Mapping[str, Callable[[Msg], Any]],
) -> dict[str, Any]:
    """The domain values of the fields an update mask names, read from ``message``."""
    if not mask.paths:
        raise InvalidArgument.of("update_mask", "is required: name the fields to change")
    unknown = [p for p in mask.paths if p not in readers]
    if unknown:
        allowed = ", ".join(sorted(readers))
        raise InvalidArgument(
            FieldViolation("update_mask", f"{quote(path)} cannot be updated (allowed: {allowed})")
            for path in unknown
        )
    return {path: readers[path](message) for path in dict.fromkeys(mask.paths)}
