"""The client's public names, pinned; and what Client and the worker helper share (the
channel, the call metadata, JSON -> Struct with one validation).
"""

from __future__ import annotations

import pkgutil

import grpc
import pytest
from google.protobuf import json_format

import simtrack.client
import simtrack.client.worker
from simtrack.client import Client
from simtrack.client._channel import call_metadata, open_channel
from simtrack.client._convert import to_struct
from simtrack.errors import InvalidArgument


def test_the_client_package_exports_exactly_these_names() -> None:
    assert sorted(simtrack.client.__all__) == [
        "AsyncWorker",
        "Client",
        "Command",
        "ComparedSeries",
        "Comparison",
        "MetricHistory",
        "SyncError",
        "SyncedRun",
        "Worker",
        "WorkerOptions",
        "from_rpc_error",
        "sync_spool",
    ]
    for name in simtrack.client.__all__:
        assert getattr(simtrack.client, name) is not None


def test_the_worker_package_exports_exactly_these_names() -> None:
    assert sorted(simtrack.client.worker.__all__) == [
        "AsyncWorker",
        "Command",
        "Leftover",
        "SyncError",
        "SyncedRun",
        "Worker",
        "WorkerOptions",
        "sync_spool",
    ]
    for name in simtrack.client.worker.__all__:
        shared = getattr(simtrack.client, name, None)
        assert shared is None or shared is getattr(simtrack.client.worker, name)


def test_the_worker_package_has_private_modules_only() -> None:
    modules = [m.name for m in pkgutil.iter_modules(simtrack.client.worker.__path__)]
    assert modules and all(name.startswith("_") for name in modules), modules


def test_call_metadata_carries_the_key_as_a_bearer_token() -> None:
    assert call_metadata("sk-1") == (("authorization", "Bearer sk-1"),)
    assert call_metadata(None) == () == call_metadata("")


def test_a_channel_passed_in_is_used_as_it_is() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        assert open_channel(channel) is channel


def test_json_objects_become_structs_and_anything_else_names_its_field() -> None:
    assert to_struct(None, "x") is None
    struct = to_struct({"a": 1, "b": [True, None, "s"], "c": {"d": 2.5}}, "x")
    assert struct is not None
    assert json_format.MessageToDict(struct) == {"a": 1, "b": [True, None, "s"], "c": {"d": 2.5}}
    for bad in ({"a": object()}, {1: "a"}, ["a"]):
        with pytest.raises(InvalidArgument, match="^run.params: must be a JSON object") as raised:
            to_struct(bad, "run.params")  # type: ignore[arg-type]
        assert [v.field for v in raised.value.violations] == ["run.params"]


def test_the_client_validates_json_arguments_as_the_worker_does() -> None:
    with Client("127.0.0.1:1") as client:  # no call is made: the argument is refused first
        with pytest.raises(InvalidArgument, match="agent.config"):
            client.create_agent("a", config={"x": object()})
        with pytest.raises(InvalidArgument, match="args"):
            client.send_command("run", "go", {"x": {1, 2}})
