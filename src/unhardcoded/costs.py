"""What a call cost, in exact decimal USD, and on what basis.

In order of preference:

* ``reported``: the provider said what it charged (OpenRouter's ``usage.cost``);
* ``computed``: tokens the provider reported times prices. Where the pricing
  library knows the route (``genai-prices``), its calculation is used, so
  price tiers, cache reads and the prices in force on the day are as the
  provider bills them; otherwise the catalog's list prices (cache reads at the
  cached-input price when the catalog has one, else at the full input price,
  which never under-reports). Reasoning tokens are output tokens and are
  billed as output, as every provider bills them;
* ``None``: no price is known. The cost is then absent, never zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from .catalog.model import Price

MILLION = Decimal(1_000_000)


def usd_text(d: Decimal | None) -> str | None:
    """A cost as a plain decimal string without exponent or trailing zeros ("0.000029", "3")."""
    if d is None:
        return None
    return format(d.normalize(), "f")


def _count(v: Any) -> int:
    """A token count as reported: a non-negative number, else 0."""
    if type(v) is int:
        return v if v >= 0 else 0
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    reported_cost: Decimal | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> "Usage":
        if type(usage) is not dict and not isinstance(usage, Mapping):
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        cdetails = usage.get("completion_tokens_details") or {}
        cost = usage.get("cost")
        reported = Decimal(str(cost)) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0 else None
        return cls(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                   _count(details.get("cached_tokens") if type(details) is dict else 0),
                   _count(cdetails.get("reasoning_tokens") if type(cdetails) is dict else 0), reported)

    def to_dict(self) -> dict[str, int]:
        return {"tokens_in": self.prompt_tokens, "tokens_out": self.completion_tokens,
                "tokens_cached": self.cached_tokens, "tokens_reasoning": self.reasoning_tokens}


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    basis: str | None          # "reported" | "computed" | None
    source: str | None = None  # which prices: "genai-prices 0.2.3", "catalog"

    def to_dict(self) -> dict[str, Any]:
        return {"cost_usd": usd_text(self.usd), "cost_basis": self.basis,
                "cost_source": self.source}


class CostCalculator:
    """Costs per call. A cost is a pure function of the usage, the route's prices and, through
    the pricing library, the minute (its prices change at dated, whole-minute instants), so
    recent ones are remembered: a route answering the same usage again costs a dict look-up
    (the library's own calculation takes ~70 µs)."""

    def __init__(self, price_library: Any = None, memo_size: int = 4096) -> None:
        self._lib = price_library
        self._memo: dict[tuple, Cost] = {}
        self._memo_size = memo_size

    def cost(self, usage: Usage, price: Price, pricing_provider: str | None, model_id: str,
             at: datetime | None = None) -> Cost:
        if usage.reported_cost is not None:
            return Cost(usage.reported_cost, "reported", "provider")
        if at is not None:
            return self._cost(usage, price, pricing_provider, model_id, at)
        key = (usage, price, pricing_provider, model_id, int(time.time() // 60))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._cost(usage, price, pricing_provider, model_id, None)
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def _cost(self, usage: Usage, price: Price, pricing_provider: str | None, model_id: str,
              at: datetime | None) -> Cost:
        if self._lib is not None and pricing_provider:
            try:
                from genai_prices import Usage as GUsage, calc_price
                calc = calc_price(GUsage(input_tokens=usage.prompt_tokens, cache_read_tokens=usage.cached_tokens,
                                         output_tokens=usage.completion_tokens), model_id,
                                  provider_id=pricing_provider, genai_request_timestamp=at or datetime.now(timezone.utc))
                return Cost(Decimal(calc.total_price), "computed", self._lib.name)
            except (LookupError, ValueError):
                pass
        if price.input is None or price.output is None:
            return Cost(None, None, None)
        p_in = Decimal(str(price.input))
        p_cached = Decimal(str(price.cached_input)) if price.cached_input is not None else p_in
        p_out = Decimal(str(price.output))
        uncached = max(0, usage.prompt_tokens - usage.cached_tokens)
        total = (uncached * p_in + usage.cached_tokens * p_cached + usage.completion_tokens * p_out) / MILLION
        return Cost(total, "computed", price.source or "catalog")
