"""The client asks for a list's next page as soon as its token is known, before it hands on
the page (the server answers while the caller reads): against a real gRPC server in this
process that records what it was asked, and when.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from concurrent import futures
from typing import cast

import grpc
import pytest

from simtrack.client import Client
from simtrack.errors import InvalidArgument
from simtrack.v1 import runs_pb2


class ThreePages:
    """ListRuns in pages of one run ("0", "1", "2"); the token ``bad`` is refused."""

    def __init__(self, last_token: str = "") -> None:
        self.asked: list[str] = []
        self.last_token = last_token  # the third page's token: "" (the end) or "bad"
        self.lock = threading.Lock()

    def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> runs_pb2.ListRunsResponse:
        with self.lock:
            self.asked.append(request.page_token)
        if request.page_token == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token")
        at = int(request.page_token or 0)
        token = str(at + 1) if at < 2 else self.last_token
        return runs_pb2.ListRunsResponse(runs=[runs_pb2.Run(id=str(at))], next_page_token=token)

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.asked)


@contextlib.contextmanager
def serving(servicer: ThreePages) -> Iterator[Client]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    list_runs = grpc.unary_unary_rpc_method_handler(
        servicer.ListRuns,
        request_deserializer=runs_pb2.ListRunsRequest.FromString,
        response_serializer=runs_pb2.ListRunsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("simtrack.v1.RunService", {"ListRuns": list_runs})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.stop(grace=None)


def asked_within(servicer: ThreePages, expected: list[str], seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while servicer.seen() != expected and time.monotonic() < deadline:
        time.sleep(0.005)
    return servicer.seen()


def test_the_next_page_is_asked_for_before_the_page_is_handed_on() -> None:
    servicer = ThreePages()
    with serving(servicer) as client:
        runs = client.list_runs()
        assert next(runs).id == "0"
        # The caller has not asked for more, and the second page is asked for already.
        assert asked_within(servicer, ["", "1"]) == ["", "1"]
        assert [run.id for run in runs] == ["1", "2"]
        assert servicer.seen() == ["", "1", "2"]  # none after the last page


def test_a_list_left_half_way_ends_quietly() -> None:
    servicer = ThreePages()
    with serving(servicer) as client:
        runs = cast(Generator[runs_pb2.Run, None, None], client.list_runs())
        assert next(runs).id == "0"
        runs.close()  # the second page's call is let go (cancelled, if not answered yet)
        time.sleep(0.1)
        assert servicer.seen() in ([""], ["", "1"])  # nothing further asked for
        assert [run.id for run in client.list_runs()] == ["0", "1", "2"]  # the channel works


def test_a_later_page_refused_raises_when_the_caller_reaches_it() -> None:
    servicer = ThreePages(last_token="bad")
    with serving(servicer) as client:
        runs = client.list_runs()
        assert [next(runs).id, next(runs).id, next(runs).id] == ["0", "1", "2"]
        with pytest.raises(InvalidArgument, match="page_token"):
            next(runs)
