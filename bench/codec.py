"""``python -m bench codec``: chunk codecs on the corpus (bench/corpus.py), size and speed.

Each metric of the corpus is cut into chunks of 1k, 4k and 16k points and taken whole, and each
chunk's three columns are encoded the way ``metric_chunks`` stores them: steps (elided when
consecutive), values, timestamps (one when all equal). The elisions are the same for every
codec, so what differs is the codec on the columns that are stored. Figures, in bytes per point:

* tables (stderr) per chunk size: values per series, steps and timestamps per shape, and each
  metric's total;
* ``codec_<codec>_median_values_bytes_per_point`` and ``..._median_total_...`` at each chunk
  size, ``codec_<codec>_noise_...``, and the ratio against raw (today's format);
* encode and decode speed in M points/s of the float columns (values, timestamps) at the
  recommended chunk size, beside the physical limit: ``np.copy`` of the same raw bytes. Raw
  decoding is ``np.frombuffer`` (no copy), so it beats the limit; pcodec's encoding includes
  simtrack/codec.py's check that the blob decodes bit for bit, and its dictionary-mode try.

The baseline is 8 + 8 + 8 bytes per point (raw steps, values and timestamps, nothing elided).
"""

from __future__ import annotations

import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from bench.corpus import METRICS, POINTS, STEPS, TIMESTAMPS, VALUES, Array
from bench.report import Report, Target
from simtrack import codec

Encoder = Callable[[Array], bytes]
Decoder = Callable[[bytes, np.dtype[Any], int], Array]
# The chunk size recommended for compaction, where the targets are checked and speed is taken:
# 1k misses the noise target (about 7.06 B/point); 16k beats 4k on the median total (2.3 against
# 2.9 B/point: dictionary-like series, strided steps, timestamps) and decodes in ~0.1 ms.
RECOMMENDED = 16_384
FULL_SIZES = [1_000, 4_096, 16_384, 0]  # 0: the whole series as one chunk
QUICK_SIZES = [1_000, 4_096, 16_384]


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Encoder
    decode: Decoder
    floats_only: bool = False  # steps (int64) are stored raw with this codec


def _raw_decode(blob: bytes, dtype: np.dtype[Any], n: int) -> Array:
    return np.frombuffer(blob, dtype=dtype)


def _pcodec(level: int) -> Codec:
    def encode(array: Array) -> bytes:
        if array.dtype == codec.STEP:
            return codec.encode_steps(array, level)  # never elided here: see Chunked
        return codec.encode_values(array, level)

    def decode(blob: bytes, dtype: np.dtype[Any], n: int) -> Array:
        if dtype == codec.STEP:
            return codec.decode_steps(blob, n, first_step=0)
        return codec.decode_values(blob, n)

    return Codec(f"pcodec{level}", encode, decode)


def _zlib(level: int) -> Codec:
    return Codec(
        f"zlib{level}",
        lambda a: zlib.compress(a.tobytes(), level),
        lambda b, dtype, n: np.frombuffer(zlib.decompress(b), dtype=dtype),
    )


def _zstd(zstandard: Any, level: int) -> Codec:
    compressor = zstandard.ZstdCompressor(level=level)
    decompressor = zstandard.ZstdDecompressor()

    def encode(array: Array) -> bytes:
        return bytes(compressor.compress(array.tobytes()))

    def decode(blob: bytes, dtype: np.dtype[Any], n: int) -> Array:
        return np.frombuffer(decompressor.decompress(blob), dtype=dtype)

    return Codec(f"zstd{level}", encode, decode)


def _blosc2(blosc2: Any, label: str, filters: list[Any]) -> Codec:
    params = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "typesize": 8, "filters": filters}

    def encode(array: Array) -> bytes:
        return bytes(blosc2.compress2(array, nthreads=1, **params))

    def decode(blob: bytes, dtype: np.dtype[Any], n: int) -> Array:
        return np.frombuffer(blosc2.decompress2(blob, nthreads=1), dtype=dtype)

    return Codec(f"blosc2_{label}", encode, decode)


def _optional_codecs(report: Report) -> list[Codec]:
    """The candidates from libraries the server does not depend on, where they are installed."""
    found: list[Codec] = []
    try:
        import zstandard
    except ImportError:
        report.info("zstandard is not installed: no zstd figures (pip install zstandard)")
    else:
        found += [_zstd(zstandard, 3), _zstd(zstandard, 19)]
    try:
        import blosc2
    except ImportError:
        report.info("blosc2 is not installed: no blosc2 figures (pip install blosc2)")
    else:
        # Blosc2's filters for floats: byte shuffle, then byte-wise deltas; zstd behind them.
        found.append(_blosc2(blosc2, "shuffle", [blosc2.Filter.SHUFFLE]))
        found.append(_blosc2(blosc2, "bytedelta", [blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA]))
    try:
        import fpzip
    except ImportError:
        report.info("fpzip is not installed: no fpzip figures (pip install fpzip)")
    else:
        found.append(
            Codec(
                "fpzip",
                lambda a: fpzip.compress(a, precision=0, order="C"),
                lambda b, dtype, n: fpzip.decompress(b, order="C").reshape(-1),
                floats_only=True,
            )
        )
    return found


RAW = Codec("raw", lambda a: a.tobytes(), _raw_decode)


@dataclass
class Chunked:
    """One column of every chunk: the arrays, and which of them the format elides."""

    arrays: list[Array]
    elided: list[bool]

    @property
    def points(self) -> int:
        return sum(len(a) for a in self.arrays)


def _cut(array: Array, size: int) -> list[Array]:
    size = size or len(array)
    return [array[i : i + size] for i in range(0, len(array), size)]


def _values_column(values: Array, size: int) -> Chunked:
    arrays = _cut(values, size)
    return Chunked(arrays, [False] * len(arrays))


def _steps_column(steps: Array, size: int) -> Chunked:
    arrays = _cut(steps, size)
    return Chunked(arrays, [codec.encode_steps(a) == b"" for a in arrays])


def _stamps_column(stamps: Array, size: int) -> Chunked:
    arrays = _cut(stamps, size)
    return Chunked(arrays, [len(codec.encode_timestamps(a)) == 8 for a in arrays])


def column_bytes(column: Chunked, chosen: Codec) -> int:
    """The stored bytes of a column: the elided forms as they are, the others encoded."""
    total = 0
    for array, elided in zip(column.arrays, column.elided, strict=True):
        if elided:
            total += 0 if array.dtype == codec.STEP else 8
        elif chosen.floats_only and array.dtype == codec.STEP:
            total += array.nbytes
        else:
            total += len(chosen.encode(array))
    return total


def _table(title: str, rows: dict[str, list[float]], names: list[str]) -> None:
    width = max(len(n) for n in names) + 2
    print(f"\n{title} (bytes per point)", file=sys.stderr)
    print(" " * 16 + "".join(n.rjust(width) for n in names), file=sys.stderr)
    for label, cells in rows.items():
        print(label.ljust(16) + "".join(f"{c:{width}.3f}" for c in cells), file=sys.stderr)


def _best_s(call: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _encode_all(chosen: Codec, columns: list[Array]) -> list[bytes]:
    return [chosen.encode(c) for c in columns]


def _decode_all(chosen: Codec, blobs: list[bytes], columns: list[Array]) -> list[Array]:
    return [chosen.decode(b, c.dtype, len(c)) for b, c in zip(blobs, columns, strict=True)]


def _speed(report: Report, codecs: list[Codec], columns: list[Array]) -> None:
    """Encode and decode speed (best of 3) over ``columns``, checking every round trip."""
    points = sum(len(c) for c in columns)
    joined = np.concatenate(columns)
    limit = points / _best_s(lambda: np.copy(joined)) / 1e6
    report.add("codec_memcpy_points_per_s", limit, "M points/s", note="np.copy of 8 B/point")
    for chosen in codecs:
        blobs = _encode_all(chosen, columns)
        for back, c in zip(_decode_all(chosen, blobs, columns), columns, strict=True):
            if back.tobytes() != c.tobytes():
                raise RuntimeError(f"{chosen.name} does not round-trip")
        encode = points / _best_s(partial(_encode_all, chosen, columns)) / 1e6
        decode = points / _best_s(partial(_decode_all, chosen, blobs, columns)) / 1e6
        report.add(f"codec_{chosen.name}_encode_points_per_s", encode, "M points/s")
        report.add(f"codec_{chosen.name}_decode_points_per_s", decode, "M points/s")
        report.add(f"codec_{chosen.name}_decode_vs_memcpy", decode / limit, "x")


def _label(size: int) -> str:
    return f"{size // 1000}k" if size else "whole"


def _median(rows: dict[str, list[float]], index: int) -> float:
    return statistics.median(cells[index] for cells in rows.values())


def run_codec(quick: bool) -> int:
    report = Report()
    points = POINTS // 5 if quick else POINTS
    sizes = QUICK_SIZES if quick else FULL_SIZES
    codecs = [RAW, _zlib(6), _pcodec(4), _pcodec(8), _pcodec(12), *_optional_codecs(report)]
    names = [c.name for c in codecs]
    values = {name: make(points) for name, make in VALUES.items()}
    steps = {name: make(points) for name, make in STEPS.items()}
    stamps = {name: make(points) for name, make in TIMESTAMPS.items()}
    report.add("codec_baseline_bytes_per_point", 24, "B/point", note="raw, nothing elided")
    for size in sizes:
        label = _label(size)
        with report.phase(f"sizes, chunks of {label}"):
            value_rows = {
                name: [column_bytes(_values_column(a, size), c) / points for c in codecs]
                for name, a in values.items()
            }
            step_rows = {
                name: [column_bytes(_steps_column(a, size), c) / points for c in codecs]
                for name, a in steps.items()
            }
            stamp_rows = {
                name: [column_bytes(_stamps_column(a, size), c) / points for c in codecs]
                for name, a in stamps.items()
            }
        total_rows = {
            m.name: [
                value_rows[m.name][i] + step_rows[m.steps][i] + stamp_rows[m.stamps][i]
                for i in range(len(codecs))
            ]
            for m in METRICS
        }
        _table(f"values, chunks of {label}", value_rows, names)
        _table(f"steps, chunks of {label}", step_rows, names)
        _table(f"timestamps, chunks of {label}", stamp_rows, names)
        _table(
            f"total per metric (steps, timestamps as paired in METRICS), {label}", total_rows, names
        )
        raw_values, raw_total = _median(value_rows, 0), _median(total_rows, 0)
        recommended = size == RECOMMENDED
        for i, chosen in enumerate(codecs):
            prefix = f"codec_{chosen.name}_{label}"
            median_values = _median(value_rows, i)
            report.add(
                f"{prefix}_median_values_bytes_per_point",
                median_values,
                "B/point",
                note=f"{median_values / raw_values:.3f} of raw",
                target=Target(2.0, at_least=False) if recommended else None,
            )
            median_total = _median(total_rows, i)
            report.add(
                f"{prefix}_median_total_bytes_per_point",
                median_total,
                "B/point",
                note=f"{median_total / raw_total:.3f} of raw, {median_total / 24:.3f} of 24",
            )
            report.add(
                f"{prefix}_noise_values_bytes_per_point",
                value_rows["noise"][i],
                "B/point",
                target=Target(7.0, at_least=False) if recommended else None,
            )
    label = _label(RECOMMENDED)
    with report.phase(f"speed, chunks of {label}"):
        floats = [*values.values(), *stamps.values()]
        _speed(report, codecs, [chunk for a in floats for chunk in _cut(a, RECOMMENDED)])
    return 0
