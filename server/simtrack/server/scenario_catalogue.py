"""The scenario catalogue: benchmark environment definitions loaded from ``scenarios/*.yaml``.

Each YAML file defines one scenario; the file stem is the scenario id (lowercase letters, digits,
``-`` and ``_``, starting with a letter or digit). A file is a mapping with these fields:

================== ========================================================================
field              meaning
================== ========================================================================
name               human-readable name (required, non-blank)
description        free text (optional, default ``""``)
difficulty_tier    0 (tutorial) to 3 (hardest)
duration           length of the scenario in ticks (positive integer)
tags               list of non-blank, distinct strings
params             mapping: simulation parameters (free-form)
success_criteria   mapping: metric name -> criterion (see below)
market_conditions  mapping: starting market state (free-form)
external_events    list of events injected during the run (see below)
agent_constraints  mapping: limits the agents must respect (free-form)
================== ========================================================================

``id`` and ``content_hash`` are not read from the file: the id comes from the file name and the
hash is computed by the loader (SHA-256 hex digest of
``json.dumps(content, sort_keys=True, separators=(",", ":"))`` of the parsed file), so a run can
record exactly which version of a scenario it was created from.

Success criteria
----------------
``success_criteria`` maps a metric name (as logged by the run, e.g. ``total_profit``) to a
criterion mapping::

    success_criteria:
      total_profit:   {op: ">=", value: 10000}
      stockout_rate:  {op: "<=", value: 0.05, description: "share of out-of-stock ticks"}
      cash_balance:   {op: ">",  value: 0, stat: min}

* ``op`` -- one of ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=`` (required).
* ``value`` -- the finite number the observed value is compared with (required).
* ``stat`` -- which statistic of the run's metric is compared (optional): ``last`` (the latest
  value, the default), ``min``, ``max`` or ``count`` (number of points logged).
* ``description`` -- free text for reports (optional).

A criterion passes when ``observed <op> value`` holds (``SuccessCriterion.evaluate`` does exactly
that; ``==`` and ``!=`` compare exactly). A run meets the scenario's success criteria when every
criterion passes; a metric the run never logged fails its criterion. An empty mapping means the
scenario has no automatic success check.

External events
---------------
Each entry of ``external_events`` is a mapping with ``tick`` (integer, ``0 <= tick < duration``),
``type`` (non-blank string, e.g. ``supplier_disruption``), and optionally ``description`` (text)
and ``params`` (mapping, free-form, interpreted by the simulation).

Validation
----------
Unknown fields are rejected everywhere the shape is fixed (top level, criteria, events) so typos
are reported instead of silently ignored; integers must be real integers (``true`` or ``"3"`` are
not accepted as numbers). The whole file must be plain JSON data: string keys, no dates, no
NaN/Infinity, and no duplicate keys. :func:`load_catalogue` never raises for a bad file: each
problem is recorded as a :class:`ScenarioProblem` naming the file and the field path (for example
``external_events.2.tick``), logged as a warning, and the other files still load.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import logging
import math
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "ExternalEvent",
    "ScenarioCatalogue",
    "ScenarioProblem",
    "ScenarioSpec",
    "SuccessCriterion",
    "canonical_json",
    "content_hash",
    "default_scenarios_dir",
    "load_catalogue",
    "load_file",
]

logger = logging.getLogger(__name__)

SCENARIO_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]*$"
"""What a scenario id (the file stem) may look like."""

SCENARIO_SUFFIXES: Final = frozenset({".yaml", ".yml"})

ComparisonOp = Literal[">=", ">", "<=", "<", "==", "!="]
Statistic = Literal["last", "min", "max", "count"]

_OPERATORS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}

_NON_BLANK: Final = r"\S"
NonBlankStr = Annotated[str, Field(min_length=1, pattern=_NON_BLANK)]
MetricName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][\w.:/-]*$")]


class SuccessCriterion(BaseModel):
    """One success criterion: the run's metric statistic compared with a threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    op: ComparisonOp
    value: float = Field(allow_inf_nan=False)
    stat: Statistic = "last"
    description: str = ""

    def evaluate(self, observed: float) -> bool:
        """Whether ``observed <op> value`` holds (NaN never passes)."""
        if math.isnan(observed):
            return False
        return _OPERATORS[self.op](observed, self.value)


class ExternalEvent(BaseModel):
    """An event the simulation injects at a given tick."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    tick: int = Field(ge=0)
    type: NonBlankStr
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class ScenarioSpec(BaseModel):
    """A validated scenario definition (one file of the catalogue)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(pattern=SCENARIO_ID_PATTERN, max_length=200)
    name: NonBlankStr
    description: str = ""
    difficulty_tier: int = Field(ge=0, le=3)
    duration: int = Field(gt=0)
    tags: list[NonBlankStr]
    params: dict[str, Any]
    success_criteria: dict[MetricName, SuccessCriterion]
    market_conditions: dict[str, Any]
    external_events: list[ExternalEvent]
    agent_constraints: dict[str, Any]
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("tags")
    @classmethod
    def _tags_distinct(cls, tags: list[str]) -> list[str]:
        seen: set[str] = set()
        for tag in tags:
            if tag in seen:
                raise PydanticCustomError(
                    "duplicate_tag", "tag {tag!r} appears more than once", {"tag": tag}
                )
            seen.add(tag)
        return tags

    @model_validator(mode="after")
    def _events_within_duration(self) -> ScenarioSpec:
        errors: list[InitErrorDetails] = []
        for index, event in enumerate(self.external_events):
            if event.tick >= self.duration:
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "tick_out_of_range",
                            "tick {tick} is outside the scenario: it must be below the "
                            "duration ({duration} ticks)",
                            {"tick": event.tick, "duration": self.duration},
                        ),
                        loc=("external_events", index, "tick"),
                        input=event.tick,
                    )
                )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def as_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able data (criteria and events as nested dicts)."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class ScenarioProblem:
    """Why (part of) a scenario file could not be loaded."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


@dataclass
class ScenarioCatalogue:
    """The loaded scenarios by id, and the problems found while loading."""

    scenarios: dict[str, ScenarioSpec] = field(default_factory=dict)
    problems: builtins.list[ScenarioProblem] = field(default_factory=list)

    def get(self, id: str) -> ScenarioSpec | None:
        """The scenario with this id, or None."""
        return self.scenarios.get(id)

    def list(self) -> builtins.list[ScenarioSpec]:
        """All scenarios, sorted by id."""
        return [self.scenarios[key] for key in sorted(self.scenarios)]

    def __len__(self) -> int:
        return len(self.scenarios)

    def __contains__(self, id: object) -> bool:
        return id in self.scenarios


def canonical_json(data: Any) -> str:
    """The canonical JSON text the content hash is computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def content_hash(data: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of a scenario file's parsed content."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


def default_scenarios_dir() -> Path:
    """The scenario folder: the checkout's ``scenarios/``, else the copy shipped in the wheel."""
    here = Path(__file__).resolve()
    checkout = here.parents[3]
    source = checkout / "scenarios"
    if source.is_dir() and (checkout / "pyproject.toml").is_file():
        return source
    return here.parent / "scenarios_builtin"


def load_catalogue(directory: Path) -> ScenarioCatalogue:
    """Load every ``*.yaml`` / ``*.yml`` file of ``directory``; bad files become problems.

    Files whose name starts with a dot (editor and lock files) are ignored. This never raises for
    bad content; a missing directory gives an empty catalogue with one problem.
    """
    catalogue = ScenarioCatalogue()
    directory = Path(directory)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        _record(
            catalogue, ScenarioProblem(str(directory), "<directory>", f"scenario folder {what}")
        )
        return catalogue

    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as error:
        _record(catalogue, ScenarioProblem(str(directory), "<directory>", f"cannot list: {error}"))
        return catalogue

    sources: dict[str, str] = {}
    for path in entries:
        if path.name.startswith(".") or path.suffix not in SCENARIO_SUFFIXES or not path.is_file():
            continue
        spec, problems = load_file(path)
        for problem in problems:
            _record(catalogue, problem)
        if spec is None:
            continue
        if spec.id in sources:
            _record(
                catalogue,
                ScenarioProblem(
                    path.name,
                    "id",
                    f"scenario id {spec.id!r} is already defined by {sources[spec.id]}",
                ),
            )
            continue
        sources[spec.id] = path.name
        catalogue.scenarios[spec.id] = spec
    return catalogue


def _record(catalogue: ScenarioCatalogue, problem: ScenarioProblem) -> None:
    logger.warning("scenario problem: %s", problem)
    catalogue.problems.append(problem)


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_message(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "invalid YAML"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
        return what
    return str(error) or type(error).__name__


def load_file(path: Path) -> tuple[ScenarioSpec | None, list[ScenarioProblem]]:
    """One scenario file, validated: the spec, or None and every problem found (never raises).

    ``simtrack scenarios validate`` checks files with it before they reach a server's folder.
    """
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, [ScenarioProblem(name, "<file>", f"cannot read the file: {error}")]
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.YAMLError as error:
        return None, [ScenarioProblem(name, "<yaml>", _yaml_message(error))]

    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {_yaml_kind(data)}"
        message = f"the file must be a mapping of scenario fields, got {kind}"
        return None, [ScenarioProblem(name, "<root>", message)]

    problems = [ScenarioProblem(name, where, message) for where, message in _non_json(data, ())]
    for reserved, source in (("id", "the file name"), ("content_hash", "the loader")):
        if reserved in data:
            problems.append(
                ScenarioProblem(
                    name, reserved, f"must not be set in the file: it is taken from {source}"
                )
            )
    if problems:
        return None, problems

    payload = {**data, "id": path.stem, "content_hash": content_hash(data)}
    try:
        spec = ScenarioSpec.model_validate(payload)
    except ValidationError as error:
        return None, [_problem_from_error(name, detail) for detail in error.errors()]
    return spec, []


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _non_json(value: object, loc: tuple[str | int, ...]) -> Iterable[tuple[str, str]]:
    """(field path, message) for each part of the parsed YAML that is not plain JSON data."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield _join(loc), f"keys must be strings, got {key!r}; quote the key"
                continue
            yield from _non_json(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_json(item, (*loc, index))
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield _join(loc), f"{value!r} is not allowed: numbers must be finite"
    elif value is None or isinstance(value, str | int | bool):
        return
    else:
        yield (
            _join(loc),
            f"a {type(value).__name__} is not plain JSON data; quote it to make it a string",
        )


def _join(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


_FIELDS_BY_PREFIX: Final[dict[tuple[str, ...], type[BaseModel]]] = {
    (): ScenarioSpec,
    ("success_criteria", "*"): SuccessCriterion,
    ("external_events", "*"): ExternalEvent,
}
_COMPUTED_FIELDS: Final = frozenset({"id", "content_hash"})


def _problem_from_error(file: str, detail: Mapping[str, Any]) -> ScenarioProblem:
    loc: tuple[str | int, ...] = tuple(detail.get("loc", ()))
    message = str(detail.get("msg", "invalid value"))
    if detail.get("type") == "extra_forbidden" and loc:
        model = _FIELDS_BY_PREFIX.get(tuple("*" if i else str(p) for i, p in enumerate(loc[:-1])))
        if model is not None:
            known = sorted(set(model.model_fields) - _COMPUTED_FIELDS)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            message = f"unknown field ({hint})"
    elif detail.get("type") == "string_pattern_mismatch" and detail.get("ctx") == {
        "pattern": _NON_BLANK
    }:
        message = "must not be blank"
    elif loc == ("id",):
        message = (
            f"the file name stem {detail.get('input')!r} is not a valid scenario id "
            "(lowercase letters, digits, '-' and '_', starting with a letter or digit)"
        )
    return ScenarioProblem(file, _join(loc), message)
