"""The demo's market model: deterministic per seed, stock and cash accounted, limits kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simtrack.client.demo import METRICS, DemoMarket, MarketSetup

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_scenario_simulates_within_its_limits(path: Path) -> None:
    scenario = load(path)
    setup = MarketSetup.of(scenario)
    market = DemoMarket(setup)
    ordered = arrived = 0
    for tick in range(int(scenario["duration"])):
        before = market.inventory
        result = market.step(tick)
        assert set(result.metrics) == set(METRICS)
        got = sum(e[1]["units"] for e in result.events if e[0] == "restock_arrived")
        ordered += sum(e[1]["units"] for e in result.events if e[0] == "place_order")
        arrived += got
        assert result.metrics["inventory"] == before + got - result.metrics["units_sold"] >= 0
        assert setup.min_price <= result.metrics["price"] <= setup.max_price
        assert 0.0 <= result.metrics["stockout_rate"] <= 1.0
        assert 1.0 <= result.metrics["customer_rating"] <= 5.0
    assert arrived <= ordered, "nothing arrives that was not ordered"


def test_the_same_seed_gives_the_same_run_and_the_tutorial_is_won() -> None:
    scenario = load(SCENARIOS[0])
    first, second = DemoMarket(MarketSetup.of(scenario)), DemoMarket(MarketSetup.of(scenario))
    runs = [[m.step(t).metrics for t in range(60)] for m in (first, second)]
    assert runs[0] == runs[1]
    final = runs[0][-1]
    criteria = scenario["success_criteria"]
    assert final["total_profit"] >= criteria["total_profit"]["value"]
    assert final["stockout_rate"] <= criteria["stockout_rate"]["value"]
    assert final["customer_rating"] >= criteria["customer_rating"]["value"]


def test_missing_settings_fall_back_to_defaults() -> None:
    setup = MarketSetup.of({"params": {}, "market_conditions": {}})
    assert (setup.initial_price, setup.base_demand, setup.lead_time) == (25.0, 20.0, 7)
    market = DemoMarket(setup)
    assert market.step(0).metrics["units_sold"] > 0
