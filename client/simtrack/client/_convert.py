"""JSON objects to ``google.protobuf.Struct``, one validation for the client and the worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from simtrack.errors import InvalidArgument

__all__ = ["to_struct"]


def to_struct(value: Mapping[str, Any] | None, field: str) -> struct_pb2.Struct | None:
    """``value`` as a Struct (None stays None); InvalidArgument on ``field`` when it is not a
    JSON object (keys strings; values numbers, strings, booleans, None, lists, objects).
    """
    if value is None:
        return None
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument.of(field, f"must be a JSON object: {exc}") from None
    return struct
