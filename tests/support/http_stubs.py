"""The API over HTTP with a gRPC stub's face, so the same API tests run over both transports.

``HttpStub(service, client, recorder)`` answers ``stub.GetRun(request, timeout=..., metadata=...)``
through connect-python's client (Connect with JSON or binary, gRPC-Web or gRPC, over the
server's HTTP listener) and raises ``HttpRpcError``, a ``grpc.RpcError`` with the same
``code()``, ``details()`` and ``grpc-status-details-bin`` trailer a gRPC call's error has: what
``rpc_status.from_call`` and the tests read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from connectrpc.client import ConnectClientSync
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.protocol import ProtocolType
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.rpc import status_pb2

from simtrack.server.api.services import SERVICES, ApiService
from tests.support.clients import StatusRecorder

# Transports the API tests run over: gRPC's own listener, or the HTTP listener by protocol
# ("grpc-http": grpcio's own client on the HTTP listener, HTTP/2 with prior knowledge).
TRANSPORTS = ("grpc", "connect-json", "connect-proto", "grpc-web", "grpc-http")
_PROTOCOLS = {
    "connect-json": (ProtocolType.CONNECT, True),
    "connect-proto": (ProtocolType.CONNECT, False),
    "grpc-web": (ProtocolType.GRPC_WEB, False),
}


# The attribute holding each service's stub (on ``HttpClient``, ``Client`` and ``Server``).
STUB_NAMES = {
    "AgentService": "agents",
    "ArtifactService": "artifacts",
    "ExperimentService": "experiments",
    "RunService": "runs",
    "ScenarioService": "scenarios",
    "TelemetryService": "telemetry",
    "ValidationService": "validations",
}


def http_client(transport: str, address: str) -> ConnectClientSync:
    """A client of the HTTP listener at ``address`` (host:port) speaking ``transport``."""
    protocol, json = _PROTOCOLS[transport]
    return ConnectClientSync(f"http://{address}", protocol=protocol, proto_json=json)


class HttpClient:
    """Every service's ``HttpStub`` on one client (``with``: closed after)."""

    agents: HttpStub
    artifacts: HttpStub
    experiments: HttpStub
    runs: HttpStub
    scenarios: HttpStub
    telemetry: HttpStub
    validations: HttpStub

    def __init__(
        self, transport: str, address: str, recorder: StatusRecorder | None = None
    ) -> None:
        self.client = http_client(transport, address)
        for service in SERVICES:
            stub = HttpStub(service, self.client, recorder or StatusRecorder())
            setattr(self, STUB_NAMES[service.name], stub)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class HttpRpcError(grpc.RpcError):
    """A Connect error as the ``grpc.RpcError`` (a ``grpc.Call``) a gRPC stub raises."""

    def __init__(self, error: ConnectError) -> None:
        super().__init__(error.message)
        self.error = error
        name = error.code.name.replace("CANCELED", "CANCELLED")
        self._code = grpc.StatusCode[name]

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self.error.message

    # (key, value) pairs, as grpc's calls give them (grpc-stubs declares another type).
    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:  # type: ignore[override]
        status = status_pb2.Status(
            code=self._code.value[0], message=self.error.message, details=self.error.details
        )
        return (("grpc-status-details-bin", status.SerializeToString()),)

    def initial_metadata(self) -> tuple[()]:
        return ()

    def __str__(self) -> str:
        return f"<HttpRpcError {self._code.name}: {self.error.message}>"


class HttpStub:
    """One service's methods, by their RPC names, over HTTP."""

    def __init__(
        self, service: ApiService, client: ConnectClientSync, recorder: StatusRecorder
    ) -> None:
        for method in service.descriptor.methods:
            setattr(self, method.name, _call(method, client, recorder))

    def __getattr__(self, name: str) -> Any:  # the methods are set above, by their RPC names
        raise AttributeError(name)


def _call(
    method: MethodDescriptor, client: ConnectClientSync, recorder: StatusRecorder
) -> Callable[..., Any]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    info: MethodInfo[Any, Any] = MethodInfo(
        name=method.name,
        service_name=method.containing_service.full_name,
        input=GetMessageClass(method.input_type),
        output=GetMessageClass(method.output_type),
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )

    def options(timeout: float | None, metadata: Any) -> dict[str, Any]:
        headers = {key: str(value) for key, value in metadata or ()}
        return {"headers": headers, "timeout_ms": None if timeout is None else int(timeout * 1000)}

    if method.server_streaming and not method.client_streaming:

        def stream(
            request: Any, timeout: float | None = None, metadata: Any = None
        ) -> Iterator[Any]:
            try:
                yield from client.execute_server_stream(
                    request=request, method=info, **options(timeout, metadata)
                )
            except ConnectError as error:
                raise HttpRpcError(error) from None

        return stream

    def unary(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        try:
            if method.client_streaming:
                response = client.execute_client_stream(
                    request=iter(request), method=info, **options(timeout, metadata)
                )
            else:
                response = client.execute_unary(
                    request=request, method=info, **options(timeout, metadata)
                )
        except ConnectError as error:
            failure = HttpRpcError(error)
            recorder.calls.append((path, failure.code()))
            raise failure from None
        recorder.calls.append((path, grpc.StatusCode.OK))
        return response

    return unary
