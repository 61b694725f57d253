"""Start-up and shutdown in process: whatever a start-up had started, a failure releases.

What is observed is what would leak: PostgreSQL connections to the test's database (the
engine's pool, the bus's LISTEN connection, the writer's own), counted in pg_stat_activity, and
the ports (/metrics, gRPC), which must be free to bind again.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from simtrack.server.app import StartupError, start
from simtrack.server.config import Settings
from simtrack.server.db.ingest_store import IngestStore
from simtrack.server.ingest.bus import PostgresBus

RELEASE_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def occupied_address() -> Iterator[str]:
    """An address another process would be listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def settings(database_url: str, tmp_path: Path, listen: str, metrics_port: int) -> Settings:
    return Settings(
        database_url=database_url,
        listen=listen,
        metrics_listen=f"127.0.0.1:{metrics_port}",
        http_listen="127.0.0.1:0",
        artifacts_dir=tmp_path / "artifacts",
    )


def connections(database_url: str) -> int:
    """Sessions connected to this database, besides the one counting them."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def until_released(backend: str, database_url: str, *ports: int) -> None:
    """Wait until no connection to the database is left and every port binds again.

    A closed connection leaves pg_stat_activity once its backend process has exited, a moment
    after the client closed it: poll, up to a deadline.
    """
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while True:
        left = connections(database_url) if backend == "postgresql" else 0
        busy = [port for port in ports if not port_is_free(port)]
        if not left and not busy:
            return
        assert time.monotonic() < deadline, f"still open: {left} connection(s), ports {busy}"
        await asyncio.sleep(0.05)


async def test_a_start_refused_on_an_address_in_use_releases_what_it_started(
    backend: str, database_url: str, tmp_path: Path, occupied_address: str
) -> None:
    metrics_port = free_port()

    with pytest.raises(StartupError, match=f"cannot listen on {occupied_address}"):
        await start(settings(database_url, tmp_path, occupied_address, metrics_port))

    # The engine, /metrics, the bus and the writer had started before the port was tried.
    await until_released(backend, database_url, metrics_port)


async def test_a_writer_that_cannot_connect_releases_what_started_before_it(
    backend: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus_started: list[bool] = []
    bus_start = PostgresBus.start

    async def recorded_bus_start(self: PostgresBus) -> None:
        await bus_start(self)
        bus_started.append(True)

    async def refused(self: IngestStore) -> None:
        raise OSError("connection refused (injected)")

    monkeypatch.setattr(PostgresBus, "start", recorded_bus_start)
    monkeypatch.setattr(IngestStore, "open", refused)
    metrics_port, listen_port = free_port(), free_port()

    with pytest.raises(OSError, match="injected"):
        await start(settings(database_url, tmp_path, f"127.0.0.1:{listen_port}", metrics_port))

    assert bus_started == ([True] if backend == "postgresql" else [])
    await until_released(backend, database_url, metrics_port, listen_port)


async def test_a_stopped_server_releases_everything(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    running = await start(settings(database_url, tmp_path, "127.0.0.1:0", metrics_port))
    try:
        assert not port_is_free(running.port) and not port_is_free(metrics_port)
        if backend == "postgresql":
            # At least the bus's LISTEN connection and the writer's own are open.
            assert connections(database_url) >= 2
    finally:
        await running.stop(grace=1.0)

    await until_released(backend, database_url, metrics_port, running.port)
