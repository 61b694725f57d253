"""Queries over the read-only scenario catalogue (it lives in memory, loaded at start-up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simtrack.errors import InvalidArgument, NotFound
from simtrack.server.core.filters import holds, ordered_text, parse_int
from simtrack.server.core.listing import Cursor, Listing, Page
from simtrack.server.core.ordering import place
from simtrack.server.scenario_catalogue import ScenarioCatalogue, ScenarioSpec

LISTING = Listing(
    "scenarios",
    {"name": ordered_text, "difficulty_tier": int, "duration_ticks": parse_int, "tags": str},
    position=(str,),  # scenarios have no creation time: by id
)


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

    def list(
        self, page_size: int, page_token: str, filter_text: str, order_by: str = ""
    ) -> Page[ScenarioSpec]:
        page = LISTING.request(page_size, page_token, filter_text, order_by=order_by)

        def keys(spec: ScenarioSpec) -> tuple[Any, ...]:
            return tuple(_fields(spec)(key.field)[0] for key in page.order)

        def where(spec: ScenarioSpec) -> tuple[Any, ...]:
            return place(keys(spec), page.order, (spec.id,))

        specs = [
            s for s in self.catalogue.list() if all(holds(t, _fields(s)) for t in page.conditions)
        ]
        if page.after is not None:
            after = place(page.after.keys, page.order, page.after.position)
            specs = [s for s in specs if where(s) > after]
        specs.sort(key=where)
        items = specs[: page.size]
        if len(specs) <= page.size:
            return Page(items, "")
        return Page(items, page.next_token(Cursor((items[-1].id,), keys(items[-1]))))


def _fields(spec: ScenarioSpec) -> Callable[[str], tuple[Any, ...]]:
    """A scenario's values of a filter field: its tags, or its one value of another."""
    values = {
        "name": spec.name,
        "difficulty_tier": spec.difficulty_tier,
        "duration_ticks": spec.duration,
    }
    return lambda field: tuple(spec.tags) if field == "tags" else (values[field],)
