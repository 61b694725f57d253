"""A staged message's body (``staged_messages.body``): the series of one stream message.

Each series is its metric's id (a length byte, then the id in ASCII: 36 bytes for the UUIDs
the writer derives), a fixed header (the chunk's step range, count and summaries, ``None``
flagged; the three columns' lengths), then its packed columns as a chunk stores them
(``db/chunks.py``). A reader of one metric takes its series out of the run's staged messages
as the chunks they stand for (``StagedSeries``: the message's seq, summaries, columns).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple, Protocol

from simtrack.server.db.chunks import ChunkSummary, StoredChunk

# After the metric id: first and last step, n, the None flags, vmin, vmax, vmin_step,
# vmax_step, vmin_ts, vmax_ts, the lengths of steps, vals and ts.
_HEADER = struct.Struct("<qqiBddqqddIII")


class StagedSeries(NamedTuple):
    """One metric's points of one staged message: a chunk row not yet written."""

    metric_id: str
    seq: int
    first_step: int
    last_step: int
    n: int
    vmin: float | None
    vmax: float | None
    vmin_step: int | None
    vmax_step: int | None
    vmin_ts: float | None
    vmax_ts: float | None
    steps: bytes
    vals: bytes
    ts: bytes

    def stored(self) -> StoredChunk:
        return StoredChunk(
            self.seq, self.first_step, self.last_step, self.n, self.steps, self.vals, self.ts
        )

    def summary(self) -> ChunkSummary:
        return ChunkSummary(
            self.seq, self.first_step, self.last_step, self.n, self.vmin, self.vmax,
            self.vmin_step, self.vmax_step, self.vmin_ts, self.vmax_ts, None,
        )  # fmt: skip


class Series(Protocol):
    """What a body holds of a series: an ingested one (``SeriesChunk``) or a staged one."""

    @property
    def first_step(self) -> int: ...

    @property
    def last_step(self) -> int: ...

    @property
    def n(self) -> int: ...

    @property
    def vmin(self) -> float | None: ...

    @property
    def vmax(self) -> float | None: ...

    @property
    def vmin_step(self) -> int | None: ...

    @property
    def vmax_step(self) -> int | None: ...

    @property
    def vmin_ts(self) -> float | None: ...

    @property
    def vmax_ts(self) -> float | None: ...

    @property
    def steps(self) -> bytes: ...

    @property
    def vals(self) -> bytes: ...

    @property
    def ts(self) -> bytes: ...


def pack_body(series: Iterable[tuple[str, Series]]) -> bytes:
    """The body of a message holding ``series`` (metric id, series) (their seq is the
    row's, not stored).
    """
    parts: list[bytes] = []
    for metric_id, s in series:
        optional = (s.vmin, s.vmax, s.vmin_step, s.vmax_step, s.vmin_ts, s.vmax_ts)
        flags = sum(1 << i for i, value in enumerate(optional) if value is None)
        fill = [0 if v is None else v for v in optional]
        key = metric_id.encode()
        header = _HEADER.pack(
            s.first_step, s.last_step, s.n, flags, *fill, len(s.steps), len(s.vals), len(s.ts)
        )
        parts += (bytes([len(key)]), key, header, s.steps, s.vals, s.ts)
    return b"".join(parts)


_LENGTHS = struct.Struct("<qqi")  # the header's first step, last step and n
_COLUMN_LENGTHS = struct.Struct("<III")  # the header's last field: the columns' lengths
_COLUMNS_AT = _HEADER.size - _COLUMN_LENGTHS.size


def _series_in(body: bytes) -> Iterator[tuple[bytes, int, int, int, int, int]]:
    """Each series of a body: its metric id's bytes, where its header starts, where its
    steps, values and timestamps start, and where it ends.
    """
    at, end = 0, len(body)
    while at < end:
        header = at + 1 + body[at]
        key = body[at + 1 : header]
        steps, vals, ts = _COLUMN_LENGTHS.unpack_from(body, header + _COLUMNS_AT)
        columns = header + _HEADER.size
        at = columns + steps + vals + ts
        yield key, header, columns, columns + steps, columns + steps + vals, at


def unpack_body(
    seq: int, body: bytes, metric_ids: Collection[str] | None = None
) -> Iterator[StagedSeries]:
    """The series of the message ``seq`` (only those of ``metric_ids``, if given)."""
    wanted = None if metric_ids is None else {m.encode() for m in metric_ids}
    for key, header, steps, vals, ts, end in _series_in(body):
        if wanted is not None and key not in wanted:
            continue
        fields = _HEADER.unpack_from(body, header)
        flags = fields[3]
        summaries = [None if flags >> i & 1 else v for i, v in enumerate(fields[4:10])]
        yield StagedSeries._make(
            (
                key.decode(), seq, *fields[:3], *summaries,
                body[steps:vals], body[vals:ts], body[ts:end],
            )
        )  # fmt: skip


def unpack_chunks(
    seq: int, body: bytes, names: dict[bytes, str]
) -> Iterator[tuple[str, StoredChunk]]:
    """The series of the message ``seq`` as chunk rows, by metric id, without their
    summaries: what staging rewrites, at less than half of ``unpack_body``'s cost a series (a
    fleet's move reads thousands). ``names``: metric ids decoded so far, by their bytes.
    """
    for key, header, steps, vals, ts, end in _series_in(body):
        metric_id = names.get(key)
        if metric_id is None:
            metric_id = names[key] = key.decode()
        first_step, last_step, n = _LENGTHS.unpack_from(body, header)
        chunk = StoredChunk(
            seq, first_step, last_step, n, body[steps:vals], body[vals:ts], body[ts:end]
        )
        yield metric_id, chunk
