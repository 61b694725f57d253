"""GetMetricHistoryResponse built from numpy columns at memory speed.

Building the message from Python lists costs ~160 ns a point (a 100,000-point page: 16 ms,
most of the server's time for it). On the wire a packed ``repeated double`` is the column's
little-endian bytes and a packed ``repeated int64`` its varints, both made here with a few
numpy operations; protobuf then parses the bytes into the message (a copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simtrack.v1 import telemetry_pb2 as tpb

Array = np.ndarray[Any, Any]
_LENGTH_DELIMITED, _VARINT = 2, 0


def varints(values: Array) -> bytes:
    """The protobuf varints of int64 ``values`` (negative ones take ten bytes), concatenated."""
    unsigned = values.astype(np.int64, copy=False).view(np.uint64)
    sizes = np.ones(len(unsigned), dtype=np.int64)
    for k in range(1, 10):
        above = unsigned >= np.uint64(1 << (7 * k))
        if not above.any():
            break
        sizes += above
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    offsets = np.cumsum(sizes) - sizes
    for k in range(int(sizes.max(initial=0))):
        has = sizes > k
        septet = (unsigned[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (sizes[has] > k + 1).astype(np.uint8) << 7  # continuation bit
        out[offsets[has] + k] = septet.astype(np.uint8) | more
    return out.tobytes()


def _key(field: int, wire_type: int) -> bytes:
    return varints(np.array([field << 3 | wire_type]))


def _bytes_field(field: int, payload: bytes) -> bytes:
    if not payload:
        return b""  # proto3: an empty packed field is absent
    return _key(field, _LENGTH_DELIMITED) + varints(np.array([len(payload)])) + payload


def history_response(
    steps: Array,
    values: Array,
    timestamps: Array,
    next_page_token: str,
    range_count: int,
    downsampled: bool,
) -> tpb.GetMetricHistoryResponse:
    """The response, as protobuf would build it from the same columns and fields."""
    wire = b"".join(
        (
            _bytes_field(1, varints(steps)),
            _bytes_field(2, values.astype("<f8", copy=False).tobytes()),
            _bytes_field(3, timestamps.astype("<f8", copy=False).tobytes()),
            _bytes_field(4, next_page_token.encode()),
            _key(5, _VARINT) + varints(np.array([range_count])) if range_count else b"",
            _key(6, _VARINT) + b"\x01" if downsampled else b"",
        )
    )
    return tpb.GetMetricHistoryResponse.FromString(wire)
