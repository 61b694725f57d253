"""The gRPC limit: a minimal grpc.aio TelemetryService.StreamRun that acks every message, no
database.

``python -m bench.null_server`` listens on 127.0.0.1 (a free port) and logs
``simtrack serving on 127.0.0.1:PORT`` on stderr like the real server, so the same client and
the same start-up code measure both. It answers hello with welcome(0) and every later message
with ack(seq) at once: what is left is protobuf, HTTP/2 and asyncio, per message. With
``--coalesce`` it sends one (cumulative) ack for all the messages that arrived while the
previous ack was being sent: what acking once per group commit, not once per message, saves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from simtrack.v1 import telemetry_pb2, telemetry_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class NullTelemetryService(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, coalesce: bool = False) -> None:
        self.coalesce = coalesce

    async def StreamRun(
        self, request_iterator: AsyncIterator[telemetry_pb2.StreamRunRequest], context: Context
    ) -> AsyncIterator[telemetry_pb2.StreamRunResponse]:
        if self.coalesce:
            async for response in self._coalesced(request_iterator):
                yield response
            return
        async for message in request_iterator:
            if message.HasField("hello"):
                yield telemetry_pb2.StreamRunResponse(
                    welcome=telemetry_pb2.Welcome(committed_seq=0)
                )
            elif message.seq > 0:
                yield telemetry_pb2.StreamRunResponse(
                    ack=telemetry_pb2.Ack(committed_seq=message.seq)
                )

    async def _coalesced(
        self, requests: AsyncIterator[telemetry_pb2.StreamRunRequest]
    ) -> AsyncIterator[telemetry_pb2.StreamRunResponse]:
        """One ack for everything that arrived while the previous ack was being sent."""
        first = await anext(aiter(requests), None)
        if first is None:
            return
        yield telemetry_pb2.StreamRunResponse(welcome=telemetry_pb2.Welcome(committed_seq=0))
        arrived: asyncio.Queue[int | None] = asyncio.Queue()

        async def read() -> None:
            async for message in requests:
                arrived.put_nowait(message.seq)
            arrived.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (seq := await arrived.get()) is not None:
                end = False
                while not arrived.empty():
                    more = arrived.get_nowait()
                    if more is None:
                        end = True
                        break
                    seq = max(seq, more)
                yield telemetry_pb2.StreamRunResponse(ack=telemetry_pb2.Ack(committed_seq=seq))
                if end:
                    break
        finally:
            reader.cancel()


async def serve(coalesce: bool) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
    )
    service = NullTelemetryService(coalesce)  # type: ignore[abstract]  # StreamRun only
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"simtrack serving on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.null_server")
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="one ack for all messages that arrived while the last ack was sent",
    )
    asyncio.run(serve(parser.parse_args().coalesce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
