"""Unit-test fixtures: the worker helper's fake server, and an address nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.fake_telemetry import FakeServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dead_target() -> str:
    """An address nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
