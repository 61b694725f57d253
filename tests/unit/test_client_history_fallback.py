"""Client.metric_history against a server before ReadMetricHistory (UNIMPLEMENTED): every
point read page by page with GetMetricHistory instead, the request's range and encoding kept.
A real gRPC server in this process that serves GetMetricHistory only.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np

from simtrack.client import Client
from simtrack.server.api.packed import history_response
from simtrack.v1 import telemetry_pb2 as tpb


class PagedOnly:
    """GetMetricHistory over steps 10..29, pages of ``page_size``; what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tpb.GetMetricHistoryRequest] = []

    def GetMetricHistory(
        self, request: tpb.GetMetricHistoryRequest, context: grpc.ServicerContext
    ) -> bytes:
        self.asked.append(request)
        first = int(request.page_token or request.start_step)
        last = min(first + request.page_size, request.end_step + 1)
        steps = np.arange(first, last, dtype=np.int64)
        token = str(last) if last <= request.end_step else ""
        count = request.end_step - request.start_step + 1
        little_endian = request.column_encoding == tpb.COLUMN_ENCODING_LITTLE_ENDIAN
        stamps = np.full(len(steps), 1.7e9)
        return history_response(steps, steps * 0.5, stamps, token, count, False, little_endian).wire


def test_a_server_without_read_metric_history_is_read_page_by_page() -> None:
    servicer = PagedOnly()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler: grpc.RpcMethodHandler[tpb.GetMetricHistoryRequest, bytes]
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.GetMetricHistory, request_deserializer=tpb.GetMetricHistoryRequest.FromString
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "simtrack.v1.TelemetryService", {"GetMetricHistory": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            read = client.metric_history("run", "loss", start_step=12, end_step=29, page_size=7)
    finally:
        server.stop(grace=None)
    assert read.steps.tolist() == list(range(12, 30))
    assert read.values.tolist() == [step * 0.5 for step in range(12, 30)]
    assert [request.page_token for request in servicer.asked] == ["", "19", "26"]
    first = servicer.asked[0]
    assert (first.run_id, first.metric, first.start_step, first.end_step) == ("run", "loss", 12, 29)
    assert first.page_size == 7 and first.max_points == 0
    assert first.column_encoding == tpb.COLUMN_ENCODING_STORED
