"""The API's services and their generated code, one row each: the messages (``*_pb2``), the
gRPC registration (``*_pb2_grpc``) and the Connect application (``*_connect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from simtrack.v1 import (
    agents_connect,
    agents_pb2,
    agents_pb2_grpc,
    artifacts_connect,
    artifacts_pb2,
    artifacts_pb2_grpc,
    experiments_connect,
    experiments_pb2,
    experiments_pb2_grpc,
    runs_connect,
    runs_pb2,
    runs_pb2_grpc,
    scenarios_connect,
    scenarios_pb2,
    scenarios_pb2_grpc,
    telemetry_connect,
    telemetry_pb2,
    telemetry_pb2_grpc,
    validations_connect,
    validations_pb2,
    validations_pb2_grpc,
)


@dataclass(frozen=True)
class ApiService:
    """One service of the API (``name``: as in its .proto, e.g. ``RunService``)."""

    name: str
    messages: ModuleType
    grpc_code: ModuleType
    connect_code: ModuleType

    @property
    def descriptor(self) -> ServiceDescriptor:
        return self.messages.DESCRIPTOR.services_by_name[self.name]  # type: ignore[no-any-return]

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name

    def add_to_grpc(self, servicer: object, server: grpc.aio.Server) -> None:
        getattr(self.grpc_code, f"add_{self.name}Servicer_to_server")(servicer, server)

    @property
    def connect_protocol(self) -> type:
        """The generated Protocol naming the service's methods as connect-python calls them."""
        return getattr(self.connect_code, self.name)  # type: ignore[no-any-return]

    @property
    def connect_application(self) -> Any:
        """The generated ASGI application class serving the service over HTTP."""
        return getattr(self.connect_code, f"{self.name}ASGIApplication")


SERVICES = (
    ApiService("AgentService", agents_pb2, agents_pb2_grpc, agents_connect),
    ApiService("ArtifactService", artifacts_pb2, artifacts_pb2_grpc, artifacts_connect),
    ApiService("ExperimentService", experiments_pb2, experiments_pb2_grpc, experiments_connect),
    ApiService("RunService", runs_pb2, runs_pb2_grpc, runs_connect),
    ApiService("ScenarioService", scenarios_pb2, scenarios_pb2_grpc, scenarios_connect),
    ApiService("TelemetryService", telemetry_pb2, telemetry_pb2_grpc, telemetry_connect),
    ApiService("ValidationService", validations_pb2, validations_pb2_grpc, validations_connect),
)
