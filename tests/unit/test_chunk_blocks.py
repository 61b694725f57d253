"""Paged columns and block summaries of compacted chunks (``simtrack/codec.py``, ``db/blocks.py``):
pages decode bit for bit on their own, damage is detected, and every block record equals a
brute-force min and max of its points (NaN, infinities, signed zeros, ties), in both forms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from simtrack import codec
from simtrack.server.db.blocks import (
    BLOCK,
    FULL_POINTS,
    PAGE_POINTS,
    SHORT_POINTS,
    block_summaries,
    read_blocks,
    read_many,
    read_pages,
)
from simtrack.server.domain.rewrite import compact
from tests.support.compaction import ODD_VALUES

Array = np.ndarray[Any, Any]


def series(n: int, seed: int = 5) -> Array:
    """Rounded values (many ties), odd values (NaN payloads, infinities, -0.0) now and then."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.standard_normal(n), 1)
    values[::97] = ODD_VALUES[np.arange(len(values[::97])) % len(ODD_VALUES)]
    values[3:5] = [0.0, -0.0][: max(0, min(2, n - 3))]
    return values


@pytest.mark.parametrize("n", [2, 511, 512, 513, 1500, 16_384])
@pytest.mark.parametrize("dtype", [codec.FLOAT, codec.STEP])
def test_paged_columns_decode_whole_and_page_by_page_bit_for_bit(n: int, dtype: Any) -> None:
    if dtype == codec.FLOAT:
        array = series(n)
        blob = codec.encode_values(array, page=PAGE_POINTS)
        whole = codec.decode_values(blob, n)
    else:
        array = np.cumsum(np.random.default_rng(n).integers(0, 3, n)).astype(codec.STEP)
        blob = codec.encode_steps(array, page=PAGE_POINTS)
        whole = codec.decode_steps(blob, n, int(array[0]))
    assert whole.tobytes() == array.tobytes()
    if not codec.is_paged(blob):  # too small to compress: stored raw, as before
        assert n < 10
        return
    paged = codec.Paged(blob, n, dtype)
    assert paged.page_count() == -(-n // PAGE_POINTS)
    for i in range(paged.page_count()):
        part = array[i * PAGE_POINTS : (i + 1) * PAGE_POINTS]
        assert paged.page(i).tobytes() == part.tobytes()


def test_a_damaged_page_or_index_is_refused() -> None:
    values = series(5000)
    blob = codec.encode_values(values, page=PAGE_POINTS)
    assert codec.is_paged(blob)
    damaged = bytearray(blob)
    damaged[-40] ^= 0x01  # in the last page
    paged = codec.Paged(bytes(damaged), len(values), codec.FLOAT)
    assert paged.page(0).tobytes() == values[:PAGE_POINTS].tobytes()  # others still read
    with pytest.raises(ValueError, match="checksum"):
        paged.page(paged.page_count() - 1)
    with pytest.raises(ValueError, match="checksum"):
        codec.decode_values(bytes(damaged), len(values))
    index = bytearray(blob)
    index[8] ^= 0x01  # in the head
    with pytest.raises(ValueError):
        codec.decode_values(bytes(index), len(values))
    with pytest.raises(ValueError):
        codec.decode_values(blob[:-100], len(values))


def brute_blocks(steps: Array, values: Array, stamps: Array, size: int) -> list[tuple[Any, ...]]:
    """Each block's (first step, last step, and, unless it holds a NaN, its first min and max
    point: value bits, step, timestamp, place), by definition.
    """
    out = []
    for start in range(0, len(values), size):
        block = range(start, min(start + size, len(values)))
        row: tuple[Any, ...] = (int(steps[block[0]]), int(steps[block[-1]]))
        if any(math.isnan(values[i]) for i in block):
            out.append((*row, None))
            continue
        for pick in (min, max):
            best = pick(values[i] for i in block)
            i = next(i for i in block if values[i] == best)
            row += (values[i].tobytes(), int(steps[i]), float(stamps[i]), i)
        out.append(row)
    return out


def as_rows(records: Array) -> list[tuple[Any, ...]]:
    out = []
    for r in records:
        row: tuple[Any, ...] = (int(r["first_step"]), int(r["last_step"]))
        if math.isnan(r["vmin"]):
            out.append((*row, None))
            continue
        for e in ("vmin", "vmax"):
            row += (r[e].tobytes(), int(r[f"{e}_step"]), float(r[f"{e}_ts"]), int(r[f"{e}_at"]))
        out.append(row)
    return out


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000, 5000])
@pytest.mark.parametrize("form", ["short", "full", "repeated"])
def test_block_records_equal_a_brute_force_min_and_max_per_block(n: int, form: str) -> None:
    values = series(n, seed=n)
    first = 1_000_000
    if form == "short":  # consecutive steps, one timestamp: the short form
        steps = first + np.arange(n, dtype=codec.STEP)
        stamps = np.full(n, 1.7e9)
    elif form == "full":  # strided steps, a timestamp each
        steps = first + 3 * np.arange(n, dtype=codec.STEP)
        stamps = 1.7e9 + np.arange(n) * 1e-3
    else:  # every step twice (ties in history order), one timestamp
        steps = first + np.arange(n, dtype=codec.STEP) // 2
        stamps = np.full(n, 1.7e9)
    blob = block_summaries(steps, values, stamps)
    short = form == "short" or n == 1  # one point: consecutive, one timestamp
    assert blob[:1] == (b"S" if short else b"F")
    size = SHORT_POINTS if short else FULL_POINTS
    records = read_blocks(blob, n, first)
    assert as_rows(records) == brute_blocks(steps, values, stamps, size)
    with pytest.raises(ValueError):
        read_blocks(blob[:-1], n, first)


def test_read_many_concatenates_both_forms_with_each_block_placed() -> None:
    short = block_summaries(np.arange(300, dtype=codec.STEP), series(300), np.full(300, 1.0))
    stamps = np.arange(700, dtype=codec.FLOAT)
    full = block_summaries(np.arange(0, 1400, 2, dtype=codec.STEP), series(700), stamps)
    found = read_many([(full, 700, 0), (short, 300, 0)])
    assert found.owner.tolist() == [1, 1, 1, 0, 0, 0]  # the short form's first
    assert found.start.tolist() == [0, 128, 256, 0, 256, 512]
    assert found.length.tolist() == [128, 128, 44, 256, 256, 188]
    records = np.empty(len(found.owner), dtype=BLOCK)
    for name, column in found.fields.items():
        records[name] = column
    assert as_rows(records[:3]) == as_rows(read_blocks(short, 300, 0))
    assert as_rows(records[3:]) == as_rows(read_blocks(full, 700, 0))


def test_compaction_writes_paged_columns_and_blocks_that_read_back() -> None:
    """compact()'s chunks: paged columns, blocks of their points; pages read as they hold."""
    from simtrack.server.db.chunks import StoredChunk, unpack

    rng = np.random.default_rng(2)
    inputs = []
    for seq in range(1, 41):  # 40 batches of 500: steps strided, a timestamp each
        steps = (seq * 500 + np.arange(500)) * 2
        values = np.round(rng.standard_normal(500), 2)
        stamps = 1.7e9 + steps * 1e-3
        inputs.append(
            StoredChunk(
                seq, int(steps[0]), int(steps[-1]), 500, steps.tobytes(), values.tobytes(),
                stamps.tobytes(),
            )
        )  # fmt: skip
    out = compact(inputs, 16_384)
    assert [c.n for c in out] == [16_384, 3_616]
    for chunk in out:
        assert chunk.blocks is not None
        assert all(codec.is_paged(col) for col in (chunk.steps, chunk.vals, chunk.ts))
        steps, values, stamps = unpack(chunk.n, chunk.first_step, chunk.steps, chunk.vals, chunk.ts)
        assert chunk.blocks == block_summaries(steps, values, stamps)
        columns = [(chunk.vals, chunk.n, chunk.first_step)]
        pages = [(0, i) for i in range(0, -(-chunk.n // PAGE_POINTS), 3)]
        read = read_pages(columns, codec.FLOAT, pages)
        for row, (_, page) in enumerate(pages):
            part = values[page * PAGE_POINTS : (page + 1) * PAGE_POINTS]
            assert read[row, : len(part)].tobytes() == part.tobytes()


@pytest.mark.parametrize(
    "steps",
    [[-(2**63), 2**63 - 1], [2**63 - 3, 2**63 - 2, 2**63 - 1], [-(2**63), -(2**63) + 1]],
)
def test_blocks_at_the_ends_of_int64(steps: list[int]) -> None:
    """Steps at the extremes: no wrap-around picks the wrong form or step range."""
    array = np.array(steps, dtype=codec.STEP)
    values = np.arange(len(steps), dtype=codec.FLOAT)
    blob = block_summaries(array, values, np.full(len(steps), 1.0))
    consecutive = steps[-1] - steps[0] == len(steps) - 1
    assert blob[:1] == (b"S" if consecutive else b"F")
    records = read_blocks(blob, len(steps), steps[0])
    assert (int(records["first_step"][0]), int(records["last_step"][0])) == (steps[0], steps[-1])
    assert (int(records["vmin_step"][0]), int(records["vmax_step"][0])) == (steps[0], steps[-1])
