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


# ---- the library's prices, computed fast and exactly ------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from unhardcoded.catalog import load_catalog  # noqa: E402
from unhardcoded.catalog.prices import GenaiPrices  # noqa: E402
from unhardcoded.costs import _library_total  # noqa: E402

_CATALOG = load_catalog()
_PRICED = sorted({(_CATALOG.providers[r.provider].pricing_id, r.model_id) for r in _CATALOG.routes.values()
                  if _CATALOG.providers[r.provider].pricing_id})
_LIB = CostCalculator(GenaiPrices(), memo_size=1)


def test_the_shipped_catalog_has_library_priced_routes_with_and_without_tiers() -> None:
    from unhardcoded.costs import _tier_starts
    tiered = [m for p, m in _PRICED if _has(p, m) and _tier_starts(p, m, datetime.now(timezone.utc))]
    flat = [m for p, m in _PRICED if _has(p, m) and not _tier_starts(p, m, datetime.now(timezone.utc))]
    assert tiered and flat  # both kinds are exercised below


def _has(provider: str, model_id: str) -> bool:
    try:
        _library_total(provider, model_id, 1, 0, 1, datetime.now(timezone.utc))
        return True
    except LookupError:
        return False


@settings(max_examples=300, deadline=None)
@given(route=st.sampled_from(_PRICED),
       prompt=st.one_of(st.integers(0, 2_000_000), st.integers(199_990, 200_010), st.integers(271_990, 272_010),
                        st.integers(0, 3)),
       cached_share=st.floats(0, 1), completion=st.integers(0, 200_000))
def test_a_library_price_equals_the_library_exactly(route, prompt, cached_share, completion) -> None:
    """Every route of the shipped catalog the library prices: our cost is the library's to the
    last digit, on either side of every tier start."""
    provider, model_id = route
    cached = int(prompt * cached_share)
    c = _LIB.cost(Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached),
                  Price(input=1.0, output=1.0), provider, model_id)
    try:
        want = _library_total(provider, model_id, prompt, cached, completion, datetime.now(timezone.utc))
    except LookupError:  # the library does not know it: catalog prices apply
        assert c.source == "catalog"
        return
    assert c.usd == want and c.source.startswith("genai-prices")


def test_library_prices_are_computed_without_asking_the_library_per_call(monkeypatch) -> None:
    """After a route's coefficients are found, new usages cost no library call (the speed the
    fast path exists for), tiered routes included."""
    from unhardcoded import costs as mod
    calc = CostCalculator(GenaiPrices(), memo_size=1)
    routes = [(p, m) for p, m in _PRICED if _has(p, m)]
    for p, m in routes:  # find every route's coefficients for small and large prompts
        calc.cost(Usage(prompt_tokens=10, completion_tokens=1), Price(), p, m)
        calc.cost(Usage(prompt_tokens=900_000, completion_tokens=1), Price(), p, m)
    calls = []
    real = mod._library_total
    monkeypatch.setattr(mod, "_library_total", lambda *a: calls.append(a) or real(*a))
    for i, (p, m) in enumerate(routes):
        for prompt in (11 + i, 800_000 + i):
            c = calc.cost(Usage(prompt_tokens=prompt, completion_tokens=7, cached_tokens=3), Price(), p, m)
            assert c.usd == real(p, m, prompt, 3, 7, datetime.now(timezone.utc))
    assert calls == []
