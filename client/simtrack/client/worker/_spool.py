"""The worker's durable spool: every sequenced StreamRun message, on disk before it is sent.

One SQLite file per run, ``<spool_dir>/<run_id>.sqlite`` (WAL, ``synchronous=NORMAL``: a commit
survives the death of the process; only a power loss can take the last few; 64 KiB pages),
holding

* ``messages(seq, kind, points, body)``: the messages not yet acknowledged by the server, keyed
  by their sequence number. ``body`` is the serialized ``StreamRunRequest`` *without* its ``seq``
  field; :func:`wire_bytes` puts the number in front when the message is sent. Keeping the number
  out of the body lets a spool written before the server was ever reached be renumbered after the
  run's watermark (:meth:`Spool.rebase`) without touching the bodies.
* ``meta``: the run id, the next sequence number to assign, whether the numbering is anchored to
  the server's watermark yet (``based``) and the highest acknowledged seq seen.

A process holds a spool through an exclusive ``flock`` on ``<run_id>.lock`` for as long as it
uses it, so a worker and ``simtrack sync`` never stream the same run at once; the kernel drops
the lock when the process dies, even by ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

try:  # POSIX; elsewhere spools are not locked against a second process.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_SPOOL_DIR = Path("~/.cache/simtrack/spool")
SPOOL_SUFFIX = ".sqlite"
_SCHEMA_VERSION = "1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class SpoolLocked(Exception):
    """Another process (or another worker of this one) holds the run's spool.

    ``holder`` is what the holder wrote in the lock file: ``"worker <pid>"`` or
    ``"upload <pid>"`` (``simtrack sync``, or a worker uploading what others left).
    """

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder

    @property
    def by_upload(self) -> bool:
        """The holder only uploads the spool: it lets go by itself when done."""
        return self.holder.startswith("upload ")


def default_spool_dir() -> Path:
    """``$SIMTRACK_SPOOL_DIR`` or ``~/.cache/simtrack/spool``."""
    configured = os.environ.get("SIMTRACK_SPOOL_DIR")
    return Path(configured).expanduser() if configured else DEFAULT_SPOOL_DIR.expanduser()


def spool_path(spool_dir: Path, run_id: str) -> Path:
    """The spool file of a run (run ids are UUIDs; anything path-like is refused)."""
    if not _SAFE_NAME.match(run_id) or run_id in {".", ".."}:
        raise ValueError(f"run id {run_id!r} cannot name a spool file")
    return spool_dir / f"{run_id}{SPOOL_SUFFIX}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def wire_bytes(seq: int, body: bytes) -> bytes:
    """A spooled body as sent: ``StreamRunRequest.seq`` (field 1, varint) followed by the body.

    Protobuf writes fields in number order, so this is byte for byte what serializing the
    message with ``seq`` set would give.
    """
    return b"\x08" + _varint(seq) + body if seq else body


@dataclass(frozen=True)
class SpooledMessage:
    """One message waiting in the spool."""

    seq: int
    kind: str
    points: int
    body: bytes


class Spool:
    """A run's spool file. Thread-safe: one connection, used under one lock."""

    def __init__(
        self, spool_dir: Path, run_id: str, *, lock: bool = True, holder: str = "worker"
    ) -> None:
        self.run_id = run_id
        self.dir = spool_dir
        self.path = spool_path(spool_dir, run_id)
        self._lock_path = self.path.with_suffix(".lock")
        self._mutex = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        spool_dir.mkdir(parents=True, exist_ok=True)
        if lock:
            self._acquire_file_lock(holder)
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            # Large pages: a message is ~100-300 kB, so fewer overflow pages to write and free.
            # (Only effective on a new file: the page size of an existing one stays.)
            self._db.execute("PRAGMA page_size=65536")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
                " points INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("version", _SCHEMA_VERSION),
                        ("run_id", run_id),
                        ("next_seq", "1"),
                        ("based", "0"),
                        ("acked_seq", "0"),
                    ],
                )
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("run_id") != run_id:
                raise ValueError(f"{self.path} belongs to run {meta.get('run_id')!r}")
            self._next_seq = int(meta["next_seq"])
            self._based: bool = str(meta["based"]) == "1"
            self._acked_seq = int(meta["acked_seq"])
        except BaseException:
            self._release_file_lock()
            raise

    # -- locking -------------------------------------------------------------------------------

    def _acquire_file_lock(self, holder: str) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        handle = open(self._lock_path, "ab")  # noqa: SIM115 - held for the spool's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            try:
                held_by = self._lock_path.read_text(errors="replace").strip()
            except OSError:
                held_by = ""
            raise SpoolLocked(
                f"spool of run {self.run_id} is in use ({self._lock_path}"
                f"{': ' + held_by if held_by else ''})",
                held_by,
            ) from None
        # Who holds it, for a process that finds it locked (see SpoolLocked.by_upload).
        handle.truncate(0)
        handle.write(f"{holder} {os.getpid()}\n".encode())
        handle.flush()
        self._lock_file = handle

    def _release_file_lock(self) -> None:
        if self._lock_file is not None:
            if fcntl is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The number the next appended message gets."""
        return self._next_seq

    @property
    def based(self) -> bool:
        """Whether the numbering follows the server's watermark (a welcome was seen)."""
        return self._based

    @property
    def acked_seq(self) -> int:
        """The highest seq known acknowledged."""
        return self._acked_seq

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # -- operations ----------------------------------------------------------------------------

    def append(self, messages: list[tuple[str, int, bytes]]) -> list[int]:
        """Store ``(kind, points, body)`` messages in one transaction; returns their seqs."""
        if not messages:
            return []
        with self._mutex:
            first = self._next_seq
            seqs = list(range(first, first + len(messages)))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO messages (seq, kind, points, body) VALUES (?, ?, ?, ?)",
                    [(s, k, p, b) for s, (k, p, b) in zip(seqs, messages, strict=True)],
                )
                self._set_meta("next_seq", str(first + len(messages)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._next_seq = first + len(messages)
            return seqs

    def get(self, seq: int) -> bytes | None:
        """The body of a spooled message, or None when it is no longer there."""
        with self._mutex:
            row = self._db.execute("SELECT body FROM messages WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def messages(self) -> list[SpooledMessage]:
        """Every spooled message, in order."""
        with self._mutex:
            rows = self._db.execute(
                "SELECT seq, kind, points, body FROM messages ORDER BY seq"
            ).fetchall()
        return [SpooledMessage(int(s), str(k), int(p), bytes(b)) for s, k, p, b in rows]

    def stats(self) -> tuple[int, int, int]:
        """(messages, points, highest seq) waiting in the spool."""
        with self._mutex:
            row = self._db.execute(
                "SELECT count(*), coalesce(sum(points), 0), coalesce(max(seq), 0) FROM messages"
            ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def inventory(self) -> list[tuple[int, str, int]]:
        """(seq, kind, points) of every spooled message, in order (no bodies)."""
        with self._mutex:
            rows = self._db.execute(
                "SELECT seq, kind, points FROM messages ORDER BY seq"
            ).fetchall()
        return [(int(seq), str(kind), int(points)) for seq, kind, points in rows]

    def has_final_status(self) -> bool:
        """Whether the run's final status is among the spooled messages."""
        with self._mutex:
            row = self._db.execute(
                "SELECT 1 FROM messages WHERE kind = 'status' LIMIT 1"
            ).fetchone()
        return row is not None

    def trim(self, acked_seq: int) -> int:
        """Forget the messages up to ``acked_seq`` (the server committed them)."""
        with self._mutex:
            if acked_seq <= self._acked_seq:
                return 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute(
                    "DELETE FROM messages WHERE seq <= ?", (acked_seq,)
                ).rowcount
                self._set_meta("acked_seq", str(acked_seq))
                if self._next_seq <= acked_seq:
                    self._set_meta("next_seq", str(acked_seq + 1))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._acked_seq = acked_seq
            self._next_seq = max(self._next_seq, acked_seq + 1)
            return int(deleted)

    def rebase(self, watermark: int) -> int:
        """Anchor the numbering to the server's watermark (first welcome of a new spool).

        Messages spooled before the server was reached are numbered from 1; a run whose
        watermark is already ``watermark`` (e.g. streamed to by an earlier worker) expects
        ``watermark + 1`` next, so every spooled seq moves up by ``watermark``. Returns the offset.
        """
        with self._mutex:
            if self._based:
                return 0
            offset = max(0, watermark - self._acked_seq)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if offset:
                    # Two steps so that no intermediate seq collides with an existing row.
                    self._db.execute("UPDATE messages SET seq = -(seq + ?)", (offset,))
                    self._db.execute("UPDATE messages SET seq = -seq")
                    self._set_meta("next_seq", str(self._next_seq + offset))
                self._set_meta("based", "1")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._next_seq += offset
            self._based = True
            return offset

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, *, delete_if_empty: bool = False) -> bool:
        """Close the file (and delete it when asked and nothing is waiting). True if deleted."""
        deleted = False
        with self._mutex:
            try:
                empty = delete_if_empty and (
                    self._db.execute("SELECT 1 FROM messages LIMIT 1").fetchone() is None
                )
                self._db.close()
            except sqlite3.ProgrammingError:  # already closed
                empty = False
            if empty:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                deleted = True
            if deleted and self._lock_file is not None:
                self._lock_path.unlink(missing_ok=True)
            self._release_file_lock()
        return deleted

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def spooled_runs(spool_dir: Path) -> list[str]:
    """The run ids that have a spool file in ``spool_dir``."""
    if not spool_dir.is_dir():
        return []
    return sorted(p.name[: -len(SPOOL_SUFFIX)] for p in spool_dir.glob(f"*{SPOOL_SUFFIX}"))
