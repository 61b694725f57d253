"""The scenario catalogue: the shipped scenario files and the loader's validation."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pydantic
import pytest
import yaml

from simtrack.server.scenario_catalogue import (
    ScenarioCatalogue,
    ScenarioProblem,
    ScenarioSpec,
    SuccessCriterion,
    default_scenarios_dir,
    load_catalogue,
)

REPO_SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

GOOD = """\
name: Good scenario
description: A minimal valid scenario.
difficulty_tier: 1
duration: 100
tags: [test, pricing]
params: {starting_cash: 1000.0}
success_criteria:
  total_profit: {op: ">=", value: 500}
  cash_balance: {op: ">", value: 0, stat: min}
market_conditions: {base_daily_demand: 10}
external_events:
  - {tick: 0, type: market_open}
  - tick: 99
    type: demand_spike
    params: {multiplier: 2.0}
agent_constraints: {max_agents: 1}
"""


def _good_data() -> dict[str, object]:
    data = yaml.safe_load(GOOD)
    assert isinstance(data, dict)
    return data


def _write(directory: Path, name: str, data: object) -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _problems_of(catalogue: ScenarioCatalogue, file: str) -> list[ScenarioProblem]:
    return [problem for problem in catalogue.problems if problem.file == file]


# --- the shipped catalogue -------------------------------------------------------------------


def test_default_dir_is_the_checkout_scenarios_folder() -> None:
    assert default_scenarios_dir() == REPO_SCENARIOS


def test_shipped_scenarios_load_without_problems() -> None:
    catalogue = load_catalogue(default_scenarios_dir())

    assert catalogue.problems == []
    files = sorted(p for p in REPO_SCENARIOS.iterdir() if p.suffix in {".yaml", ".yml"})
    assert len(files) >= 5
    assert sorted(catalogue.scenarios) == sorted(p.stem for p in files)


def test_shipped_scenarios_cover_every_tier() -> None:
    catalogue = load_catalogue(default_scenarios_dir())

    assert {spec.difficulty_tier for spec in catalogue.list()} == {0, 1, 2, 3}


@pytest.mark.parametrize("path", sorted(REPO_SCENARIOS.glob("*.y*ml")), ids=lambda p: p.stem)
def test_shipped_scenario_is_complete(path: Path) -> None:
    spec = load_catalogue(REPO_SCENARIOS).get(path.stem)

    assert spec is not None
    assert spec.id == path.stem
    assert spec.name.strip() and spec.description.strip()
    assert spec.tags and spec.params and spec.market_conditions and spec.agent_constraints
    assert spec.success_criteria and spec.external_events
    assert all(0 <= event.tick < spec.duration for event in spec.external_events)
    # Plain JSON data all the way down (it goes into google.protobuf.Struct).
    as_dict = spec.as_dict()
    assert json.loads(json.dumps(as_dict, allow_nan=False)) == as_dict
    assert as_dict["success_criteria"]
    for criterion in as_dict["success_criteria"].values():
        assert set(criterion) == {"op", "value", "stat", "description"}
    for event in as_dict["external_events"]:
        assert isinstance(event["tick"], int) and isinstance(event["type"], str)


def test_list_is_sorted_by_id_and_get_finds_by_id() -> None:
    catalogue = load_catalogue(REPO_SCENARIOS)

    ids = [spec.id for spec in catalogue.list()]
    assert ids == sorted(ids)
    assert catalogue.get(ids[0]) is catalogue.list()[0]
    assert catalogue.get("no-such-scenario") is None


# --- content hash ----------------------------------------------------------------------------


def test_content_hash_is_sha256_of_canonical_json_of_the_file() -> None:
    path = REPO_SCENARIOS / "tier0-tutorial.yaml"
    spec = load_catalogue(REPO_SCENARIOS).get("tier0-tutorial")
    assert spec is not None

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert spec.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_content_hash_is_stable(tmp_path: Path) -> None:
    _write(tmp_path, "good.yaml", GOOD)
    first = load_catalogue(tmp_path).get("good")
    second = load_catalogue(tmp_path).get("good")

    assert first is not None and second is not None
    assert first.content_hash == second.content_hash
    assert len(first.content_hash) == 64

    # Formatting, key order and comments are not content.
    data = _good_data()
    reordered = dict(reversed(list(data.items())))
    _write(tmp_path, "good.yaml", "# a comment\n" + yaml.safe_dump(reordered, sort_keys=False))
    third = load_catalogue(tmp_path).get("good")
    assert third is not None and third.content_hash == first.content_hash


def test_content_hash_changes_when_content_changes(tmp_path: Path) -> None:
    _write(tmp_path, "good.yaml", GOOD)
    before = load_catalogue(tmp_path).get("good")

    data = _good_data()
    data["duration"] = 101
    _write(tmp_path, "good.yaml", data)
    after = load_catalogue(tmp_path).get("good")

    assert before is not None and after is not None
    assert after.duration == 101
    assert after.content_hash != before.content_hash


def test_same_content_under_another_name_has_the_same_hash(tmp_path: Path) -> None:
    shutil.copy(REPO_SCENARIOS / "tier0-tutorial.yaml", tmp_path / "my-copy.yaml")

    copy = load_catalogue(tmp_path).get("my-copy")
    original = load_catalogue(REPO_SCENARIOS).get("tier0-tutorial")
    assert copy is not None and original is not None
    assert copy.content_hash == original.content_hash


# --- bad files -------------------------------------------------------------------------------


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "good.yaml", GOOD)
    _write(tmp_path, "syntax-error.yaml", GOOD + "broken: [unclosed, list\nmore: 1\n")
    tier7 = _good_data()
    tier7["difficulty_tier"] = 7
    _write(tmp_path, "tier7.yaml", tier7)
    unknown = _good_data()
    unknown["sucess_criteria"] = unknown.pop("success_criteria")
    _write(tmp_path, "unknown-field.yml", unknown)
    late = _good_data()
    late["external_events"] = [{"tick": 5, "type": "ok"}, {"tick": 100, "type": "too_late"}]
    _write(tmp_path, "late_event.yaml", late)
    _write(tmp_path, "a-list.yaml", "- name: one\n- name: two\n")
    _write(tmp_path, "notes.txt", "not a scenario")
    return tmp_path


def test_good_file_loads_despite_bad_neighbours(mixed_dir: Path) -> None:
    catalogue = load_catalogue(mixed_dir)

    assert list(catalogue.scenarios) == ["good"]
    spec = catalogue.get("good")
    assert spec is not None
    assert spec.name == "Good scenario"
    assert spec.success_criteria["cash_balance"] == SuccessCriterion(op=">", value=0, stat="min")
    assert [event.tick for event in spec.external_events] == [0, 99]
    files = {problem.file for problem in catalogue.problems}
    assert files == {
        "syntax-error.yaml",
        "tier7.yaml",
        "unknown-field.yml",
        "late_event.yaml",
        "a-list.yaml",
    }


def test_yaml_syntax_error_is_reported_with_line(mixed_dir: Path) -> None:
    [problem] = _problems_of(load_catalogue(mixed_dir), "syntax-error.yaml")

    assert problem.field == "<yaml>"
    assert "line " in problem.message


def test_tier_out_of_range(mixed_dir: Path) -> None:
    [problem] = _problems_of(load_catalogue(mixed_dir), "tier7.yaml")

    assert problem.field == "difficulty_tier"
    assert str(problem) == ("tier7.yaml: difficulty_tier: Input should be less than or equal to 3")


def test_unknown_field_is_reported_with_a_suggestion(mixed_dir: Path) -> None:
    problems = _problems_of(load_catalogue(mixed_dir), "unknown-field.yml")

    by_field = {problem.field: problem.message for problem in problems}
    assert set(by_field) == {"sucess_criteria", "success_criteria"}
    assert "unknown field" in by_field["sucess_criteria"]
    assert "'success_criteria'" in by_field["sucess_criteria"]
    assert by_field["success_criteria"] == "Field required"


def test_event_tick_beyond_duration(mixed_dir: Path) -> None:
    [problem] = _problems_of(load_catalogue(mixed_dir), "late_event.yaml")

    assert problem.field == "external_events.1.tick"
    assert "100" in problem.message and "duration" in problem.message


def test_top_level_list_is_not_a_scenario(mixed_dir: Path) -> None:
    [problem] = _problems_of(load_catalogue(mixed_dir), "a-list.yaml")

    assert problem.field == "<root>"
    assert "mapping" in problem.message and "list" in problem.message


def test_problems_are_logged(mixed_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="simtrack.server.scenario_catalogue"):
        catalogue = load_catalogue(mixed_dir)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    for problem in catalogue.problems:
        assert str(problem) in logged


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    catalogue = load_catalogue(missing)

    assert catalogue.scenarios == {}
    assert catalogue.list() == []
    [problem] = catalogue.problems
    assert problem.file == str(missing)
    assert "does not exist" in problem.message


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda d: d.update(difficulty_tier="2"), "difficulty_tier", "integer"),
        (lambda d: d.update(difficulty_tier=True), "difficulty_tier", "integer"),
        (lambda d: d.update(duration=0), "duration", "greater than 0"),
        (lambda d: d.update(name="  "), "name", "blank"),
        (lambda d: d.update(tags=["a", "a"]), "tags", "more than once"),
        (lambda d: d.update(tags=["a", ""]), "tags.1", "at least 1 character"),
        (lambda d: d.update(params=[1, 2]), "params", "dictionary"),
        (lambda d: d.pop("duration"), "duration", "required"),
        (
            lambda d: d.update(success_criteria={"total_profit": {"op": "=>", "value": 1}}),
            "success_criteria.total_profit.op",
            "'>='",
        ),
        (
            lambda d: d.update(success_criteria={"total_profit": {"op": ">=", "valu": 1}}),
            "success_criteria.total_profit.valu",
            "'value'",
        ),
        (
            lambda d: d.update(success_criteria={"total_profit": {"op": ">=", "value": "1k"}}),
            "success_criteria.total_profit.value",
            "number",
        ),
        (
            lambda d: d.update(success_criteria={"profit": {"op": ">=", "value": 1, "stat": "p9"}}),
            "success_criteria.profit.stat",
            "'last'",
        ),
        (
            lambda d: d.update(external_events=[{"tick": -1, "type": "x"}]),
            "external_events.0.tick",
            "greater than or equal to 0",
        ),
        (
            lambda d: d.update(external_events=[{"tick": 1, "type": "x", "parms": {}}]),
            "external_events.0.parms",
            "'params'",
        ),
        (lambda d: d.update(external_events=[{"tick": 1}]), "external_events.0.type", "required"),
        (lambda d: d.update(id="other"), "id", "file name"),
        (lambda d: d.update(content_hash="0" * 64), "content_hash", "loader"),
    ],
)
def test_field_problems(tmp_path: Path, mutate: object, field: str, fragment: str) -> None:
    data = _good_data()
    assert callable(mutate)
    mutate(data)
    _write(tmp_path, "bad.yaml", data)

    catalogue = load_catalogue(tmp_path)

    assert catalogue.scenarios == {}
    assert {problem.file for problem in catalogue.problems} == {"bad.yaml"}
    by_field = {problem.field: problem.message for problem in catalogue.problems}
    assert field in by_field, by_field
    assert fragment in by_field[field]
    # A misspelt key also leaves its correct spelling missing; nothing else is reported.
    assert set(by_field) - {field} <= {field.rsplit(".", 1)[0] + ".value"}


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        (GOOD + "duration: 200\n", "<yaml>", "duplicate key 'duration'"),
        (GOOD.replace("duration: 100", "duration: 100\nreleased: 2024-11-29"), "released", "date"),
        (
            GOOD.replace("{starting_cash: 1000.0}", "{starting_cash: .nan}"),
            "params.starting_cash",
            "finite",
        ),
        (GOOD.replace("{max_agents: 1}", "{1: one}"), "agent_constraints", "strings"),
        ("", "<root>", "empty"),
        ("just a string\n", "<root>", "string"),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    _write(tmp_path, "bad.yaml", text)

    [problem] = load_catalogue(tmp_path).problems

    assert problem.field == field
    assert fragment in problem.message


def test_bad_file_stem_is_reported_as_id(tmp_path: Path) -> None:
    _write(tmp_path, "Bad Name.yaml", GOOD)

    [problem] = load_catalogue(tmp_path).problems

    assert (problem.file, problem.field) == ("Bad Name.yaml", "id")
    assert "'Bad Name'" in problem.message


def test_same_id_twice_keeps_the_first(tmp_path: Path) -> None:
    _write(tmp_path, "dup.yaml", GOOD)
    _write(tmp_path, "dup.yml", GOOD.replace("Good scenario", "Second"))

    catalogue = load_catalogue(tmp_path)

    spec = catalogue.get("dup")
    assert spec is not None and spec.name == "Good scenario"
    [problem] = catalogue.problems
    assert (problem.file, problem.field) == ("dup.yml", "id")


def test_hidden_and_non_yaml_files_are_ignored(tmp_path: Path) -> None:
    _write(tmp_path, ".#good.yaml", "not: [valid")
    _write(tmp_path, "readme.md", "# scenarios")
    _write(tmp_path, "good.yaml", GOOD)

    catalogue = load_catalogue(tmp_path)

    assert catalogue.problems == []
    assert list(catalogue.scenarios) == ["good"]


# --- the model -------------------------------------------------------------------------------


def test_spec_is_frozen_and_rejects_direct_bad_construction() -> None:
    spec = load_catalogue(REPO_SCENARIOS).get("tier0-tutorial")
    assert spec is not None
    with pytest.raises(pydantic.ValidationError):
        spec.duration = 5  # type: ignore[misc]

    data = {**spec.as_dict(), "duration": 10}
    with pytest.raises(pydantic.ValidationError) as raised:
        ScenarioSpec.model_validate(data)
    assert {".".join(map(str, e["loc"])) for e in raised.value.errors()} == {
        "external_events.0.tick"
    }
    assert ScenarioSpec.model_validate(spec.as_dict()) == spec


@pytest.mark.parametrize(
    ("op", "observed", "expected"),
    [
        (">=", 10.0, True),
        (">=", 9.99, False),
        (">", 10.0, False),
        ("<=", 10.0, True),
        ("<", 10.0, False),
        ("==", 10.0, True),
        ("!=", 10.0, False),
        (">=", float("nan"), False),
    ],
)
def test_criterion_evaluate(op: str, observed: float, expected: bool) -> None:
    criterion = SuccessCriterion.model_validate({"op": op, "value": 10})

    assert criterion.evaluate(observed) is expected


def test_problem_str() -> None:
    problem = ScenarioProblem("tier2-supply-shock.yaml", "difficulty_tier", "too high")

    assert str(problem) == "tier2-supply-shock.yaml: difficulty_tier: too high"
