"""Queries over the read-only scenario catalogue (it lives in memory, loaded at start-up)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import holds
from simtrack.server.core.listing import Cursor, Listing, Page
from simtrack.server.scenario_catalogue import ScenarioCatalogue, ScenarioSpec

LISTING = Listing(
    "scenarios",
    {"difficulty_tier": int, "tags": str},
)
# Scenarios have no creation time: they page by id alone.
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class ScenarioQueries:
    def __init__(self, catalogue: ScenarioCatalogue) -> None:
        self.catalogue = catalogue

    def get(self, scenario_id: str) -> ScenarioSpec:
        if not scenario_id:
            raise InvalidArgument.of("id", "is required")
        spec = self.catalogue.get(scenario_id)
        if spec is None:
            raise NotFound("scenario", scenario_id, "id")
        return spec

    def list(self, page_size: int, page_token: str, filter_text: str) -> Page[ScenarioSpec]:
        page = LISTING.request(page_size, page_token, filter_text)
        specs = self.catalogue.list()
        if page.after is not None:
            specs = [s for s in specs if s.id > page.after.id]
        specs = [s for s in specs if all(holds(t, _fields(s)) for t in page.conditions)]
        items = specs[: page.size]
        more = len(specs) > page.size
        return Page(items, page.next_token(Cursor(_NO_TIME, items[-1].id)) if more else "")


def _fields(spec: ScenarioSpec) -> Callable[[str], tuple[Any, ...]]:
    """A scenario's values of a filter field: its tags, or its tier."""
    return lambda field: tuple(spec.tags) if field == "tags" else (spec.difficulty_tier,)
