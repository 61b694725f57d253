"""Optional py-spy sampling of the server during a case (``python -m bench ingest --profile DIR``).

Writes ``DIR/<case>.txt`` (py-spy's raw collapsed stacks: flamegraph.pl, speedscope and
inferno read them) and ``DIR/<case>.top.txt`` (the samples by part of the server, then the
functions with the most samples, on their own and with their callees). py-spy samples without
stopping the server (``--nonblocking``), so the case runs at nearly its usual speed; ``native``
(C frames too) has to stop it for each sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

RATE = 250  # samples per second


class Profiler:
    """py-spy attached to one process for the duration of a case."""

    def __init__(self, directory: Path, native: bool = False) -> None:
        self.directory = directory
        self.native = native
        self.executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def available(self) -> bool:
        return Path(self.executable).exists()

    async def start(self, pid: int, name: str) -> asyncio.subprocess.Process:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.executable,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--output",
            str(self.directory / f"{name}.txt"),
        ]
        # native frames need the process stopped while sampling (slower, but shows C code)
        command.append("--native" if self.native else "--nonblocking")
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(0.5)  # let it attach before the case starts
        return process

    async def stop(self, process: asyncio.subprocess.Process, name: str) -> Path:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
        raw = self.directory / f"{name}.txt"
        top = self.directory / f"{name}.top.txt"
        if raw.exists():
            top.write_text(summarize(raw.read_text()))
        return top


# Parts of the server, by a frame their samples have (the first matching part wins).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("writer: notify after commit (bus)", ("PostgresBus", "publish_runs")),
    ("writer: chunk and summary INSERTs", ("_write_rows",)),
    ("writer: run rows (SELECT FOR UPDATE, flush)", ("_apply (",)),
    ("writer: rest of the group commit", ("GroupCommitWriter",)),
    ("decode (_series_chunk, numpy)", ("_series_chunk", "decode (")),
    ("receive (gRPC read, protobuf parse)", ("TelemetryServicer._read",)),
    ("acks and responses", ("_send_acks", "TelemetryServicer.StreamRun", "CallInterceptor")),
    ("other threads (gRPC poller; SQLite: aiosqlite)", ("Thread.run",)),
    ("event loop: epoll", ("EpollSelector.select",)),
    ("event loop: native callbacks (gRPC, asyncio)", ("Handle._run",)),
]
GREENLET = "SQLAlchemy/psycopg in greenlets (the writer's SQL)"


def _part(stack: str) -> str:
    root = stack.split(";", 1)[0]
    if "sqlalchemy/" in root or "psycopg/" in root:
        return GREENLET  # a greenlet's stack: SQLAlchemy's sync side of an awaited call
    for name, keys in PARTS:
        if any(key in stack for key in keys):
            return name
    return "other"


def _frame(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``: lines apart, one function."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0].rstrip(')')})"


def summarize(collapsed: str, count: int = 40) -> str:
    """py-spy's raw output summed by part of the server, by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        parts[_part(stack)] += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "by part of the server:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in parts.most_common()]
    lines += ["", "own (leaf) samples:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in own.most_common(count)]
    lines += ["", "inclusive samples:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in inclusive.most_common(count)]
    return "\n".join(lines) + "\n"
