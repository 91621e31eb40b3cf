"""Per-call costs: exact decimals, remembered per usage and minute, never a stale price."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from unhardcoded import costs
from unhardcoded.catalog.model import Price
from unhardcoded.costs import CostCalculator, Usage


class Library:
    """A pricing library whose price changes with the minute (as a dated price change would)."""

    name = "test-prices"

    def __init__(self) -> None:
        self.calls = 0


def test_catalog_prices_exact_and_remembered(monkeypatch) -> None:
    calc = CostCalculator(None)
    price = Price(input=3.0, output=15.0, cached_input=0.3, source="catalog")
    u = Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    c = calc.cost(u, price, None, "m")
    assert c.usd == Decimal("0.00492") and c.basis == "computed" and c.source == "catalog"
    assert calc.cost(u, price, None, "m") is c
    assert calc.cost(Usage(prompt_tokens=1000, completion_tokens=201, cached_tokens=400), price, None, "m").usd \
        == Decimal("0.004935")
    assert calc.cost(u, Price(input=None, output=15.0), None, "m").usd is None  # unknown stays unknown


def test_a_library_price_is_taken_again_in_the_next_minute(monkeypatch) -> None:
    seen: list[datetime | None] = []
    calc = CostCalculator(Library())

    def fake(usage, price, provider, model_id, at):
        seen.append(at)
        return costs.Cost(Decimal(len(seen)), "computed", "test-prices")

    monkeypatch.setattr(calc, "_cost", fake)
    now = [1_800_000_000.0]
    monkeypatch.setattr(costs.time, "time", lambda: now[0])
    u = Usage(prompt_tokens=10, completion_tokens=1)
    p = Price(input=1.0, output=1.0)
    assert calc.cost(u, p, "openai", "gpt").usd == 1
    now[0] += 30
    assert calc.cost(u, p, "openai", "gpt").usd == 1  # same minute: remembered
    now[0] += 31
    assert calc.cost(u, p, "openai", "gpt").usd == 2  # the next minute: asked again
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert calc.cost(u, p, "openai", "gpt", at=at).usd == 3 and seen[-1] == at  # an explicit time: never memoised
    assert calc.cost(u, p, "openai", "gpt", at=at).usd == 4


def test_a_reported_cost_wins() -> None:
    calc = CostCalculator(None)
    c = calc.cost(Usage(prompt_tokens=1, reported_cost=Decimal("0.5")), Price(input=1.0, output=1.0), None, "m")
    assert (c.usd, c.basis) == (Decimal("0.5"), "reported")


@pytest.mark.parametrize("size", [1, 3])
def test_the_memo_stays_bounded(size) -> None:
    calc = CostCalculator(None, memo_size=size)
    p = Price(input=1.0, output=1.0)
    for i in range(10):
        calc.cost(Usage(prompt_tokens=i), p, None, "m")
    assert len(calc._memo) <= size
