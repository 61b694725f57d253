"""Client side of the e2e tests: every service's stub on one channel, and channel interceptors
that send an ``authorization`` header or record each unary call's status (for teardown checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import grpc

from simtrack.v1 import (
    agents_pb2_grpc,
    artifacts_pb2_grpc,
    experiments_pb2_grpc,
    runs_pb2_grpc,
    scenarios_pb2_grpc,
    telemetry_pb2_grpc,
    validations_pb2_grpc,
)

# Status codes that mean "the server did not handle this": never acceptable for caller input.
SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})

Req = TypeVar("Req")
Resp = TypeVar("Resp")
if TYPE_CHECKING:
    # type_check_only in grpc-stubs: what a unary-unary continuation returns.
    from grpc import _CallFuture, _CallIterator, _Metadata


@dataclass
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: _Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class Authorization(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends ``authorization: <value>`` metadata (verbatim) on every call of the channel."""

    def __init__(self, value: str) -> None:
        self.value = value

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = (*(details.metadata or ()), ("authorization", self.value))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallFuture[Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallIterator[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallIterator[Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Req]], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Req],
    ) -> _CallFuture[Resp]:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Req]], _CallIterator[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Req],
    ) -> _CallIterator[Resp]:
        return continuation(self._details(client_call_details), request_iterator)


class StatusRecorder(grpc.UnaryUnaryClientInterceptor):
    """Remembers the status code of every unary call made through the channel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, grpc.StatusCode]] = []

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Req], _CallFuture[Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: Req,
    ) -> _CallFuture[Resp]:
        outcome = continuation(client_call_details, request)
        self.calls.append((client_call_details.method, outcome.code()))
        return outcome

    def faults(self) -> list[tuple[str, grpc.StatusCode]]:
        return [(method, code) for method, code in self.calls if code in SERVER_FAULTS]


@dataclass
class Client:
    """The stubs of every simtrack service on one channel."""

    channel: grpc.Channel
    agents: agents_pb2_grpc.AgentServiceStub = field(init=False)
    experiments: experiments_pb2_grpc.ExperimentServiceStub = field(init=False)
    runs: runs_pb2_grpc.RunServiceStub = field(init=False)
    telemetry: telemetry_pb2_grpc.TelemetryServiceStub = field(init=False)
    artifacts: artifacts_pb2_grpc.ArtifactServiceStub = field(init=False)
    validations: validations_pb2_grpc.ValidationServiceStub = field(init=False)
    scenarios: scenarios_pb2_grpc.ScenarioServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.validations = validations_pb2_grpc.ValidationServiceStub(self.channel)
        self.scenarios = scenarios_pb2_grpc.ScenarioServiceStub(self.channel)
