"""The API over HTTP as its callers reach it: curl with JSON, a Connect client, gRPC-Web, on
SQLite and PostgreSQL; what only HTTP has (content types, GET, bodies that are not messages,
its own limits); keys and roles; streams; the listener's start and stop.

The answers to the same calls over gRPC are tested in the modules that run over both
transports (``transports`` marker: test_api, test_bad_input_fields); here the HTTP side.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from connectrpc.errors import ConnectError

from simtrack.client import MetricHistory, Worker
from simtrack.v1 import agents_pb2, artifacts_pb2, runs_pb2, telemetry_pb2
from tests.support import Server, ServerPool, SimtrackCli, StartServer
from tests.support.api_objects import (
    new_agent,
    new_experiment,
    new_run,
    set_run_status,
    start_run,
)
from tests.support.auth_requests import upload_request
from tests.support.http_stubs import HttpClient, HttpRpcError

pytestmark = pytest.mark.in_process

JSON = {"Content-Type": "application/json"}


def post(
    server: Server, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP POST to the server's HTTP listener: status, headers, body."""
    request = urllib.request.Request(
        f"http://{server.host.http_address}{path}",
        data=body,
        headers=JSON if headers is None else headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def connect_json(server: Server, method: str, message: dict[str, Any], **headers: str) -> Any:
    """A Connect call in JSON by hand: (status, the JSON answer)."""
    status, _, body = post(
        server, f"/simtrack.v1.{method}", json.dumps(message).encode(), {**JSON, **headers}
    )
    return status, json.loads(body)


def violations(answer: dict[str, Any]) -> list[str]:
    """The fields a Connect error's BadRequest detail names."""
    return [
        violation["field"]
        for detail in answer.get("details", [])
        if detail["type"] == "google.rpc.BadRequest"
        for violation in detail["debug"]["fieldViolations"]
    ]


@pytest.fixture(scope="module")
def server(module_database_url: str, module_server_pool: ServerPool) -> Server:
    return module_server_pool.start(module_database_url)


# curl, Connect, gRPC-Web: the same answers


def test_curl_lists_runs_as_the_readme_shows(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id, params={"lr": 0.1})
    command = [
        "curl",
        "-s",
        "-X",
        "POST",
        f"http://{server.host.http_address}/simtrack.v1.RunService/ListRuns",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"pageSize": 5, "filter": f'experiment_id = "{experiment.id}"'}),
    ]
    answer = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    assert [r["id"] for r in answer["runs"]] == [run.id]
    assert answer["runs"][0]["params"] == {"lr": 0.1}
    assert answer["runs"][0]["status"] == "RUN_STATUS_PENDING"


@pytest.mark.parametrize("transport", ["connect-json", "connect-proto", "grpc-web"])
def test_a_connect_or_grpc_web_client_gets_what_grpc_gets(server: Server, transport: str) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    with HttpClient(transport, server.host.http_address, server.recorder) as client:
        runs = client.runs
        over_http = runs.GetRun(runs_pb2.GetRunRequest(id=run.id))
        assert over_http == server.runs.GetRun(runs_pb2.GetRunRequest(id=run.id))
        with pytest.raises(HttpRpcError) as http_error:
            runs.GetRun(runs_pb2.GetRunRequest(id="nope"))
    with pytest.raises(grpc.RpcError) as grpc_error:
        server.runs.GetRun(runs_pb2.GetRunRequest(id="nope"))
    assert http_error.value.code() == grpc_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert http_error.value.details() == grpc_error.value.details()
    assert http_error.value.trailing_metadata() == (
        ("grpc-status-details-bin", _details_bin(grpc_error.value)),
    )


def _details_bin(error: grpc.RpcError) -> bytes:
    call: Any = error
    return dict(call.trailing_metadata())["grpc-status-details-bin"]  # type: ignore[no-any-return]


def test_errors_carry_their_code_message_and_field_in_json(server: Server) -> None:
    status, answer = connect_json(server, "RunService/ListRuns", {"filter": "status = "})
    assert status == 400
    assert answer["code"] == "invalid_argument"
    assert "position 9" in answer["message"]
    assert violations(answer) == ["filter"]
    status, answer = connect_json(
        server, "RunService/GetRun", {"id": "00000000-0000-4000-8000-000000000000"}
    )
    assert (status, answer["code"]) == (404, "not_found")


# Bodies that are not messages, and HTTP's own edges


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe garbage \x00\x01", "application/proto"),
        (b"\x0a\xff\xff\xff\xff\x0f", "application/proto"),  # a length past the end
        (b"{not json", "application/json"),
        (b'{"pageSize": "many"}', "application/json"),
        (b'{"noSuchField": 1}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"filter": "\xff\xfe"}', "application/json"),  # not UTF-8
        (b'{"pageSize": 1e400}', "application/json"),
    ],
)
def test_a_body_that_is_not_the_request_is_invalid_argument_naming_request(
    server: Server, body: bytes, content_type: str
) -> None:
    status, _, answer = post(
        server, "/simtrack.v1.RunService/ListRuns", body, {"Content-Type": content_type}
    )
    parsed = json.loads(answer)
    assert (status, parsed["code"]) == (400, "invalid_argument"), parsed
    assert violations(parsed) == ["request"]


def test_deeply_nested_and_huge_bodies_are_refused_and_nothing_is_lost(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id, params={"kept": True})
    before = server.database_snapshot()
    nested = '{"a": ' * 100_000 + "1" + "}" * 100_000
    body = f'{{"run": {{"experimentId": "{experiment.id}", "params": {nested}}}}}'.encode()
    status, _, answer = post(server, "/simtrack.v1.RunService/CreateRun", body)
    assert (status, json.loads(answer)["code"]) == (400, "invalid_argument")
    huge = json.dumps({"filter": "x" * (9 * 1024 * 1024)}).encode()
    status, _, answer = post(server, "/simtrack.v1.RunService/ListRuns", huge)
    assert (status, json.loads(answer)["code"]) == (429, "resource_exhausted")
    assert server.database_snapshot() == before
    assert server.runs.GetRun(runs_pb2.GetRunRequest(id=run.id)).run.params["kept"] is True


def test_http_edges_answer_with_http_statuses(server: Server) -> None:
    status, headers, _ = post(server, "/simtrack.v1.RunService/ListRuns", b"{}", {})
    assert status == 415  # no content type: not a Connect request
    assert "application/json" in headers.get("Accept-Post", "")
    status, _, _ = post(server, "/simtrack.v1.NoService/ListRuns", b"{}")
    assert status == 404
    status, _, _ = post(server, "/simtrack.v1.RunService/NoMethod", b"{}")
    assert status == 404
    # gRPC (not gRPC-Web) needs HTTP/2 for its trailers: told so, not answered UNKNOWN.
    grpc_frame = b"\x00\x00\x00\x00\x00"  # an empty ListRunsRequest, enveloped
    status, _, body = post(
        server, "/simtrack.v1.RunService/ListRuns", grpc_frame, {"Content-Type": "application/grpc"}
    )
    assert status == 505 and b"HTTP/2" in body


def test_a_side_effect_free_call_by_get(server: Server) -> None:
    query = urllib.parse.urlencode({"encoding": "json", "message": json.dumps({"pageSize": 1})})
    url = f"http://{server.host.http_address}/simtrack.v1.ScenarioService/ListScenarios?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert len(answer["scenarios"]) == 1 and answer["nextPageToken"]


# Streams


def test_watch_run_streams_over_connect_until_the_run_ends(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    start_run(server, run.id)
    with HttpClient("connect-json", server.host.http_address, server.recorder) as client:
        runs = client.runs
        updates = runs.WatchRun(runs_pb2.WatchRunRequest(id=run.id), timeout=10)
        first = next(updates)
        assert first.run.status == runs_pb2.RUN_STATUS_RUNNING
        set_run_status(server, run.id, runs_pb2.RUN_STATUS_COMPLETED)
        statuses = [update.run.status for update in updates]
    assert statuses[-1] == runs_pb2.RUN_STATUS_COMPLETED


@pytest.mark.parametrize("protocol", ["connect-json", "grpc-web"])
def test_read_metric_history_streams_its_pages_over_http(server: Server, protocol: str) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    with Worker(server.address, run.id) as worker:
        for step in range(2_500):
            worker.log_metrics(step, {"loss": step / 4})
    request = telemetry_pb2.ReadMetricHistoryRequest(
        run_id=run.id,
        metric="loss",
        page_size=1_000,
        column_encoding=telemetry_pb2.COLUMN_ENCODING_LITTLE_ENDIAN,
    )
    over_grpc = [message.page for message in server.telemetry.ReadMetricHistory(request)]
    with HttpClient(protocol, server.host.http_address, server.recorder) as client:
        over_http = [message.page for message in client.telemetry.ReadMetricHistory(request)]
    assert over_http == over_grpc and len(over_http) == 3
    assert MetricHistory.of_pages(over_http).values.tolist() == [s / 4 for s in range(2_500)]


def test_a_stream_past_its_deadline_ends_deadline_exceeded(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    started = time.monotonic()
    with HttpClient("grpc-web", server.host.http_address, server.recorder) as client:
        runs = client.runs
        with pytest.raises(HttpRpcError) as error:
            list(runs.WatchRun(runs_pb2.WatchRunRequest(id=run.id), timeout=0.5))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5


def test_artifacts_upload_and_download_over_grpc_web(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    content = bytes(range(256)) * 1000
    with HttpClient("grpc-web", server.host.http_address, server.recorder) as client:
        artifacts = client.artifacts
        chunks = [
            upload_request(run.id, "model.bin"),
            artifacts_pb2.UploadArtifactRequest(chunk=content[:100_000]),
            artifacts_pb2.UploadArtifactRequest(chunk=content[100_000:]),
        ]
        stored = artifacts.UploadArtifact(chunks).artifact
        request = artifacts_pb2.GetArtifactContentRequest(id=stored.id)
        parts = list(artifacts.GetArtifactContent(request))
    assert b"".join(part.chunk for part in parts) == content
    assert stored.size_bytes == len(content)


def test_stream_run_says_it_is_served_over_grpc_only(server: Server) -> None:
    with HttpClient("connect-proto", server.host.http_address, server.recorder) as client:
        telemetry = client.telemetry
        with pytest.raises(HttpRpcError) as error:
            telemetry.StreamRun(iter([telemetry_pb2.StreamRunRequest()]))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "gRPC only" in (error.value.details() or "")


# Keys and roles, as on gRPC


@pytest.fixture(scope="module")
def auth_server(
    module_database_url: str, module_server_pool: ServerPool, simtrack_cli: SimtrackCli
) -> Iterator[tuple[Server, dict[str, str]]]:
    server = module_server_pool.start(module_database_url, auth=True)
    simtrack_cli("tenants", "create", "http-tenant", database_url=server.database_url)
    keys = {
        role: simtrack_cli(
            "keys", "create", "--tenant", "http-tenant", "--role", role,
            database_url=server.database_url,
        ).stdout.strip()
        for role in ("reader", "writer")
    }  # fmt: skip
    yield server, keys


def test_without_a_key_every_call_is_unauthenticated(
    auth_server: tuple[Server, dict[str, str]],
) -> None:
    server, _ = auth_server
    status, answer = connect_json(server, "RunService/ListRuns", {})
    assert (status, answer["code"]) == (401, "unauthenticated")
    assert "authorization" in answer["message"]
    status, answer = connect_json(
        server, "RunService/ListRuns", {}, Authorization="Bearer stk_nope_0123456789abcdef"
    )
    assert (status, answer["code"]) == (401, "unauthenticated")
    assert "0123456789abcdef" not in answer["message"]


def test_a_reader_key_reads_and_may_not_write(auth_server: tuple[Server, dict[str, str]]) -> None:
    server, keys = auth_server
    reader = {"Authorization": f"Bearer {keys['reader']}"}
    status, answer = connect_json(server, "AgentService/ListAgents", {}, **reader)
    assert status == 200, answer
    agent = {"agent": {"name": "over-http", "framework": "FRAMEWORK_CUSTOM"}}
    status, answer = connect_json(server, "AgentService/CreateAgent", agent, **reader)
    assert (status, answer["code"]) == (403, "permission_denied")
    writer = {"Authorization": f"Bearer {keys['writer']}"}
    status, answer = connect_json(server, "AgentService/CreateAgent", agent, **writer)
    assert status == 200 and answer["agent"]["name"] == "over-http"
    # The tenant's own, seen over gRPC with the same key.
    grpc_client = server.connect(f"Bearer {keys['reader']}")
    listed = grpc_client.agents.ListAgents(agents_pb2.ListAgentsRequest()).agents
    assert [a.name for a in listed] == ["over-http"]


# The listener


@pytest.mark.in_process(False)  # its log says where /metrics is
def test_http_calls_are_counted_with_the_grpc_ones(
    database_url: str, start_server: StartServer
) -> None:
    server = start_server(database_url, SIMTRACK_METRICS_LISTEN="127.0.0.1:0")
    connect_json(server, "ScenarioService/ListScenarios", {})
    connect_json(server, "RunService/GetRun", {"id": "nope"})
    address = next(
        line.split("simtrack metrics on ")[1].split()[0]
        for line in server.stderr.splitlines()
        if "simtrack metrics on " in line
    )
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert (
        'simtrack_rpc_requests_total{code="OK",method="/simtrack.v1.ScenarioService/ListScenarios"}'
        " 1.0" in text
    )
    assert (
        'simtrack_rpc_requests_total{code="INVALID_ARGUMENT",'
        'method="/simtrack.v1.RunService/GetRun"} 1.0' in text
    )


@pytest.mark.in_process(False)
def test_an_empty_http_listen_serves_grpc_only(
    database_url: str, start_server: StartServer
) -> None:
    server = start_server(database_url, SIMTRACK_HTTP_LISTEN="")
    assert server.process.http_address == ""
    assert "simtrack http on" not in server.stderr


@pytest.mark.in_process(False)
def test_an_http_port_in_use_fails_the_start_with_what_to_do(
    database_url: str, start_server: StartServer, server_pool: ServerPool
) -> None:
    first = start_server(database_url)
    process = server_pool.launch(database_url, SIMTRACK_HTTP_LISTEN=first.process.http_address)
    assert process.wait_exit() != 0
    assert "SIMTRACK_HTTP_LISTEN" in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.in_process(False)
def test_a_stop_ends_open_http_streams_and_exits_cleanly(
    database_url: str, start_server: StartServer
) -> None:
    server = start_server(database_url, SIMTRACK_SHUTDOWN_GRACE="1")
    experiment = new_experiment(server, new_agent(server).id)
    run = new_run(server, experiment.id)
    client = HttpClient("connect-proto", server.process.http_address, server.recorder)
    runs = client.runs
    updates = runs.WatchRun(runs_pb2.WatchRunRequest(id=run.id), timeout=30)
    next(updates)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    with pytest.raises((HttpRpcError, ConnectError, StopIteration)):
        while True:
            next(updates)
    client.close()


def test_a_stop_ends_calls_whose_request_never_finishes_arriving(
    database_url: str, start_server: StartServer
) -> None:
    """A client that sent half a request body and stalls: the stop ends its call after the
    grace and exits cleanly (no connection cut by force, no traceback in the log).
    """
    server = start_server(database_url, SIMTRACK_SHUTDOWN_GRACE="1")
    host, port = server.host.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(
            b"POST /simtrack.v1.RunService/ListRuns HTTP/1.1\r\nHost: simtrack\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"pageSi'
        )
        time.sleep(0.2)  # the request's headers are in: its call has begun
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
        answer = stalled.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"shutting down" in answer


def test_a_stop_cuts_a_connection_whose_client_reads_nothing_without_a_traceback(
    database_url: str, start_server: StartServer
) -> None:
    """A download whose client stopped reading: its answer cannot be sent, so after the
    stop's rounds (``OpenCalls``) Hypercorn cuts the connection; the stop still exits cleanly
    and says so in one line, not in a traceback.
    """
    server = start_server(database_url, SIMTRACK_SHUTDOWN_GRACE="1")
    run = new_run(server, new_experiment(server, new_agent(server).id).id)
    chunk = bytes(1 << 20)
    upload = [upload_request(run.id, "big.bin")]
    upload += [artifacts_pb2.UploadArtifactRequest(chunk=chunk) for _ in range(48)]
    stored = server.artifacts.UploadArtifact(iter(upload), timeout=30).artifact
    message = json.dumps({"id": stored.id}).encode()
    host, port = server.host.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as reading_nothing:
        reading_nothing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reading_nothing.sendall(
            b"POST /simtrack.v1.ArtifactService/GetArtifactContent HTTP/1.1\r\n"
            b"Host: simtrack\r\nContent-Type: application/connect+json\r\n"
            + f"Content-Length: {5 + len(message)}\r\n\r\n".encode()
            + b"\0"
            + len(message).to_bytes(4, "big")
            + message
        )
        time.sleep(0.5)  # the answer has filled what the sockets hold
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10
    assert "an HTTP connection still busy after the stop's grace was cut" in server.stderr


# The dashboard's files


def test_the_dashboard_is_served_at_the_root_with_its_assets_cached_by_name(
    server: Server,
) -> None:
    root = f"http://{server.host.http_address}"
    with urllib.request.urlopen(f"{root}/", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Cache-Control"] == "no-cache"
        page = response.read().decode()
    assets = re.findall(r'(?:src|href)="\.?/?([^"]+\.(?:js|css))"', page)
    assert assets and all(re.search(r"-[A-Z0-9]{8}\.(js|css)$", asset) for asset in assets)
    for asset in assets:
        with urllib.request.urlopen(f"{root}/{asset}", timeout=10) as response:
            assert "immutable" in response.headers["Cache-Control"]
            assert response.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{root}/no-such-file.js", timeout=10)
    assert missing.value.code == 404


def test_a_runs_table_with_metric_columns_is_one_call(server: Server) -> None:
    experiment = new_experiment(server, new_agent(server).id)
    runs = [new_run(server, experiment.id) for _ in range(2)]
    with Worker(server.address, runs[0].id) as worker:  # the other logs nothing
        worker.log_metrics(0, {"profit": 1.5, "loss": 0.25})
        worker.log_metrics(1, {"profit": 2.5})
    status, answer = connect_json(
        server,
        "RunService/ListRuns",
        {"filter": f'experiment_id = "{experiment.id}"', "latestMetrics": ["profit", "nope"]},
    )
    assert status == 200, answer
    assert [r["id"] for r in answer["runs"]] == [r.id for r in runs]
    first, second = answer["latestMetrics"]
    assert first["runId"] == runs[0].id and second["runId"] == runs[1].id
    assert [(m["name"], m["value"], m["step"], m["count"]) for m in first["metrics"]] == [
        ("profit", 2.5, "1", "2")
    ]
    assert second.get("metrics", []) == []
    status, answer = connect_json(
        server, "RunService/ListRuns", {"latestMetrics": ["profit", "profit"]}
    )
    assert (status, violations(answer)) == (400, ["latest_metrics[1]"])
