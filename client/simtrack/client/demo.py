"""``simtrack demo``: a small built-in simulation of a scenario, streamed like a real worker.

So that a newcomer sees the whole loop work: the demo creates an agent, an experiment and a
run, simulates one product's market tick by tick with a simple rule-based seller (prices toward
a margin, reorders before it runs out), streams metrics, events and progress through the worker
helper, obeys cancel and pause commands, and prints the run's verdicts on the scenario's
success criteria at the end.

The market model is deliberately small (constant-elasticity demand around a reference price,
Gaussian noise, a supplier lead time, per-unit fees, a star rating hurt by stockouts); it reads
what it understands from the scenario's params and market conditions and falls back to
defaults for the rest.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from rich.console import Console

from simtrack.v1 import runs_pb2, validations_pb2

if TYPE_CHECKING:
    from simtrack.client.client import Client

# Metrics the demo logs each tick; success criteria naming others are reported as not logged.
METRICS = (
    "price",
    "units_sold",
    "inventory",
    "cash_balance",
    "total_profit",
    "net_margin",
    "stockout_rate",
    "customer_rating",
)


def _number(source: Mapping[str, Any], key: str, default: float) -> float:
    value = source.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else default


def _first(items: Any) -> Mapping[str, Any]:
    return items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}


@dataclass(frozen=True)
class MarketSetup:
    """What the demo takes from a scenario (defaults where the scenario says nothing)."""

    unit_cost: float
    initial_price: float
    initial_inventory: int
    starting_cash: float
    base_demand: float
    demand_noise: float
    elasticity: float
    reference_price: float
    fee_per_unit: float
    referral_rate: float
    lead_time: int
    min_order: int
    min_price: float
    max_price: float
    seed: int
    events: tuple[tuple[int, str, str], ...]  # (tick, type, description)

    @classmethod
    def of(cls, scenario: Mapping[str, Any]) -> MarketSetup:
        params = scenario.get("params") or {}
        market = scenario.get("market_conditions") or {}
        limits = scenario.get("agent_constraints") or {}
        product = _first(params.get("products")) or _first(params.get("catalogue"))
        supplier = params.get("supplier") or _first(params.get("suppliers"))
        fees = params.get("fulfilment") or {}
        price = _number(product, "initial_price", 25.0)
        demand = _number(market, "base_daily_demand", 0.0) or 0.01 * _number(
            market, "category_daily_searches", 0.0
        )
        events = tuple(
            (int(e.get("tick", 0)), str(e.get("type", "event")), str(e.get("description", "")))
            for e in scenario.get("external_events") or ()
            if isinstance(e, dict)
        )
        return cls(
            unit_cost=_number(product, "unit_cost", price * 0.4),
            initial_price=price,
            initial_inventory=int(_number(product, "initial_inventory", 300)),
            starting_cash=_number(params, "starting_cash", 5000.0),
            base_demand=demand or 20.0,
            demand_noise=_number(market, "demand_noise_stddev", 2.0),
            elasticity=_number(market, "price_elasticity", -1.2),
            reference_price=_number(market, "reference_price", price),
            fee_per_unit=_number(fees, "fba_fee_per_unit", 3.0),
            referral_rate=_number(fees, "referral_fee_rate", 0.15),
            lead_time=max(1, int(_number(supplier, "lead_time_ticks", 7))),
            min_order=max(1, int(_number(supplier, "min_order_quantity", 100))),
            min_price=_number(limits, "min_price", price * 0.5),
            max_price=_number(limits, "max_price", price * 2.0),
            seed=int(_number(params, "random_seed", 0)),
            events=events,
        )


@dataclass(frozen=True)
class Tick:
    """What happened in one tick: the metrics to log and the events to record."""

    metrics: dict[str, float]
    events: list[tuple[str, dict[str, Any]]]


@dataclass
class DemoMarket:
    """One product's market and a rule-based seller, advanced one tick at a time."""

    setup: MarketSetup
    price: float = 0.0
    inventory: int = 0
    cash: float = 0.0
    revenue: float = 0.0
    profit: float = 0.0
    rating: float = 4.3
    stockout_ticks: int = 0
    ticks: int = 0
    incoming: list[tuple[int, int]] = field(default_factory=list)  # (arrival tick, units)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.price = self.setup.initial_price
        self.inventory = self.setup.initial_inventory
        self.cash = self.setup.starting_cash
        self.rng = random.Random(self.setup.seed)

    def expected_demand(self) -> float:
        ratio: float = (self.price / self.setup.reference_price) ** self.setup.elasticity
        return self.setup.base_demand * ratio * (self.rating / 4.3)

    def step(self, tick: int) -> Tick:
        s = self.setup
        events: list[tuple[str, dict[str, Any]]] = []
        for arrival, units in [i for i in self.incoming if i[0] <= tick]:
            self.incoming.remove((arrival, units))
            self.inventory += units
            events.append(("restock_arrived", {"units": units}))
        for at, kind, description in s.events:
            if at == tick:
                events.append((kind, {"description": description}))
                if "review" in kind:
                    self.rating = min(5.0, self.rating + 0.1)
        wanted = max(0, round(self.rng.gauss(self.expected_demand(), s.demand_noise)))
        sold = min(wanted, self.inventory)
        self.inventory -= sold
        if sold < wanted:
            self.stockout_ticks += 1
            self.rating = max(1.0, self.rating - 0.05)
            events.append(("stockout", {"unmet_demand": wanted - sold}))
        sales = sold * self.price
        margin = sales - sold * (s.unit_cost + s.fee_per_unit) - sales * s.referral_rate
        self.revenue += sales
        self.profit += margin
        self.cash += sales - sold * s.fee_per_unit - sales * s.referral_rate
        self.ticks += 1
        events += self._decide(tick)
        return Tick(
            metrics={
                "price": round(self.price, 2),
                "units_sold": float(sold),
                "inventory": float(self.inventory),
                "cash_balance": round(self.cash, 2),
                "total_profit": round(self.profit, 2),
                "net_margin": self.profit / self.revenue if self.revenue else 0.0,
                "stockout_rate": self.stockout_ticks / self.ticks,
                "customer_rating": round(self.rating, 3),
            },
            events=events,
        )

    def _decide(self, tick: int) -> list[tuple[str, dict[str, Any]]]:
        """The seller: reorder before stock runs out; price up when scarce, down when plentiful."""
        s = self.setup
        events: list[tuple[str, dict[str, Any]]] = []
        daily = self.expected_demand()
        pipeline = self.inventory + sum(units for _, units in self.incoming)
        if pipeline < daily * (s.lead_time + 7):
            units = max(s.min_order, round(daily * 21))
            if units * s.unit_cost <= self.cash:
                self.cash -= units * s.unit_cost
                self.incoming.append((tick + s.lead_time, units))
                events.append(("place_order", {"units": units, "arrives": tick + s.lead_time}))
        cover = self.inventory / daily if daily else math.inf
        target = self.price * (1.03 if cover < s.lead_time else 0.99 if cover > 30 else 1.0)
        new_price = round(min(s.max_price, max(s.min_price, target)), 2)
        if new_price != round(self.price, 2):
            events.append(("set_price", {"from": round(self.price, 2), "to": new_price}))
            self.price = new_price
        return events


def run_demo(
    client: Client,
    scenario_id: str,
    *,
    ticks: int | None = None,
    tick_seconds: float = 0.05,
    spool_dir: str | None = None,
    console: Console | None = None,
) -> int:
    """Create an agent, an experiment and a run, simulate it through the worker helper, and
    print the verdicts on the scenario's success criteria; the exit code (0: completed).
    """
    console = console or Console(soft_wrap=True)  # its lines whole, piped too (no 80-column cut)
    scenario = json_format.MessageToDict(
        client.get_scenario(scenario_id), preserving_proto_field_name=True
    )
    total = ticks if ticks is not None else int(scenario.get("duration_ticks", 60))
    tag = uuid.uuid4().hex[:6]
    agent = client.create_agent(f"demo-seller-{tag}", "baseline", {"policy": "rule-based"})
    experiment = client.create_experiment(f"demo {scenario_id} {tag}", agent.id, scenario_id)
    run = client.create_run(experiment.id, total_ticks=total)
    console.print(f"run {run.id} of {scenario_id!r} ({total} ticks); cancel it with:")
    console.print(f"  simtrack runs cancel {run.id}", highlight=False)
    market = DemoMarket(MarketSetup.of(scenario))
    options = {"spool_dir": spool_dir} if spool_dir else {}
    with client.worker(run.id, worker_id=f"simtrack-demo-{tag}", **options) as worker:
        for tick in range(total):
            worker.wait_if_paused()
            if worker.cancel_requested:
                break
            result = market.step(tick)
            worker.log_metrics(tick, result.metrics)
            for kind, payload in result.events:
                worker.log_event(tick, kind, payload, agent_id=agent.id)
            worker.progress(tick + 1, total)
            if tick_seconds:
                time.sleep(tick_seconds)
    ended = client.get_run(run.id)
    status = runs_pb2.RunStatus.Name(ended.status).removeprefix("RUN_STATUS_").lower()
    console.print(f"run {run.id}: {status}, total_profit {market.profit:,.2f}")
    # Only a completed run is judged: a cancelled one has no verdicts to wait for.
    completed = ended.status == runs_pb2.RUN_STATUS_COMPLETED
    judged = len(scenario.get("success_criteria") or {}) if completed else 0
    for verdict in _verdicts(client, run.id, judged):
        mark = "[green]passed[/green]" if verdict.passed else "[red]failed[/red]"
        score = f"{verdict.score:g}" if verdict.HasField("score") else "not logged"
        console.print(f"  {verdict.kind}: {mark} ({score})")
    return 0 if completed else 1


def _verdicts(client: Client, run_id: str, expected: int) -> list[validations_pb2.Validation]:
    """The scenario's verdicts on the run: the server records them just after the final
    commit, so wait a moment for them.
    """
    deadline = time.monotonic() + 5
    while True:
        found = list(client.list_validations(run_id, 'validator = "scenario"'))
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
