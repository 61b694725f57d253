"""The test harness as a library: servers (as processes or in-process), clients, raw streams,
test data, database helpers and the domain services, for the tests and the benchmarks.

Test modules import from here (``from tests.support import Server, StreamKit``); the
``conftest.py`` files only wrap these in fixtures.
"""

from __future__ import annotations

from tests.support.clients import (
    SERVER_FAULTS,
    Authorization,
    Client,
    StatusRecorder,
)
from tests.support.data import (
    Checksum,
    Dataset,
)
from tests.support.databases import (
    APP_ROLE,
    BACKENDS,
    POSTGRES_ADMIN_URL,
    PostgresDatabases,
    admin_execute,
    as_app_role,
    connect,
    with_database,
)
from tests.support.inprocess import (
    LOG_FORMAT,
    ExplicitSettings,
    InProcessServer,
)
from tests.support.kit import (
    StreamKit,
    Upload,
)
from tests.support.processes import (
    CLI_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    LOOPBACK_ANY_PORT,
    SERVING,
    SIMTRACK,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    CliFailed,
    ServerFailed,
    ServerProcess,
    SimtrackCli,
    clean_env,
    run_simtrack,
    serve_command,
    simtrack_command,
)
from tests.support.proxy import (
    TcpProxy,
)
from tests.support.runs import (
    COMPLETED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    STOPPED,
    ExperimentStatus,
    Request,
    RunStatus,
    as_struct,
    experiment_status,
    final,
    get_run,
    metrics,
    progress,
    series,
    wait_status,
)
from tests.support.servers import (
    Launch,
    Server,
    ServerPool,
    StartServer,
)
from tests.support.services import (
    SCENARIO_ID,
    MakeServices,
    Services,
)
from tests.support.stored import (
    StoredEvent,
    StoredMetric,
    TelemetryDatabase,
)
from tests.support.streams import (
    AIO_CHANNEL_OPTIONS,
    RECONNECTABLE,
    STREAM_WINDOW,
    WRITE_RACE_DETAILS,
    RawStream,
    Refusal,
    StreamEnded,
    bad_request_fields,
    refusal,
)

__all__ = [
    "AIO_CHANNEL_OPTIONS",
    "APP_ROLE",
    "Authorization",
    "BACKENDS",
    "CLI_TIMEOUT",
    "COMPLETED",
    "Checksum",
    "CliFailed",
    "Client",
    "Dataset",
    "ExperimentStatus",
    "ExplicitSettings",
    "FAILED",
    "HEALTH_CHECK_INTERVAL",
    "InProcessServer",
    "LOG_FORMAT",
    "LOOPBACK_ANY_PORT",
    "Launch",
    "MakeServices",
    "PAUSED",
    "PENDING",
    "POSTGRES_ADMIN_URL",
    "PostgresDatabases",
    "RECONNECTABLE",
    "RUNNING",
    "RawStream",
    "Refusal",
    "Request",
    "RunStatus",
    "SCENARIO_ID",
    "SERVER_FAULTS",
    "SERVING",
    "SIMTRACK",
    "STARTUP_TIMEOUT",
    "STOPPED",
    "STOP_TIMEOUT",
    "STREAM_WINDOW",
    "Server",
    "ServerFailed",
    "ServerPool",
    "ServerProcess",
    "Services",
    "SimtrackCli",
    "StartServer",
    "StatusRecorder",
    "StoredEvent",
    "StoredMetric",
    "StreamEnded",
    "StreamKit",
    "TcpProxy",
    "TelemetryDatabase",
    "Upload",
    "WRITE_RACE_DETAILS",
    "admin_execute",
    "as_app_role",
    "as_struct",
    "bad_request_fields",
    "clean_env",
    "connect",
    "experiment_status",
    "final",
    "get_run",
    "metrics",
    "progress",
    "refusal",
    "run_simtrack",
    "series",
    "serve_command",
    "simtrack_command",
    "wait_status",
    "with_database",
]
