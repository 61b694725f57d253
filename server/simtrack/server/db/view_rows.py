"""What a downsampled view (``domain/views.py``) reads first: a metric's chunks reaching into
its range, column by column.

Each chunk's row summaries (its min and max point) become one `BLOCK` record of the whole
chunk; a compacted chunk also brings its blocks column (a record per block), and a chunk the
range cuts its columns. The view then reads and decodes only what an interval boundary cuts:
a compacted chunk's columns only when its blocks are cut (once brought with every view, they
were most of the statement's time: 2.3 ms of 2.8 for a 1M-point series' 62 chunks, where its
view cuts none).

On PostgreSQL the summaries arrive packed (`packed_view`): one ``bytea`` of big-endian
records, made by the database, read with one ``np.frombuffer``, where 1,000 rows of eleven
values took the server a third of a 1M-point view's 10 ms (psycopg's rows, a tuple per
chunk, then walked into columns). SQLite's rows (and staged series) are summaries one by one
(`ViewRows.of_summaries`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    CTE,
    BigInteger,
    BindParameter,
    ColumnElement,
    LargeBinary,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
)

from simtrack.server.db import models
from simtrack.server.db.blocks import BLOCK
from simtrack.server.db.chunks import STEP, Array, ChunkSummary, StoredChunk

# One chunk's summaries as `packed_view` sends them (int8send, int4send, float8send, xidsend:
# big-endian).
PACKED = np.dtype(
    [
        ("seq", ">i8"),
        ("first_step", ">i8"),
        ("last_step", ">i8"),
        ("n", ">i4"),
        ("vmin", ">f8"),  # NaN (and steps 0): the chunk's summaries do not stand for it
        ("vmax", ">f8"),
        ("vmin_step", ">i8"),
        ("vmax_step", ">i8"),
        ("vmin_ts", ">f8"),
        ("vmax_ts", ">f8"),
        ("version", ">u4"),  # the row's (`CHUNK_VERSION`: its xmin, a 32-bit xid)
    ]
)
_EXTREMES = ("vmin", "vmax", "vmin_step", "vmax_step", "vmin_ts", "vmax_ts")
# A record's extremes where the chunk's summaries do not stand for it.
_NO_EXTREMES = np.array(
    [(math.nan, math.nan, 0, 0, math.nan, math.nan)],
    dtype=[(name, PACKED.fields[name][0]) for name in _EXTREMES],  # type: ignore[index]
).tobytes()
# A chunk row's version. Chunks are never updated, but compaction writes its chunks under seqs
# of those it deletes: a seq read again may hold another chunk, never one of the same version.
CHUNK_VERSION = models.row_version(models.MetricChunk)
_COLUMNS = ("steps", "vals", "ts")
# A range whose chunks hold at most this many points brings every chunk's columns with the
# summaries (at most some 1.5 MB): a view of it shows every point or cuts most chunks, so it
# reads them all anyway, and in the same statement it reads them once.
READ_WHOLE_POINTS = 65_536


@dataclass(frozen=True)
class ViewRows:
    """A metric's chunks reaching into a range, by (first_step, seq): their seqs, point
    counts and whole-chunk `BLOCK` records (NaN values: the row's summaries do not stand for
    the chunk's points); the blocks columns of the compacted ones (``blocked``: their indexes,
    ascending); the columns of the chunks read, by seq; PostgreSQL: each row's version
    (`CHUNK_VERSION`).
    """

    seqs: Array
    counts: Array
    records: Array
    blocked: Array
    blocks: list[bytes]
    read: dict[int, StoredChunk]
    versions: Array | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    @classmethod
    def of_summaries(
        cls, chunks: Sequence[ChunkSummary], read: Iterable[StoredChunk] = ()
    ) -> ViewRows:
        """Rows as summaries, by (first_step, seq), and the columns of some of them."""
        blocked = [i for i, c in enumerate(chunks) if c.blocks]
        return cls(
            np.fromiter((c.seq for c in chunks), dtype=STEP, count=len(chunks)),
            np.fromiter((c.n for c in chunks), dtype=np.int64, count=len(chunks)),
            _chunk_records(chunks),
            np.array(blocked, dtype=np.int64),
            [chunks[i].blocks or b"" for i in blocked],
            {c.seq: c for c in read},
        )

    @classmethod
    def of_packed(cls, packed: bytes | None, read: Sequence[tuple[Any, ...]]) -> ViewRows:
        """`packed_view`'s summaries, and its (seq, blocks, steps, vals, ts) of the chunks
        with blocks or read (NULL blocks: none; NULL columns: not read), each in any order:
        these rows are by (first_step, seq).
        """
        summaries = _in_order(np.frombuffer(packed or b"", dtype=PACKED))
        records = np.zeros(len(summaries), dtype=BLOCK)
        for name in set(PACKED.fields or ()) & set(BLOCK.fields or ()):
            records[name] = summaries[name]
        seqs = summaries["seq"].astype(STEP)
        index = {seq: i for i, seq in enumerate(seqs.tolist())} if read else {}
        columns: dict[int, StoredChunk] = {}
        blocked: list[tuple[int, bytes]] = []
        for seq, blocks, *values in read:
            i = index[seq]
            if values[1] is not None:  # vals: never NULL in a chunk read
                first, last = int(records["first_step"][i]), int(records["last_step"][i])
                columns[seq] = StoredChunk(seq, first, last, int(summaries["n"][i]), *values)
            if blocks is not None:
                blocked.append((i, blocks))
        blocked.sort()
        return cls(
            seqs,
            summaries["n"].astype(np.int64),
            records,
            np.array([i for i, _ in blocked], dtype=np.int64),
            [blocks for _, blocks in blocked],
            columns,
            summaries["version"].astype(np.int64),
        )

    def merged(self, other: ViewRows) -> ViewRows:
        """These rows and ``other``'s (staged series, say), by (first_step, seq)."""
        if not len(other):
            return self
        every = (self, other)
        records = np.concatenate([r.records for r in every])
        seqs = np.concatenate([r.seqs for r in every])
        order = np.lexsort((seqs, records["first_step"]))
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        blocked = np.concatenate((self.blocked, other.blocked + len(self)))
        by_place = sorted(zip(place[blocked].tolist(), self.blocks + other.blocks, strict=True))
        return ViewRows(
            seqs[order],
            np.concatenate([r.counts for r in every])[order],
            records[order],
            np.array([i for i, _ in by_place], dtype=np.int64),
            [blocks for _, blocks in by_place],
            self.read | other.read,
        )  # (no versions: staged series have none)

    def versions_of(self, seqs: Iterable[int]) -> dict[int, int] | None:
        """The row versions of the chunks of ``seqs``; None: not known (not PostgreSQL)."""
        if self.versions is None:
            return None
        at = {seq: i for i, seq in enumerate(self.seqs.tolist())}
        return {seq: int(self.versions[at[seq]]) for seq in seqs}

    def with_read(self, chunks: Iterable[StoredChunk]) -> ViewRows:
        """These rows, with the columns of ``chunks`` read as well."""
        return replace(self, read=self.read | {c.seq: c for c in chunks})


def _in_order(summaries: Array) -> Array:
    """`PACKED` summaries by (first_step, seq): as they are when they came so (an index scan
    brings them so: checked in a few µs, where sorting 1,000 took 100).
    """
    first, seq = summaries["first_step"].astype(STEP), summaries["seq"].astype(STEP)
    same = first[1:] == first[:-1]
    if np.all((first[1:] > first[:-1]) | (same & (seq[1:] > seq[:-1]))):
        return summaries
    return summaries[np.lexsort((seq, first))]


def _chunk_records(chunks: Sequence[ChunkSummary]) -> Array:
    """Chunks' row summaries as `BLOCK` records of the whole chunk (NaN values: not valid,
    unless every value is finite: ``vmin_ts`` set).
    """
    records = np.zeros(len(chunks), dtype=BLOCK)
    if not chunks:
        return records
    # Column by column, transposed in one pass (attribute by attribute took twice as long).
    columns = dict(zip(ChunkSummary._fields, zip(*chunks, strict=True), strict=True))
    valid = np.array([ts is not None for ts in columns["vmin_ts"]], dtype=bool)
    for name in ("first_step", "last_step"):
        records[name] = columns[name]
    for name in ("vmin", "vmax", "vmin_ts", "vmax_ts"):
        values = np.array(columns[name], dtype=np.float64)  # None: NaN
        records[name] = np.where(valid, values, math.nan)
    for name in ("vmin_step", "vmax_step"):
        steps = np.fromiter((s or 0 for s in columns[name]), dtype=np.int64, count=len(chunks))
        records[name] = np.where(valid, steps, 0)
    return records


def _reaching(metric: ColumnElement[Any], postgres: bool = False) -> Subquery:
    """The chunks of ``metric`` (tenant :tenant) reaching into [:lo, :hi], each with ``read``:
    whether a view's first statement brings its columns (cut by the range, or any of a range
    of at most :whole_points, `READ_WHOLE_POINTS`); on ``postgres``, with its ``xmin``
    (its version, `CHUNK_VERSION`).
    """
    chunk = models.MetricChunk
    lo, hi = bindparam("lo", type_=BigInteger), bindparam("hi", type_=BigInteger)
    reaching = (
        chunk.tenant_id == bindparam("tenant", type_=String),
        chunk.metric_id == metric,
        chunk.last_step >= lo,
        chunk.first_step <= hi,
    )
    # Of all the chunks, once: as a window function, SQLite read every chunk's columns; as a
    # plain subquery, PostgreSQL summed the chunks again at each of ``read``'s eight uses in
    # `packed_view` (an InitPlan each: 1.5 ms of a 1M-point view's 4 ms of the database's CPU).
    range_points = select(func.sum(chunk.n).label("points")).where(*reaching).cte("range_points")
    if postgres:
        range_points = range_points.prefix_with("MATERIALIZED")
    read = or_(
        chunk.first_step < lo,
        chunk.last_step > hi,
        select(range_points.c.points).scalar_subquery()
        <= bindparam("whole_points", type_=BigInteger),
    )
    xmin: ColumnElement[Any] = literal_column(f"{chunk.__tablename__}.xmin").label("xmin")
    more = [xmin] if postgres else []
    return select(chunk, read.label("read"), *more).where(*reaching).subquery("reaching")


def summary_rows(metric: ColumnElement[Any]) -> Select[Any]:
    """`_reaching` as rows by (first_step, seq): each chunk's `ChunkSummary` fields, then its
    columns if read (else NULLs); see `rows_of_summaries`.
    """
    c = _reaching(metric).c
    return select(
        *(c[name] for name in ChunkSummary._fields),
        *(case((c.read, c[name]), else_=None) for name in _COLUMNS),
    ).order_by(c.first_step, c.seq)


def rows_of_summaries(rows: Sequence[Sequence[Any]]) -> ViewRows:
    """`summary_rows`' rows as `ViewRows`."""
    fields = len(ChunkSummary._fields)
    summaries = [ChunkSummary(*row[:fields]) for row in rows]
    read = [
        StoredChunk(s.seq, s.first_step, s.last_step, s.n, *row[fields:])
        for s, row in zip(summaries, rows, strict=True)
        if row[fields] is not None
    ]
    return ViewRows.of_summaries(summaries, read)


def _joined(*parts: ColumnElement[Any]) -> ColumnElement[Any]:
    """The ``bytea`` parts one after another."""
    return functools.reduce(lambda a, b: a.op("||", return_type=LargeBinary)(b), parts)


def packed_view(metric: ColumnElement[Any]) -> Select[Any]:
    """PostgreSQL: one row of `_reaching`: how many, their `PACKED` summaries in one
    ``bytea`` (NULL: none), and arrays of the seq, blocks and columns of those with blocks or
    read (NULL: none; a NULL element: no blocks, or columns not read), each array's elements in
    the same order, the records in any (ordered there, each aggregate sorted its rows: a
    sixth of the statement's time; `ViewRows.of_packed` orders them).
    """
    c = _reaching(metric, postgres=True).c

    def send(kind: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
        sent: ColumnElement[Any] = getattr(func, f"{kind}send")(column, type_=LargeBinary)
        return sent

    # The extremes as one part, chosen by one CASE (all six are set when vmin_ts is), and the
    # version as the xid it is: a CASE each and the version through text took a ninth of the
    # statement's time.
    extremes = _joined(
        send("float8", c.vmin),
        send("float8", c.vmax),
        send("int8", c.vmin_step),
        send("int8", c.vmax_step),
        send("float8", c.vmin_ts),
        send("float8", c.vmax_ts),
    )
    record = _joined(
        send("int8", c.seq),
        send("int8", c.first_step),
        send("int8", c.last_step),
        send("int4", c.n),
        case((c.vmin_ts.is_not(None), extremes), else_=literal(_NO_EXTREMES, LargeBinary)),
        send("xid", c.xmin),
    )

    def each(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.array_agg(column).filter(or_(c.read, c.blocks.is_not(None)))

    return select(
        func.count().label("chunks"),
        func.string_agg(record, literal(b"", LargeBinary)).label("packed"),
        each(c.seq).label("read_seqs"),
        each(c.blocks).label("read_blocks"),
        *(each(case((c.read, c[name]), else_=None)).label(f"read_{name}") for name in _COLUMNS),
    )


class ViewRead(NamedTuple):
    """What one statement read for a downsampled view (``HistoryReads.view``)."""

    run_found: bool
    metric_id: str | None  # None: the run has no metric of that name
    staged: bool  # the run has staged messages (then the view is read through a unit of work)
    rows: ViewRows


def metric_of_run(tenant: BindParameter[str], version: ColumnElement[Any] | None = None) -> CTE:
    """``target``: run :run of ``tenant`` (no row: none) with the id and point count of its
    metric :name (NULL: none of that name), whether the run has staged messages, and, given
    its expression, the metric row's ``version``.
    """
    run, metric, staged = models.Run, models.Metric, models.StagedMessage
    has_staged = (
        select(staged.seq)
        .where(staged.tenant_id == tenant, staged.run_id == run.id)
        .exists()
        .label("staged")
    )
    return (
        select(
            run.id.label("run_id"),
            metric.id.label("metric_id"),
            metric.count,
            has_staged,
            *([] if version is None else [version.label("version")]),
        )
        .select_from(run)
        .outerjoin(
            metric,
            and_(
                metric.tenant_id == tenant,
                metric.run_id == run.id,
                metric.name == bindparam("name"),
            ),
        )
        .where(run.tenant_id == tenant, run.id == bindparam("run"))
        .cte("target")
    )


def view_read() -> Select[Any]:
    """PostgreSQL: `packed_view` of metric :name of run :run (tenant :tenant), with the
    metric's id (NULL: none of that name) and whether the run has staged messages; no row:
    no such run.
    """
    target = metric_of_run(bindparam("tenant", type_=String))
    packed = packed_view(select(target.c.metric_id).scalar_subquery()).subquery("packed")
    return select(target.c.metric_id, target.c.staged, *packed.c).join_from(target, packed, true())


def read_view_row(row: Sequence[Any] | None) -> ViewRead:
    """`view_read`'s row as a `ViewRead`."""
    if row is None:
        return ViewRead(False, None, False, ViewRows.of_summaries([]))
    metric_id, staged, *packed = row
    return ViewRead(True, metric_id, bool(staged), rows_of_packed(packed))


def rows_of_packed(row: Sequence[Any]) -> ViewRows:
    """`packed_view`'s row as `ViewRows`."""
    _, packed, seqs, blocks, steps, vals, ts = row
    read = list(zip(seqs or [], blocks or [], steps or [], vals or [], ts or [], strict=True))
    return ViewRows.of_packed(packed, read)
