"""Tenant isolation cases (see ``tests/support/tenancy.py``): runs, their streams and telemetry,
validations, artifacts and participants.
"""

from __future__ import annotations

from collections.abc import Callable

from simtrack.v1 import (
    artifacts_pb2,
    runs_pb2,
    telemetry_pb2,
    validations_pb2,
)
from tests.support.clients import Client
from tests.support.protos import (
    SCENARIO,
    TIMEOUT,
    Participant,
    Run,
    RunStatus,
    mask,
    struct,
)
from tests.support.tenancy import (
    Scene,
    all_ids,
    assert_hidden,
    case,
    unique,
)

# RunService: runs


@case("RunService.CreateRun")
def create_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.CreateRun(
            runs_pb2.CreateRunRequest(run=Run(experiment_id=id)), timeout=TIMEOUT
        ),
        s.theirs.experiment.id,
    )


@case("RunService.GetRun")
def get_run(s: Scene) -> None:
    assert_hidden(
        s.server, lambda id: s.a.runs.GetRun(runs_pb2.GetRunRequest(id=id)), s.theirs.run.id
    )


@case("RunService.ListRuns")
def list_runs(s: Scene) -> None:
    def fetch(filter: str = "") -> Callable[[str], tuple[list[str], str]]:
        def page(token: str) -> tuple[list[str], str]:
            request = runs_pb2.ListRunsRequest(page_size=5, page_token=token, filter=filter)
            response = s.a.runs.ListRuns(request, timeout=TIMEOUT)
            return [r.id for r in response.runs], response.next_page_token

        return page

    listed = all_ids(fetch())
    assert s.mine.run.id in listed and not set(listed) & s.theirs.ids()
    assert all_ids(fetch(f'experiment_id = "{s.theirs.experiment.id}"')) == []


@case("RunService.UpdateRun")
def update_run(s: Scene) -> None:
    # pending -> starting is a legal move, so only the tenant check can refuse it.
    assert_hidden(
        s.server,
        lambda id: s.a.runs.UpdateRun(
            runs_pb2.UpdateRunRequest(
                run=Run(id=id, status=RunStatus.RUN_STATUS_STARTING), update_mask=mask("status")
            ),
            timeout=TIMEOUT,
        ),
        s.theirs.run.id,
    )


@case("RunService.DeleteRun")
def delete_run(s: Scene) -> None:
    assert_hidden(
        s.server, lambda id: s.a.runs.DeleteRun(runs_pb2.DeleteRunRequest(id=id)), s.theirs.run.id
    )


# TelemetryService: the stream; RunService: watching and commands


@case("TelemetryService.StreamRun")
def stream_run(s: Scene) -> None:
    def hello(id: str) -> object:
        opening = telemetry_pb2.StreamRunRequest(hello=telemetry_pb2.Hello(run_id=id))
        return list(s.a.telemetry.StreamRun(iter([opening]), timeout=TIMEOUT))

    assert_hidden(s.server, hello, s.theirs.run.id)


@case("RunService.WatchRun")
def watch_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: next(iter(s.a.runs.WatchRun(runs_pb2.WatchRunRequest(id=id), timeout=TIMEOUT))),
        s.theirs.run.id,
    )


@case("RunService.CancelRun")
def cancel_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.CancelRun(runs_pb2.CancelRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.PauseRun")
def pause_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.PauseRun(runs_pb2.PauseRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.ResumeRun")
def resume_run(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.ResumeRun(runs_pb2.ResumeRunRequest(id=id), timeout=TIMEOUT),
        s.theirs.run.id,
    )


@case("RunService.SendCommand")
def send_command(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.SendCommand(
            runs_pb2.SendCommandRequest(id=id, name="set_price", args=struct({"price": 9.5})),
            timeout=TIMEOUT,
        ),
        s.theirs.run.id,
    )


# TelemetryService: reads


@case("TelemetryService.ListMetrics")
def list_metrics(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.ListMetrics(
            telemetry_pb2.ListMetricsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("TelemetryService.GetMetricHistory")
def get_metric_history(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.GetMetricHistory(
            telemetry_pb2.GetMetricHistoryRequest(run_id=id, metric="loss"), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("TelemetryService.ReadMetricHistory")
def read_metric_history(s: Scene) -> None:
    def read(id: str) -> object:
        request = telemetry_pb2.ReadMetricHistoryRequest(run_id=id, metric="loss")
        return list(s.a.telemetry.ReadMetricHistory(request, timeout=TIMEOUT))

    assert_hidden(s.server, read, s.theirs.run.id)


@case("TelemetryService.CompareRuns")
def compare_runs(s: Scene) -> None:
    def compare(id: str) -> object:
        request = telemetry_pb2.CompareRunsRequest(run_ids=[s.mine.run.id, id], metrics=["loss"])
        return s.a.telemetry.CompareRuns(request, timeout=TIMEOUT)

    assert_hidden(s.server, compare, s.theirs.run.id)


@case("TelemetryService.ListEvents")
def list_events(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.telemetry.ListEvents(
            telemetry_pb2.ListEventsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("RunService.GetLeaderboard")
def get_leaderboard(s: Scene) -> None:
    def board(experiment_id: str) -> list[str]:
        request = runs_pb2.GetLeaderboardRequest(
            scenario_id=SCENARIO, metric="score", experiment_id=experiment_id
        )
        response = s.a.runs.GetLeaderboard(request, timeout=TIMEOUT)
        return [entry.run.id for entry in response.entries]

    assert board(s.mine.experiment.id) == []
    assert_hidden(s.server, board, s.theirs.experiment.id)


@case("RunService.GetRunStats")
def get_run_stats(s: Scene) -> None:
    def total(client: Client, experiment_id: str) -> int:
        request = runs_pb2.GetRunStatsRequest(filter=f'experiment_id = "{experiment_id}"')
        return client.runs.GetRunStats(request, timeout=TIMEOUT).total

    assert total(s.a, s.mine.experiment.id) == 1
    assert total(s.b, s.theirs.experiment.id) == 1
    assert total(s.a, s.theirs.experiment.id) == 0


# ValidationService


@case("ValidationService.CreateValidation")
def create_validation(s: Scene) -> None:
    def create(run_id: str) -> object:
        validation = validations_pb2.Validation(
            run_id=run_id, validator="judge", kind="k", passed=True
        )
        request = validations_pb2.CreateValidationRequest(validation=validation)
        return s.a.validations.CreateValidation(request, timeout=TIMEOUT)

    assert_hidden(s.server, create, s.theirs.run.id)


@case("ValidationService.GetValidation")
def get_validation(s: Scene) -> None:
    theirs = s.b.validations.CreateValidation(
        validations_pb2.CreateValidationRequest(
            validation=validations_pb2.Validation(
                run_id=s.theirs.run.id, validator="judge", kind="k", passed=True
            )
        ),
        timeout=TIMEOUT,
    ).validation
    assert_hidden(
        s.server,
        lambda id: s.a.validations.GetValidation(
            validations_pb2.GetValidationRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )


@case("ValidationService.ListValidations")
def list_validations(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.validations.ListValidations(
            validations_pb2.ListValidationsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


# ArtifactService


def _upload(client: Client, run_id: str) -> artifacts_pb2.Artifact:
    metadata = artifacts_pb2.UploadArtifactMetadata(
        artifact=artifacts_pb2.Artifact(run_id=run_id, name=unique("artifact"))
    )
    messages = [
        artifacts_pb2.UploadArtifactRequest(metadata=metadata),
        artifacts_pb2.UploadArtifactRequest(chunk=b"secret"),
    ]
    return client.artifacts.UploadArtifact(iter(messages), timeout=TIMEOUT).artifact


@case("ArtifactService.UploadArtifact")
def upload_artifact(s: Scene) -> None:
    assert _upload(s.a, s.mine.run.id).size_bytes == 6
    assert_hidden(s.server, lambda id: _upload(s.a, id), s.theirs.run.id)


@case("ArtifactService.GetArtifact")
def get_artifact(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.GetArtifact(
            artifacts_pb2.GetArtifactRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )


@case("ArtifactService.GetArtifactContent")
def get_artifact_content(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)

    def download(id: str) -> object:
        request = artifacts_pb2.GetArtifactContentRequest(id=id)
        return list(s.a.artifacts.GetArtifactContent(request, timeout=TIMEOUT))

    assert_hidden(s.server, download, theirs.id)


@case("ArtifactService.ListArtifacts")
def list_artifacts(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.ListArtifacts(
            artifacts_pb2.ListArtifactsRequest(run_id=id), timeout=TIMEOUT
        ),
        s.theirs.run.id,
    )


@case("ArtifactService.DeleteArtifact")
def delete_artifact(s: Scene) -> None:
    theirs = _upload(s.b, s.theirs.run.id)
    assert_hidden(
        s.server,
        lambda id: s.a.artifacts.DeleteArtifact(
            artifacts_pb2.DeleteArtifactRequest(id=id), timeout=TIMEOUT
        ),
        theirs.id,
    )
    content = s.b.artifacts.GetArtifactContent(
        artifacts_pb2.GetArtifactContentRequest(id=theirs.id), timeout=TIMEOUT
    )
    assert b"".join(m.chunk for m in content) == b"secret", "B's file is intact"


# RunService: participants


@case("RunService.CreateParticipant")
def create_participant(s: Scene) -> None:
    def create(run_id: str, agent_id: str) -> object:
        request = runs_pb2.CreateParticipantRequest(
            participant=Participant(run_id=run_id, agent_id=agent_id, role="buyer")
        )
        return s.a.runs.CreateParticipant(request, timeout=TIMEOUT)

    assert_hidden(s.server, lambda id: create(s.mine.run.id, id), s.theirs.spare_agent.id)
    assert_hidden(s.server, lambda id: create(id, s.mine.spare_agent.id), s.theirs.run.id)


@case("RunService.GetParticipant")
def get_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.GetParticipant(runs_pb2.GetParticipantRequest(id=id)),
        s.theirs.participant.id,
    )


@case("RunService.ListParticipants")
def list_participants(s: Scene) -> None:
    def fetch(run_id: str) -> list[str]:
        request = runs_pb2.ListParticipantsRequest(run_id=run_id, page_size=1000)
        return [p.id for p in s.a.runs.ListParticipants(request, timeout=TIMEOUT).participants]

    assert fetch(s.mine.run.id) == [s.mine.participant.id]
    assert_hidden(s.server, fetch, s.theirs.run.id)


@case("RunService.UpdateParticipant")
def update_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.UpdateParticipant(
            runs_pb2.UpdateParticipantRequest(
                participant=Participant(id=id, role="observer"), update_mask=mask("role")
            ),
            timeout=TIMEOUT,
        ),
        s.theirs.participant.id,
    )


@case("RunService.DeleteParticipant")
def delete_participant(s: Scene) -> None:
    assert_hidden(
        s.server,
        lambda id: s.a.runs.DeleteParticipant(runs_pb2.DeleteParticipantRequest(id=id)),
        s.theirs.participant.id,
    )
