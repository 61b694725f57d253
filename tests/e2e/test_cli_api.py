"""The ``simtrack`` client commands end to end: the real command against a real server.

Most tests share one server on SQLite (each makes objects of its own); one runs the create
path on PostgreSQL. What the command creates is read back through the stubs, what it prints is
parsed, and what it writes (CSV, PNG) is compared with what a worker streamed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import Message

from simtrack.client import Client, Worker
from simtrack.v1 import agents_pb2, experiments_pb2, runs_pb2, scenarios_pb2
from tests.support import Server, ServerPool, SimtrackCli
from tests.support.processes import SIMTRACK, clean_env

# The API under test, not the process: served in-process (tests/support/inprocess.py).
pytestmark = pytest.mark.in_process

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "scenarios"
SCENARIO = "tier0-tutorial"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
# Most tests share the module's server on SQLite (module_database_url has both backends).
ON_SQLITE = pytest.mark.parametrize("module_database_url", ["sqlite"], indirect=True)
ON_POSTGRESQL = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@dataclass
class Cli:
    """``simtrack`` pointed at one server through $SIMTRACK_TARGET, as a user's shell would."""

    target: str
    run: SimtrackCli

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(*args, check=check, SIMTRACK_TARGET=self.target)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def created(self, *args: str) -> str:
        """The id a create command printed."""
        return self(*args).stdout.strip()


@pytest.fixture(scope="module")
def shared_server(module_database_url: str, module_server_pool: ServerPool) -> Server:
    return module_server_pool.start(module_database_url)


@pytest.fixture
def cli(shared_server: Server, simtrack_cli: SimtrackCli) -> Cli:
    return Cli(shared_server.address, simtrack_cli)


@pytest.fixture
def client(shared_server: Server) -> Iterator[Client]:
    with Client(shared_server.address) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def same(message: Message, printed: dict[str, Any]) -> bool:
    """Whether ``--json`` output is exactly ``message``."""
    return json_format.ParseDict(printed, type(message)()) == message


def new_run(client: Client) -> runs_pb2.Run:
    agent = client.create_agent(unique("agent"), "custom")
    experiment = client.create_experiment("cli", agent.id, SCENARIO)
    return client.create_run(experiment.id, total_ticks=20)


# Agents, experiments, runs


@ON_SQLITE
def test_agents_created_by_the_cli_are_stored_and_listed(cli: Cli, shared_server: Server) -> None:
    name = unique("pricer")
    config = {"temperature": 0.25, "tools": ["search", "calc"]}
    agent_id = cli.created(
        "agents", "create", name, "--framework", "langchain", "--config", json.dumps(config)
    )

    stored = shared_server.agents.GetAgent(agents_pb2.GetAgentRequest(id=agent_id)).agent
    assert (stored.name, stored.framework) == (name, agents_pb2.FRAMEWORK_LANGCHAIN)
    assert json_format.MessageToDict(stored.config) == config
    assert same(stored, cli.json("agents", "get", agent_id))
    shown = cli("agents", "get", agent_id).stdout
    assert agent_id in shown and name in shown

    listed = cli.json("agents", "list", "--filter", f'name = "{name}"')
    assert [agent["id"] for agent in listed] == [agent_id]
    later = cli.created("agents", "create", name.upper())  # sorts before by code point
    ordered = cli.json(
        "agents", "list", "--filter", f'name >= "{name.upper()}"', "--order-by", "name"
    )
    assert [agent["id"] for agent in ordered][:1] == [later]
    assert agent_id in [agent["id"] for agent in ordered]
    table = cli("agents", "list").stdout
    assert agent_id in table and name in table and "langchain" in table


@ON_SQLITE
def test_experiments_and_runs_created_by_the_cli_are_stored(
    cli: Cli, shared_server: Server, client: Client
) -> None:
    agent = client.create_agent(unique("agent"), "custom")
    name = unique("experiment")
    experiment_id = cli.created(
        "experiments", "create", name, "--agent", agent.id, "--scenario", SCENARIO,
        "--params", '{"seed": 7, "prices": {"base": 9.5}}',
    )  # fmt: skip
    request = experiments_pb2.GetExperimentRequest(id=experiment_id)
    experiment = shared_server.experiments.GetExperiment(request).experiment
    assert (experiment.name, experiment.agent_id, experiment.scenario_id) == (
        name,
        agent.id,
        SCENARIO,
    )
    assert json_format.MessageToDict(experiment.params) == {"seed": 7, "prices": {"base": 9.5}}
    assert same(experiment, cli.json("experiments", "get", experiment_id))
    assert name in cli("experiments", "list").stdout

    run_id = cli.created("runs", "create", "--experiment", experiment_id, "--params", '{"seed": 8}')
    run = shared_server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run
    assert (run.experiment_id, run.status) == (experiment_id, runs_pb2.RUN_STATUS_PENDING)
    assert json_format.MessageToDict(run.params)["seed"] == 8
    assert same(run, cli.json("runs", "get", run_id))
    listed = cli.json("runs", "list", "--filter", f'experiment_id = "{experiment_id}"')
    assert [r["id"] for r in listed] == [run_id]
    assert run_id in cli("runs", "list", "--filter", 'status = "pending"').stdout

    cancelled = cli("runs", "cancel", run_id, "--reason", "not needed")
    assert cancelled.stdout.strip() == f"run {run_id}: stopped"  # no worker: stopped at once
    run = shared_server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run
    assert run.status == runs_pb2.RUN_STATUS_STOPPED


@ON_SQLITE
def test_a_list_stops_at_its_limit(cli: Cli, client: Client) -> None:
    agent = client.create_agent(unique("agent"), "custom")
    experiment = client.create_experiment(unique("experiment"), agent.id, SCENARIO)
    created = [client.create_run(experiment.id, {"seed": seed}).id for seed in range(5)]
    only = ("--filter", f'experiment_id = "{experiment.id}"')
    newest = cli.json("runs", "list", *only, "--order-by", "params.seed desc", "--limit", "2")
    assert [r["id"] for r in newest] == created[:-3:-1]  # seeds 4 and 3
    assert len(cli.json("runs", "list", *only, "--limit", "50")) == 5
    shown = cli("runs", "list", *only, "--order-by", "params.seed", "--limit", "1").stdout
    assert created[0] in shown and not any(run_id in shown for run_id in created[1:])
    assert len(cli.json("agents", "list", "--limit", "1")) == 1
    for wrong in ("0", "-1", "two"):
        refused = cli("runs", "list", "--limit", wrong, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"argument --limit: {wrong!r} is not a positive whole number" in refused.stderr


@ON_SQLITE
def test_runs_pause_and_resume_and_a_paused_run_in_lists_and_stats(
    cli: Cli, client: Client, shared_server: Server
) -> None:
    run = new_run(client)
    refused = cli("runs", "pause", run.id, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("simtrack: FAILED_PRECONDITION: only a running run")
    for status in (runs_pb2.RUN_STATUS_STARTING, runs_pb2.RUN_STATUS_RUNNING):
        shared_server.runs.UpdateRun(
            runs_pb2.UpdateRunRequest(
                run=runs_pb2.Run(id=run.id, status=status),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            )
        )
    assert cli("runs", "pause", run.id).stdout == f"run {run.id}: paused\n"
    [row] = [line for line in cli("runs", "list").stdout.splitlines() if run.id in line]
    assert "paused" in row and SCENARIO in row  # piped, a row whole: no cell cut or wrapped
    listed = cli.json("runs", "list", "--filter", 'status = "paused"')
    assert run.id in [r["id"] for r in listed]
    assert all(r["status"] == "RUN_STATUS_PAUSED" for r in listed)
    stats = cli("stats", "--filter", f'experiment_id = "{run.experiment_id}"').stdout
    [counted] = [line for line in stats.splitlines() if "paused" in line]
    assert counted.split() == ["│", "paused", "│", "1", "│"], stats
    assert cli("runs", "resume", run.id).stdout == f"run {run.id}: running\n"


@ON_SQLITE
@pytest.mark.parametrize(
    ("args", "code", "named"),
    [
        (("agents", "get", UNKNOWN_ID), "NOT_FOUND", UNKNOWN_ID),
        (("agents", "create", "x", "--config", "{not json"), "INVALID_ARGUMENT", "--config"),
        (("agents", "create", "x", "--config", "[1, 2]"), "INVALID_ARGUMENT", "JSON object"),
        (("experiments", "create", "x", "--agent", UNKNOWN_ID, "--scenario", SCENARIO),
         "NOT_FOUND", UNKNOWN_ID),
        (("runs", "create", "--experiment", "not-a-uuid"), "INVALID_ARGUMENT", "not-a-uuid"),
        (("runs", "watch", UNKNOWN_ID), "NOT_FOUND", UNKNOWN_ID),
        (("history", UNKNOWN_ID, "profit"), "NOT_FOUND", UNKNOWN_ID),
        (("compare", UNKNOWN_ID, "--metric", "profit"), "NOT_FOUND", "run_ids[0]"),
        (("compare", UNKNOWN_ID, UNKNOWN_ID, "--metric", "x"), "INVALID_ARGUMENT", "run_ids[1]"),
        (("compare", UNKNOWN_ID, "--metric", "x", "--max-points", "1"), "INVALID_ARGUMENT",
         "max_points"),
        (("agents", "list", "--target", "127.0.0.1:1"), "UNAVAILABLE", "127.0.0.1:1"),
        (("agents", "list", "--order-by", "name, framework"), "INVALID_ARGUMENT", "position 6"),
        (("metrics", UNKNOWN_ID, "--order-by", "kind"), "INVALID_ARGUMENT", "order_by"),
    ],
)  # fmt: skip
def test_a_refusal_is_one_line_naming_the_problem(
    cli: Cli, args: tuple[str, ...], code: str, named: str
) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"simtrack: {code}: ") and named in line, line


# Telemetry


@ON_SQLITE
def test_metrics_history_and_events_show_what_a_worker_streamed(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    run = new_run(client)
    steps = np.arange(200)
    profit = np.cumsum(np.random.default_rng(7).normal(size=steps.size)) / 3  # exact floats
    stamps = 1.7e9 + steps * 0.25
    with Worker(client.channel, run.id, spool_dir=tmp_path / "spool") as worker:
        for step, value, stamp in zip(steps, profit, stamps, strict=True):
            worker.log_metrics(int(step), {"profit": float(value)}, timestamp=float(stamp))
            worker.log_metrics(int(step), {"stock": 200.0 - step})
            worker.log_event(int(step), "restock" if step % 50 == 0 else "agent_action")

    metrics = {m["name"]: m for m in cli.json("metrics", run.id)}
    assert metrics.keys() == {"profit", "stock"}
    # The runs table with metric columns (ListRuns' latest_metrics: one call a page).
    only = f'experiment_id = "{run.experiment_id}"'
    [row] = cli.json("runs", "list", "--filter", only, "--metric", "stock", "--metric", "nope")
    assert row["id"] == run.id and list(row["latest_metrics"]) == ["stock"]
    assert row["latest_metrics"]["stock"]["value"] == 200.0 - 199
    listed = cli("runs", "list", "--filter", only, "--metric", "stock", "--metric", "nope").stdout
    assert "stock" in listed and "nope" in listed and " 1 " in listed
    assert (metrics["profit"]["count"], metrics["profit"]["last_step"]) == ("200", "199")
    table = cli("metrics", run.id).stdout
    assert "profit" in table and "stock" in table
    by_value = cli.json("metrics", run.id, "--order-by", "last_value desc")
    want = sorted(metrics, key=lambda name: metrics[name]["last_value"], reverse=True)
    assert [m["name"] for m in by_value] == want

    png, points = tmp_path / "profit.png", tmp_path / "profit.csv"
    summary = cli("history", run.id, "profit", "--png", str(png), "--csv", str(points)).stdout
    assert (
        f"profit: 200 points, steps 0..199, min {profit.min():g}, max {profit.max():g}" in summary
    )
    with points.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == steps.tolist()
    assert [float(r["value"]) for r in rows] == profit.tolist()
    assert [float(r["timestamp"]) for r in rows] == pytest.approx(stamps.tolist(), abs=1e-6)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(png).shape == (450, 800, 4)
    # `--csv -`: the CSV alone on standard output (to pipe), the summary on standard error.
    piped = cli("history", run.id, "profit", "--csv", "-")
    assert [int(r["step"]) for r in csv.DictReader(io.StringIO(piped.stdout))] == steps.tolist()
    assert "profit: 200 points" in piped.stderr and not Path("-").exists()

    # A reader that goes away (`| head`): the command ends quietly, as a shell tool does.
    gone = subprocess.Popen(
        [str(SIMTRACK), "history", run.id, "profit", "--csv", "-"],
        env=clean_env(SIMTRACK_TARGET=cli.target),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert gone.stdout is not None
    gone.stdout.close()  # before anything is written: every write finds no reader
    _, stderr = gone.communicate(timeout=60)
    assert gone.returncode == 128 + signal.SIGPIPE
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr

    window = cli(
        "history", run.id, "profit", "--start-step", "50", "--end-step", "149", "--max-points", "10"
    ).stdout
    inside = profit[50:150]  # downsampling keeps the extremes of the range
    assert "profit: 10 points, steps 5" in window and "(downsampled from 100)" in window
    assert f"min {inside.min():g}, max {inside.max():g}" in window

    restocks = cli.json("events", run.id, "--filter", 'type = "restock"')
    assert [e["event"]["step"] for e in restocks] == ["0", "50", "100", "150"]
    latest = cli.json("events", run.id, "--filter", 'type = "restock"', "--order-by", "step desc")
    assert [e["event"]["step"] for e in latest] == ["150", "100", "50", "0"]
    first = cli.json("events", run.id, "--limit", "3")  # the first three sent, of 200
    assert [e["event"]["step"] for e in first] == ["0", "1", "2"]
    assert len(cli.json("metrics", run.id, "--limit", "1")) == 1
    assert "agent_action" in cli("events", run.id).stdout


@ON_SQLITE
def test_compare_shows_writes_and_draws_runs_side_by_side(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    """Two runs of one experiment and one of another, over different steps; the third has no
    stock. The CSV holds exactly the compared points; the table and the plot name the runs.
    """
    first = new_run(client)
    second = client.create_run(first.experiment_id)
    third = new_run(client)
    rng = np.random.default_rng(11)
    for run, steps in (
        (first, range(0, 3000)),
        (second, range(0, 3000)),
        (third, range(500, 4000)),
    ):
        with Worker(client.channel, run.id, spool_dir=tmp_path / run.id) as worker:
            worker.define_metric("profit", "USD")
            for step in steps:
                values = {"profit": float(rng.normal()) if step % 997 else math.nan}
                if run is not third:
                    values["stock"] = 100.0 - step % 50
                worker.log_metrics(step, values)
    ids = [first.id, second.id, third.id]
    asked = ("--metric", "profit", "--metric", "stock", "--max-points", "300")

    table = cli("compare", *ids, *asked).stdout
    labels = ("cli #1", "cli #2", "cli #1 (")  # one experiment name twice: ids tell them apart
    assert all(label in table for label in labels), table
    assert "no such metric" in table and "300/3,000" in table and "USD" in table

    png, points = tmp_path / "compare.png", tmp_path / "compare.csv"
    printed = cli("compare", *ids, *asked, "--png", str(png), "--csv", str(points)).stdout
    assert printed.splitlines() == [f"wrote {points}", f"wrote {png}"]
    found = client.compare_runs(ids, ["profit", "stock"], max_points=300)
    with points.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for series in found.series:
        mine = [r for r in rows if (r["run_id"], r["metric"]) == (series.run_id, series.metric)]
        assert [int(r["step"]) for r in mine] == series.steps.tolist()
        assert np.array([float(r["value"]) for r in mine]).tobytes() == series.values.tobytes()
        assert [float(r["timestamp"]) for r in mine] == series.timestamps.tolist()
        assert {r["unit"] for r in mine} <= {series.unit}
    assert {r["run_number"] for r in rows if r["run_id"] == second.id} == {"2"}
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(png).shape == (880, 1100, 4)  # two panels

    # One run is its own history, point for point.
    alone = cli(
        "compare", first.id, "--metric", "profit", "--max-points", "50", "--csv", str(points)
    )
    assert alone.returncode == 0
    history = client.metric_history(first.id, "profit", max_points=50)
    with points.open(newline="") as file:
        assert [int(r["step"]) for r in csv.DictReader(file)] == history.steps.tolist()
    piped = cli("compare", first.id, "--metric", "profit", "--max-points", "50", "--csv", "-")
    rows = list(csv.DictReader(io.StringIO(piped.stdout)))  # the CSV alone: nothing else printed
    assert [int(r["step"]) for r in rows] == history.steps.tolist() and not piped.stderr.strip()


@ON_SQLITE
@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
def test_runs_watch_follows_a_run_to_its_end(
    cli: Cli, client: Client, tmp_path: Path, fails: bool
) -> None:
    run = new_run(client)
    with ThreadPoolExecutor(1) as pool:
        watch = pool.submit(cli, "runs", "watch", run.id, check=False)
        with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
            with Worker(client.channel, run.id, spool_dir=tmp_path, flush_interval=0.05) as worker:
                for tick in range(1, 21):
                    worker.log_metrics(tick, {"profit": tick * 1.5})
                    worker.progress(tick, 20)
                    worker.flush(5)
                    time.sleep(0.05)  # a run that lasts: the watch starts while it moves
                    if fails and tick == 10:
                        raise RuntimeError("the simulation diverged")
        result = watch.result(timeout=60)

    assert "Traceback" not in result.stderr, result.stderr
    final = result.stdout.splitlines()[-1]
    if fails:
        assert result.returncode == 1
        assert final == f"run {run.id} failed: RuntimeError: the simulation diverged"
    else:
        assert result.returncode == 0, result.stderr
        assert final == f"run {run.id} completed"
        assert "tick 20/20" in result.stdout and "100%" in result.stdout
    assert "profit" in result.stdout


# The demo, and questions across runs


@ON_SQLITE
def test_the_demo_runs_a_scenario_end_to_end_and_is_judged(
    cli: Cli, client: Client, tmp_path: Path
) -> None:
    scenario = "tier1-seasonal-holiday"  # its own scenario: the leaderboard below is the demo's
    result = cli(
        "demo", "--scenario", scenario, "--ticks", "40", "--tick-seconds", "0",
        "--spool-dir", str(tmp_path),
    )  # fmt: skip
    run_id = result.stdout.split()[1]
    # Piped, each line whole (this one is longer than 80 columns).
    first = f"run {run_id} of {scenario!r} (40 ticks); cancel it with:"
    assert result.stdout.splitlines()[0] == first
    assert f"run {run_id}: completed" in result.stdout
    run = client.get_run(run_id)
    assert (run.status, run.current_tick, run.total_ticks) == (
        runs_pb2.RUN_STATUS_COMPLETED,
        40,
        40,
    )
    metrics = {m.name: m for m in client.list_metrics(run_id)}
    assert {"total_profit", "stockout_rate", "customer_rating", "price"} <= metrics.keys()
    assert all(m.count == 40 for m in metrics.values())
    assert any(e.event.type == "place_order" for e in client.list_events(run_id))
    verdicts = {v.kind: v for v in client.list_validations(run_id)}
    assert sorted(verdicts) == sorted(client.get_scenario(scenario).success_criteria.fields), (
        "one verdict per success criterion"
    )
    for kind, verdict in verdicts.items():
        shown = "passed" if verdict.passed else "failed"
        assert f"{kind}: {shown}" in result.stdout
    assert verdicts["total_profit"].score == metrics["total_profit"].last_value

    board = cli.json("leaderboard", scenario, "total_profit")
    assert [(e["rank"], e["run"]["id"]) for e in board] == [(1, run_id)]
    assert run_id in cli("leaderboard", scenario, "total_profit").stdout
    stats = cli.json("stats", "--filter", f'scenario_id = "{scenario}"')
    assert (stats["total"], stats["success_rate"]) == ("1", 1.0)
    printed = cli("stats", "--filter", f'scenario_id = "{scenario}"').stdout.splitlines()
    assert "runs: 1, success rate: 100.0%" in printed
    [durations] = [line for line in printed if line.startswith("durations of 1 ended runs:")]
    assert ", max " in durations  # one line, piped, though longer than 80 columns
    assert re.search(r": mean [\d.]+ (ms|s|min)\b", durations), durations  # not 0:00:03.029475
    listed = cli.json("validations", run_id, "--filter", 'kind = "total_profit"')
    assert [v["kind"] for v in listed] == ["total_profit"]


@ON_SQLITE
def test_a_demo_of_an_unknown_scenario_is_one_line(cli: Cli) -> None:
    result = cli("demo", "--scenario", "no-such-scenario", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("simtrack: NOT_FOUND:")


# Scenarios


@ON_SQLITE
def test_scenarios_are_listed_and_shown(cli: Cli, shared_server: Server) -> None:
    table = cli("scenarios", "list").stdout
    for path in SCENARIOS_DIR.glob("*.yaml"):
        assert path.stem in table
    hardest = cli.json("scenarios", "list", "--order-by", "difficulty_tier desc, name")
    tiers = [s.get("difficulty_tier", 0) for s in hardest]
    assert tiers == sorted(tiers, reverse=True) and tiers[0] == 3
    request = scenarios_pb2.GetScenarioRequest(id=SCENARIO)
    stored = shared_server.scenarios.GetScenario(request).scenario
    assert same(stored, cli.json("scenarios", "get", SCENARIO))


def test_scenarios_validate_accepts_the_catalogue_and_names_a_bad_field(
    simtrack_cli: SimtrackCli, tmp_path: Path
) -> None:
    files = sorted(SCENARIOS_DIR.glob("*.yaml"))
    good = simtrack_cli("scenarios", "validate", *map(str, files)).stdout.splitlines()
    assert [line.partition(" (")[0] for line in good] == [f"{path}: OK" for path in files]

    text = (SCENARIOS_DIR / f"{SCENARIO}.yaml").read_text()
    assert "\ndifficulty_tier: 0\n" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("\ndifficulty_tier: 0\n", "\ndifficulty_tier: 7\n"))
    result = simtrack_cli("scenarios", "validate", str(files[0]), str(broken), check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1:] == [
        f"{broken}: difficulty_tier: Input should be less than or equal to 3"
    ]
    assert "Traceback" not in result.stderr


# PostgreSQL


@ON_POSTGRESQL
def test_the_create_path_on_postgresql(server: Server, simtrack_cli: SimtrackCli) -> None:
    cli = Cli(server.address, simtrack_cli)
    agent_id = cli.created("agents", "create", unique("agent"), "--framework", "crewai")
    experiment_id = cli.created(
        "experiments", "create", "pg", "--agent", agent_id, "--scenario", SCENARIO
    )
    run_id = cli.created("runs", "create", "--experiment", experiment_id)

    run = server.runs.GetRun(runs_pb2.GetRunRequest(id=run_id)).run
    assert (run.experiment_id, run.run_number, run.scenario_id) == (experiment_id, 1, SCENARIO)
    assert same(run, cli.json("runs", "get", run_id))
    assert [r["id"] for r in cli.json("runs", "list")] == [run_id]
