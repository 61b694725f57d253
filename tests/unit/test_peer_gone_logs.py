"""gRPC's report of a status it could not send to a client that left is not a server error;
every other gRPC report still reaches the log.
"""

from __future__ import annotations

import logging
import sys

import pytest
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from simtrack.server.observability import quiet_peer_gone_reports


def _record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "grpc._cython.cygrpc", logging.ERROR, __file__, 1, "raised in core", None, exc_info
    )


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (
            cygrpc.ExecuteBatchError('Failed "execute_batch": (<SendStatusFromServerOperation>,)'),
            False,
        ),
        (cygrpc.ExecuteBatchError('Failed "execute_batch": (<SendMessageOperation>,)'), True),
        (RuntimeError("SendStatusFromServer"), True),
    ],
)
def test_only_a_status_that_could_not_be_sent_is_dropped(error: BaseException, kept: bool) -> None:
    quiet_peer_gone_reports()
    quiet_peer_gone_reports()  # idempotent
    logger = logging.getLogger("grpc._cython.cygrpc")
    assert len([f for f in logger.filters if type(f).__name__ == "_PeerGoneFilter"]) == 1
    assert logger.filter(_record(error)) is kept
