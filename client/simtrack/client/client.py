"""A small typed client over the generated stubs, with errors mapped to simtrack exceptions.

::

    with Client("127.0.0.1:50051", api_key=key) as client:
        agent = client.create_agent("greedy-pricer")
        experiment = client.create_experiment("pricing v1", agent.id, "tier0-tutorial")
        run = client.create_run(experiment.id)
        with client.worker(run.id) as worker:
            ...
        for update in client.watch_run(run.id):
            print(update.run.status, update.run.progress_percent)

Every failed call raises the :class:`~simtrack.errors.SimtrackError` subclass of its status
(:func:`simtrack.client.rpc_errors.from_rpc_error`).
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, TypeVar

import grpc

from simtrack.client._channel import call_metadata, open_channel
from simtrack.client._convert import to_struct
from simtrack.client._series import ComparedSeries, Comparison, MetricHistory
from simtrack.client.rpc_errors import from_rpc_error
from simtrack.client.worker import Worker, WorkerOptions
from simtrack.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    scenarios_pb2,
    scenarios_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    validations_pb2,
    validations_pb2_grpc,
)

HISTORY_PAGE_MAX = 100_000  # GetMetricHistoryRequest.page_size's largest

__all__ = ["FRAMEWORKS", "Client", "ComparedSeries", "Comparison", "MetricHistory"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

FRAMEWORKS = {
    "baseline": agents_pb2.FRAMEWORK_BASELINE,
    "langchain": agents_pb2.FRAMEWORK_LANGCHAIN,
    "crewai": agents_pb2.FRAMEWORK_CREWAI,
    "custom": agents_pb2.FRAMEWORK_CUSTOM,
}


ARTIFACT_CHUNK = 1 << 20  # bytes per upload message: the server's limit


class DataLoss(RuntimeError):
    """Downloaded content that does not match what the server stored."""


def _sha256_of(file: BinaryIO) -> str:
    """The SHA-256 of the rest of ``file``, which is then rewound to where it was."""
    start = file.tell()
    digest = hashlib.file_digest(file, "sha256")  # type: ignore[arg-type]
    file.seek(start)
    return digest.hexdigest()


class PageResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


Paged = TypeVar("Paged", bound=PageResponse)


class Client:
    """simtrack's API for scripts, tests and benchmarks.

    ``target`` is ``host:port`` or a ``grpc.Channel`` to share; ``api_key`` is sent as
    ``authorization: Bearer <key>`` on every call; ``timeout`` bounds each unary call.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        api_key: str | None = None,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.api_key = api_key
        self.timeout = timeout
        self._owns_channel = isinstance(target, str)
        self.channel: grpc.Channel = open_channel(target, credentials)
        self.metadata = call_metadata(api_key)
        self.agents = agents_pb2_grpc.AgentServiceStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = runs_pb2_grpc.RunServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.validations = validations_pb2_grpc.ValidationServiceStub(self.channel)
        self.scenarios = scenarios_pb2_grpc.ScenarioServiceStub(self.channel)

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: Callable[..., Resp], request: Any, *, bounded: bool = True) -> Resp:
        """One call with this client's key; ``bounded`` by its timeout (uploads are not)."""
        timeout = self.timeout if bounded else None
        try:
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def _pages(
        self, method: grpc.UnaryUnaryMultiCallable[Any, Paged], request: Any
    ) -> Iterator[Paged]:
        """Every page of a list call: ``request`` again with each next_page_token, asked for
        as soon as the token is known, before the page is handed on: the server answers it
        while the caller reads this one.
        """
        call = method.future(request, timeout=self.timeout, metadata=self.metadata)
        try:
            while True:
                try:
                    page: Paged = call.result()
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from exc
                token = page.next_page_token
                if token:
                    request.page_token = token  # sent as it is now: the call serializes it
                    call = method.future(request, timeout=self.timeout, metadata=self.metadata)
                yield page
                if not token:
                    return
        finally:
            call.cancel()  # a page asked for that the caller stopped before (else done: no-op)

    def close(self) -> None:
        """Close the channel (when this client opened it)."""
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- agents, experiments and scenarios -------------------------------------------------

    def get_agent(self, agent_id: str) -> agents_pb2.Agent:
        """One agent, or NotFound."""
        return self._call(self.agents.GetAgent, agents_pb2.GetAgentRequest(id=agent_id)).agent

    def list_agents(
        self, filter: str = "", page_size: int = 0, order_by: str = ""
    ) -> Iterator[agents_pb2.Agent]:
        """Every agent matching ``filter`` (see ListAgentsRequest.filter) in ``order_by`` order
        (AIP-132, e.g. ``name``; default: oldest first).
        """
        request = agents_pb2.ListAgentsRequest(
            filter=filter, page_size=page_size, order_by=order_by
        )
        for page in self._pages(self.agents.ListAgents, request):
            yield from page.agents

    def create_agent(
        self,
        name: str,
        framework: str | int = "baseline",
        config: Mapping[str, Any] | None = None,
    ) -> agents_pb2.Agent:
        """Create an agent (framework: baseline, langchain, crewai, custom or the enum value)."""
        value = FRAMEWORKS[framework] if isinstance(framework, str) else framework
        config_struct = to_struct(config, "agent.config")
        agent = agents_pb2.Agent(name=name, framework=value, config=config_struct)  # type: ignore[arg-type]
        return self._call(self.agents.CreateAgent, agents_pb2.CreateAgentRequest(agent=agent)).agent

    def create_experiment(
        self,
        name: str,
        agent_id: str,
        scenario_id: str,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> experiments_pb2.Experiment:
        """Create an experiment of an agent on a scenario."""
        experiment = experiments_pb2.Experiment(
            name=name,
            agent_id=agent_id,
            scenario_id=scenario_id,
            params=to_struct(params, "experiment.params"),
            description=description,
        )
        request = experiments_pb2.CreateExperimentRequest(experiment=experiment)
        return self._call(self.experiments.CreateExperiment, request).experiment

    def get_experiment(self, experiment_id: str) -> experiments_pb2.Experiment:
        """One experiment, or NotFound."""
        request = experiments_pb2.GetExperimentRequest(id=experiment_id)
        return self._call(self.experiments.GetExperiment, request).experiment

    def list_experiments(
        self, filter: str = "", page_size: int = 0, order_by: str = ""
    ) -> Iterator[experiments_pb2.Experiment]:
        """Every experiment matching ``filter`` (name, agent_id, scenario_id, status,
        create_time, update_time, params.KEY), in ``order_by`` order (default: oldest first).
        """
        request = experiments_pb2.ListExperimentsRequest(
            filter=filter, page_size=page_size, order_by=order_by
        )
        for page in self._pages(self.experiments.ListExperiments, request):
            yield from page.experiments

    def get_scenario(self, scenario_id: str) -> scenarios_pb2.Scenario:
        """One scenario of the server's catalogue, or NotFound."""
        request = scenarios_pb2.GetScenarioRequest(id=scenario_id)
        return self._call(self.scenarios.GetScenario, request).scenario

    def list_scenarios(
        self, filter: str = "", page_size: int = 0, order_by: str = ""
    ) -> Iterator[scenarios_pb2.Scenario]:
        """The server's scenario catalogue (filter on name, difficulty_tier, duration_ticks,
        tags) in ``order_by`` order (e.g. ``difficulty_tier desc``; default: by id).
        """
        request = scenarios_pb2.ListScenariosRequest(
            filter=filter, page_size=page_size, order_by=order_by
        )
        for page in self._pages(self.scenarios.ListScenarios, request):
            yield from page.scenarios

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        params: Mapping[str, Any] | None = None,
        total_ticks: int = 0,
        worker_id: str = "",
    ) -> runs_pb2.Run:
        """Create a run of an experiment (pending until a worker says hello)."""
        run = runs_pb2.Run(
            experiment_id=experiment_id,
            params=to_struct(params, "run.params"),
            total_ticks=total_ticks,
            worker_id=worker_id,
        )
        return self._call(self.runs.CreateRun, runs_pb2.CreateRunRequest(run=run)).run

    def get_run(self, run_id: str) -> runs_pb2.Run:
        """One run, or NotFound."""
        return self._call(self.runs.GetRun, runs_pb2.GetRunRequest(id=run_id)).run

    def list_runs(
        self, filter: str = "", page_size: int = 0, order_by: str = ""
    ) -> Iterator[runs_pb2.Run]:
        """Every run matching ``filter`` (AIP-160: see ListRunsRequest.filter) in ``order_by``
        order (AIP-132, e.g. ``metrics.total_profit desc``; default: oldest first), page by page.
        """
        request = runs_pb2.ListRunsRequest(filter=filter, page_size=page_size, order_by=order_by)
        for page in self._pages(self.runs.ListRuns, request):
            yield from page.runs

    def runs_table(
        self,
        filter: str = "",
        order_by: str = "",
        metrics: Sequence[str] = (),
        page_size: int = 0,
    ) -> Iterator[tuple[runs_pb2.Run, dict[str, runs_pb2.LatestMetric]]]:
        """Every run as ``list_runs`` gives them, each with the latest values of ``metrics``
        (names, at most 20) that it has, by name: one call a page (ListRuns' latest_metrics).
        """
        request = runs_pb2.ListRunsRequest(
            filter=filter, order_by=order_by, latest_metrics=list(metrics), page_size=page_size
        )
        for page in self._pages(self.runs.ListRuns, request):
            found = page.latest_metrics if metrics else [runs_pb2.RunMetrics()] * len(page.runs)
            for run, latest in zip(page.runs, found, strict=True):
                yield run, {m.name: m for m in latest.metrics}

    def list_metrics(
        self, run_id: str, filter: str = "", order_by: str = ""
    ) -> Iterator[telemetry_pb2.Metric]:
        """A run's metrics with their summaries (count, latest, min, max), in ``order_by``
        order (e.g. ``last_value desc``; default: by name).
        """
        request = telemetry_pb2.ListMetricsRequest(run_id=run_id, filter=filter, order_by=order_by)
        for page in self._pages(self.telemetry.ListMetrics, request):
            yield from page.metrics

    def metric_history(
        self,
        run_id: str,
        metric: str,
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int = 0,
        page_size: int = HISTORY_PAGE_MAX,
    ) -> MetricHistory:
        """One metric's points in step order, between the steps given (inclusive).

        ``max_points`` > 0 asks for at most that many, downsampled by the server so that each
        step interval keeps its lowest and highest point; 0 reads every point, in one call
        (ReadMetricHistory) of pages of ``page_size`` points (1-100,000; the most by default).
        """
        where: dict[str, Any] = {
            "run_id": run_id,
            "metric": metric,
            "start_step": start_step,
            "end_step": end_step,
            "column_encoding": telemetry_pb2.COLUMN_ENCODING_STORED,  # decoded here: fewest bytes
        }
        if max_points:
            request = telemetry_pb2.GetMetricHistoryRequest(**where, max_points=max_points)
            return MetricHistory.of_pages([self._call(self.telemetry.GetMetricHistory, request)])
        read = telemetry_pb2.ReadMetricHistoryRequest(**where, page_size=page_size)
        paged = telemetry_pb2.GetMetricHistoryRequest(**where, page_size=page_size)
        return MetricHistory.of_pages(self._read_history(read, paged))

    def _read_history(
        self,
        request: telemetry_pb2.ReadMetricHistoryRequest,
        paged: telemetry_pb2.GetMetricHistoryRequest,
    ) -> Iterator[telemetry_pb2.GetMetricHistoryResponse]:
        """ReadMetricHistory's pages. A read still going when this client's timeout ends it
        goes on from its last page's token, in a new call (a long series takes its time); a
        server before ReadMetricHistory is read page by page with GetMetricHistory (``paged``).
        """
        while True:
            stream = self.telemetry.ReadMetricHistory(
                request, timeout=self.timeout, metadata=self.metadata
            )
            pages = 0
            try:
                for message in stream:
                    pages += 1
                    request.page_token = message.page.next_page_token
                    yield message.page
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not pages:
                    yield from self._pages(self.telemetry.GetMetricHistory, paged)
                    return
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or not pages:
                    raise from_rpc_error(exc) from exc
                if not request.page_token:
                    return  # the last page had come
            finally:
                stream.cancel()  # a read the caller stopped before its end (else: no-op)

    def compare_runs(
        self,
        run_ids: Sequence[str],
        metrics: Sequence[str],
        *,
        start_step: int | None = None,
        end_step: int | None = None,
        max_points: int = 0,
    ) -> Comparison:
        """Some metrics (1-20) of several runs (1-100), between the steps given (inclusive),
        each run's series of a metric downsampled on one step grid so that they line up.

        ``max_points`` per series (0: the server's default, 1,000 or fewer for many series).
        A run without one of the metrics gets an empty series marked ``missing``.
        """
        request = telemetry_pb2.CompareRunsRequest(
            run_ids=run_ids,
            metrics=metrics,
            start_step=start_step,
            end_step=end_step,
            max_points=max_points,
        )
        return Comparison.of(self._call(self.telemetry.CompareRuns, request))

    def list_events(
        self, run_id: str, filter: str = "", order_by: str = ""
    ) -> Iterator[telemetry_pb2.StoredEvent]:
        """A run's events (filter on type, agent_id, step) in ``order_by`` order (e.g.
        ``step desc``; default: the order they were sent).
        """
        request = telemetry_pb2.ListEventsRequest(run_id=run_id, filter=filter, order_by=order_by)
        for page in self._pages(self.telemetry.ListEvents, request):
            yield from page.events

    def leaderboard(
        self,
        scenario_id: str,
        metric: str,
        *,
        aggregate: str = "latest",
        lowest_first: bool = False,
        limit: int = 10,
        experiment_id: str = "",
        include_unfinished: bool = False,
    ) -> runs_pb2.GetLeaderboardResponse:
        """The scenario's best runs by ``metric`` (its latest, min or max value), best first;
        only completed runs unless ``include_unfinished``.
        """
        request = runs_pb2.GetLeaderboardRequest(
            scenario_id=scenario_id,
            metric=metric,
            aggregate=runs_pb2.MetricAggregate.Value(f"METRIC_AGGREGATE_{aggregate.upper()}"),
            order=runs_pb2.RANK_ORDER_LOWEST_FIRST
            if lowest_first
            else runs_pb2.RANK_ORDER_HIGHEST_FIRST,
            limit=limit,
            experiment_id=experiment_id,
            include_unfinished=include_unfinished,
        )
        return self._call(self.runs.GetLeaderboard, request)

    def run_stats(self, filter: str = "") -> runs_pb2.GetRunStatsResponse:
        """Counts by status, success rate and durations of the runs matching ``filter``."""
        return self._call(self.runs.GetRunStats, runs_pb2.GetRunStatsRequest(filter=filter))

    def create_validation(
        self,
        run_id: str,
        validator: str,
        kind: str,
        passed: bool,
        *,
        score: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> validations_pb2.Validation:
        """Record an external validator's verdict on a run (one per validator and kind)."""
        validation = validations_pb2.Validation(
            run_id=run_id,
            validator=validator,
            kind=kind,
            passed=passed,
            score=score,
            details=to_struct(details, "validation.details"),
        )
        request = validations_pb2.CreateValidationRequest(validation=validation)
        return self._call(self.validations.CreateValidation, request).validation

    def list_validations(
        self, run_id: str, filter: str = "", order_by: str = ""
    ) -> Iterator[validations_pb2.Validation]:
        """A run's verdicts: the scenario's success criteria once it completed, and external
        validators' (filter on validator, kind, passed, score, create_time), in ``order_by``
        order (e.g. ``score desc``; default: oldest first).
        """
        request = validations_pb2.ListValidationsRequest(
            run_id=run_id, filter=filter, order_by=order_by
        )
        for page in self._pages(self.validations.ListValidations, request):
            yield from page.validations

    def upload_artifact(
        self,
        run_id: str,
        source: str | Path | BinaryIO,
        *,
        name: str | None = None,
        type: str = "other",
        content_type: str = "",
    ) -> artifacts_pb2.Artifact:
        """Store a file (a path or an open binary file) with a run, streamed in 1 MiB chunks;
        ``name`` defaults to the file's name. The server checks the SHA-256 computed here.
        """
        with contextlib.ExitStack() as stack:
            file = (
                stack.enter_context(open(source, "rb"))
                if isinstance(source, str | Path)
                else source
            )
            digest = _sha256_of(file)
            artifact = artifacts_pb2.Artifact(
                run_id=run_id,
                name=name or Path(getattr(file, "name", "artifact")).name,
                type=artifacts_pb2.ArtifactType.Value(f"ARTIFACT_TYPE_{type.upper()}"),
                content_type=content_type
                or mimetypes.guess_type(str(getattr(file, "name", "")))[0]
                or "",
            )

            def messages() -> Iterator[artifacts_pb2.UploadArtifactRequest]:
                metadata = artifacts_pb2.UploadArtifactMetadata(artifact=artifact, sha256=digest)
                yield artifacts_pb2.UploadArtifactRequest(metadata=metadata)
                while chunk := file.read(ARTIFACT_CHUNK):
                    yield artifacts_pb2.UploadArtifactRequest(chunk=chunk)

            return self._call(self.artifacts.UploadArtifact, messages(), bounded=False).artifact

    def download_artifact(
        self, artifact_id: str, destination: str | Path | BinaryIO
    ) -> artifacts_pb2.Artifact:
        """Write an artifact's content to ``destination`` (a path or an open binary file) as it
        streams in; its metadata. The content is checked against the stored SHA-256.
        """
        call = self.artifacts.GetArtifactContent(
            artifacts_pb2.GetArtifactContentRequest(id=artifact_id),
            timeout=None,
            metadata=self.metadata,
        )
        with contextlib.ExitStack() as stack:
            try:
                responses = iter(call)
                artifact = next(responses).artifact
                file = (
                    stack.enter_context(open(destination, "wb"))
                    if isinstance(destination, str | Path)
                    else destination
                )
                digest = hashlib.sha256()
                for response in responses:
                    digest.update(response.chunk)
                    file.write(response.chunk)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from exc
        if digest.hexdigest() != artifact.sha256:
            raise DataLoss(f"artifact {artifact_id}: the content does not match its SHA-256")
        return artifact

    def list_artifacts(
        self, run_id: str, filter: str = "", order_by: str = ""
    ) -> Iterator[artifacts_pb2.Artifact]:
        """A run's artifacts (filter on name, type, content_type, create_time, size_bytes) in
        ``order_by`` order (e.g. ``size_bytes desc``; default: oldest first).
        """
        request = artifacts_pb2.ListArtifactsRequest(
            run_id=run_id, filter=filter, order_by=order_by
        )
        for page in self._pages(self.artifacts.ListArtifacts, request):
            yield from page.artifacts

    def cancel_run(self, run_id: str, reason: str = "") -> runs_pb2.CancelRunResponse:
        """Ask the run's worker to stop (the response holds the command and the run)."""
        return self._call(self.runs.CancelRun, runs_pb2.CancelRunRequest(id=run_id, reason=reason))

    def pause_run(self, run_id: str) -> runs_pb2.PauseRunResponse:
        """Pause a running run (its worker is told; the response holds the command and run)."""
        return self._call(self.runs.PauseRun, runs_pb2.PauseRunRequest(id=run_id))

    def resume_run(self, run_id: str) -> runs_pb2.ResumeRunResponse:
        """Set a paused run running again (the response holds the command and the run)."""
        return self._call(self.runs.ResumeRun, runs_pb2.ResumeRunRequest(id=run_id))

    def send_command(
        self, run_id: str, name: str, args: Mapping[str, Any] | None = None
    ) -> runs_pb2.Command:
        """Send a custom command with JSON arguments to the run's worker."""
        request = runs_pb2.SendCommandRequest(id=run_id, name=name, args=to_struct(args, "args"))
        return self._call(self.runs.SendCommand, request).command

    def watch_run(
        self, run_id: str, timeout: float | None = None
    ) -> Iterator[runs_pb2.WatchRunResponse]:
        """The run's state as it changes, until it ends (``timeout`` bounds the whole watch)."""
        call = self.runs.WatchRun(
            runs_pb2.WatchRunRequest(id=run_id), timeout=timeout, metadata=self.metadata
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def worker(self, run_id: str, **kwargs: Any) -> Worker:
        """A :class:`Worker` for ``run_id`` on this client's channel and key."""
        kwargs.setdefault("api_key", self.api_key)
        options = kwargs.pop("options", None)
        return Worker(self.channel, run_id, options=options or WorkerOptions(), **kwargs)
