"""The service's Prometheus metrics, scraped from a real server's ``/metrics`` over HTTP.

A server per test with ``SIMTRACK_METRICS_LISTEN=127.0.0.1:0`` (it logs the port it got), on
SQLite and PostgreSQL. Counters are compared between two scrapes, so each assertion is an
exact delta of what the test did; a series never exported yet counts as 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simtrack.v1 import agents_pb2, runs_pb2, telemetry_pb2
from tests.support import Server, StartServer, StreamKit

_METRICS_ON = re.compile(r"simtrack metrics on (?P<address>\S+:\d+)")
CREATE_AGENT = "/simtrack.v1.AgentService/CreateAgent"
GET_AGENT = "/simtrack.v1.AgentService/GetAgent"


class Scrape:
    """One scrape of ``/metrics``: every sample by name and labels."""

    def __init__(self, address: str) -> None:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled series not exported yet (nothing counted)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.samples)


def metrics_address(server: Server) -> str:
    match = _METRICS_ON.search(server.stderr)  # logged before "serving on", so already there
    assert match, f"no 'simtrack metrics on' line in the log:\n{server.stderr}"
    return match["address"]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on: its socket inodes, looked up in /proc."""
    if not Path(f"/proc/{pid}/net/tcp").exists():
        pytest.skip("needs Linux's /proc")
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture
def server(served_url: str, start_server: StartServer) -> Server:
    return start_server(served_url, SIMTRACK_METRICS_LISTEN="127.0.0.1:0")


def test_unary_calls_are_counted_by_method_and_code(server: Server) -> None:
    address = metrics_address(server)
    before = Scrape(address)
    for _ in range(3):
        name = f"agent-{uuid.uuid4().hex[:8]}"
        agent = agents_pb2.Agent(name=name, framework=agents_pb2.FRAMEWORK_CUSTOM)
        server.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent=agent))
    with pytest.raises(grpc.RpcError) as missing:
        server.agents.GetAgent(agents_pb2.GetAgentRequest(id=str(uuid.uuid4())))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = Scrape(address)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("simtrack_rpc_requests_total", method=CREATE_AGENT, code="OK") == 3
    assert grew("simtrack_rpc_requests_total", method=GET_AGENT, code="NOT_FOUND") == 1
    assert grew("simtrack_rpc_requests_total", method=GET_AGENT, code="OK") == 0
    assert grew("simtrack_rpc_duration_seconds_count", method=CREATE_AGENT) == 3
    assert grew("simtrack_rpc_duration_seconds_count", method=GET_AGENT) == 1
    assert grew("simtrack_rpc_duration_seconds_sum", method=CREATE_AGENT) > 0


async def test_points_are_counted_once_when_committed(server: Server, streams: StreamKit) -> None:
    address = metrics_address(server)
    run = streams.new_run(server)
    data = streams.dataset(4, points=250)  # 4 batches x 2 metrics x 250 points
    before = Scrape(address)
    assert before.value("simtrack_streams_open") == 0

    stream = await streams.open(server, run.id)
    assert Scrape(address).value("simtrack_streams_open") == 1
    await stream.send_all(data.messages)
    events = telemetry_pb2.EventBatch(events=[telemetry_pb2.Event(type="t") for _ in range(3)])
    await stream.send(telemetry_pb2.StreamRunRequest(seq=5, events=events))
    await stream.wait_acked(5)
    committed = Scrape(address)
    # A resend of an acknowledged batch is acknowledged again, and stored (and counted) once.
    acks = len(stream.acks)
    await stream.send(data.messages[1])
    await stream.wait(lambda: len(stream.acks) > acks, 10, "the resend's ack")
    resent = Scrape(address)
    assert await stream.finish() == grpc.StatusCode.OK
    ended = Scrape(address)

    def grew(scrape: Scrape, name: str) -> float:
        return scrape.value(name) - before.value(name)

    assert grew(committed, "simtrack_points_ingested_total") == data.total_points == 2000
    assert grew(committed, "simtrack_events_ingested_total") == 3
    assert grew(committed, "simtrack_group_commit_batches_sum") == 5
    commits = grew(committed, "simtrack_group_commits_total")
    assert 1 <= commits <= 5
    assert grew(committed, "simtrack_group_commit_seconds_count") == commits
    assert grew(committed, "simtrack_group_commit_batches_count") == commits

    assert grew(resent, "simtrack_points_ingested_total") == data.total_points
    assert grew(resent, "simtrack_events_ingested_total") == 3
    assert grew(resent, "simtrack_group_commit_batches_sum") == 6  # counted as a batch, no more
    assert resent.value("simtrack_streams_open") == 1
    assert ended.value("simtrack_streams_open") == 0


async def test_pool_and_watcher_gauges(server: Server, streams: StreamKit) -> None:
    address = metrics_address(server)
    assert listening_ports(server.process.process.pid) == {
        port_of(server.address),
        port_of(server.process.http_address),
        port_of(address),
    }
    scrape = Scrape(address)
    assert scrape.value("simtrack_db_pool_size") >= 1
    assert scrape.has("simtrack_db_pool_checked_out")
    assert scrape.has("simtrack_db_pool_overflow")
    assert scrape.value("simtrack_watchers_open") == 0

    watch = server.runs.WatchRun(runs_pb2.WatchRunRequest(id=streams.new_run(server).id))
    next(watch)  # the first snapshot: the watch is registered by now
    assert Scrape(address).value("simtrack_watchers_open") == 1
    watch.cancel()
    async with asyncio.timeout(10):  # the server ends the call after the client has let go
        while Scrape(address).value("simtrack_watchers_open") != 0:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_no_metrics_port_by_default(database_url: str, start_server: StartServer) -> None:
    server = start_server(database_url)
    assert "simtrack metrics on" not in server.stderr
    assert listening_ports(server.process.process.pid) == {
        port_of(server.address),
        port_of(server.process.http_address),
    }
