"""The connection to a simtrack server, made one way for :class:`Client` and the worker helper:
the channel (message sizes, reconnect backoff, credentials), the key's call metadata and the
worker's StreamRun callable.
"""

from __future__ import annotations

from typing import Any

import grpc

from simtrack.v1 import telemetry_pb2

__all__ = [
    "MAX_MESSAGE_BYTES",
    "RECONNECT_BACKOFF_MS",
    "STREAM_RUN_METHOD",
    "Metadata",
    "call_metadata",
    "open_channel",
    "stream_run",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECONNECT_BACKOFF_MS = (100, 1000)  # gRPC's (initial, max) backoff between connection attempts
#: The RPC the worker helper streams a run's telemetry on.
STREAM_RUN_METHOD = "/simtrack.v1.TelemetryService/StreamRun"

Metadata = tuple[tuple[str, str], ...]


def open_channel(
    target: str | grpc.Channel, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``); a channel passed in is returned as it is."""
    if not isinstance(target, str):
        return target
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # gRPC backs off up to 120 s between connection attempts by default: a server back
        # after a restart would wait that long for its workers. (The minimum is left alone:
        # gRPC uses it as the connect timeout, which a loaded machine needs.)
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def call_metadata(api_key: str | None) -> Metadata:
    """What every call carries: ``authorization: Bearer <key>`` (nothing without a key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def stream_run(channel: grpc.Channel) -> Any:
    """The StreamRun callable of the worker helper: it sends requests already serialized (the
    spool holds them as bytes) and reads :class:`StreamRunResponse` messages.
    """
    return channel.stream_stream(
        STREAM_RUN_METHOD,
        request_serializer=None,
        response_deserializer=telemetry_pb2.StreamRunResponse.FromString,
    )
