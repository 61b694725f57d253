"""The API's messages by their short names, every service of it, and small message builders:
shared by the end-to-end checks (objects, API keys, tenancy, bad input).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import field_mask_pb2, struct_pb2

from simtrack.v1 import (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)

SCENARIO = "tier0-tutorial"  # the tier-0 scenario: small and stable
TIMEOUT = 10.0  # seconds a test's call may take

Agent = agents_pb2.Agent
Framework = agents_pb2.Framework
Experiment = experiments_pb2.Experiment
ExperimentStatus = experiments_pb2.ExperimentStatus
Simulation = experiments_pb2.Simulation
SimulationStatus = experiments_pb2.SimulationStatus
Template = experiments_pb2.Template
Run = runs_pb2.Run
Participant = runs_pb2.Participant
RunStatus = runs_pb2.RunStatus

# The API's modules of messages and services.
PROTO_MODULES = (
    agents_pb2,
    artifacts_pb2,
    experiments_pb2,
    runs_pb2,
    scenarios_pb2,
    telemetry_pb2,
    validations_pb2,
)
# Every service of the API, by full name ("simtrack.v1.AgentService").
API_SERVICES = {
    service.full_name: service
    for module in PROTO_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
}


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(data)
    return result


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))
