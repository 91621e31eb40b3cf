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

import bisect
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
    """Costs per call, exact. A cost is a pure function of the usage, the route's prices and,
    through the pricing library, the minute (its prices change at dated, whole-minute instants).
    The library's own calculation takes ~70 µs, more than a cached decision, so its prices are
    turned into exact per-token coefficients once per route and minute (``_linear``), and
    recent costs are remembered."""

    def __init__(self, price_library: Any = None, memo_size: int = 4096) -> None:
        self._lib = price_library
        self._memo: dict[tuple, Cost] = {}
        self._memo_size = memo_size
        self._lines: dict[tuple[str, str, int], _Spans | None] = {}

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
            if at is None and 0 <= usage.cached_tokens <= usage.prompt_tokens:
                lin = self._linear(pricing_provider, model_id, usage.prompt_tokens)
                if lin is not None:
                    c0, c_in, c_cached, c_out = lin
                    total = c0 + usage.prompt_tokens * c_in + usage.cached_tokens * c_cached \
                        + usage.completion_tokens * c_out
                    return Cost(total, "computed", self._lib.name)
            try:
                calc = _library_total(pricing_provider, model_id, usage.prompt_tokens, usage.cached_tokens,
                                      usage.completion_tokens, at or datetime.now(timezone.utc))
                return Cost(calc, "computed", self._lib.name)
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

    def _linear(self, provider: str, model_id: str, prompt: int) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        """The library's price for this route, minute and prompt size as exact per-token
        coefficients: c0 + prompt·c_in + cached·c_cached + completion·c_out is then exactly what
        the library computes (~1 µs instead of ~70). Tiered prices (a rate that changes above a
        number of input tokens) are affine between two tier starts, so each span gets its own
        coefficients. Found by asking the library at points of the span and checked at another;
        None (ask the library every time) when anything does not fit."""
        minute = int(time.time() // 60)
        key = (provider, model_id, minute)
        spans = self._lines.get(key, _UNKNOWN)
        if spans is _UNKNOWN:
            try:
                spans = _Spans(_tier_starts(provider, model_id, datetime.fromtimestamp(minute * 60, timezone.utc)))
            except (LookupError, ValueError, ArithmeticError):
                spans = None
            if len(self._lines) > 1024:
                self._lines.clear()
            self._lines[key] = spans
        if spans is None:
            return None
        return spans.line(prompt, lambda p, c, o: _library_total(provider, model_id, p, c, o,
                                                                 datetime.fromtimestamp(minute * 60, timezone.utc)))


_UNKNOWN: Any = object()


class _Spans:
    """Per span of prompt sizes between tier starts, the affine coefficients (found lazily)."""

    __slots__ = ("starts", "lines")

    def __init__(self, starts: list[int]) -> None:
        self.starts = starts
        self.lines: dict[int, tuple[Decimal, Decimal, Decimal, Decimal] | None] = {}

    def line(self, prompt: int, f: Any) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        # a tier applies when the prompt is above its start: span i is (starts[i-1], starts[i]]
        i = bisect.bisect_left(self.starts, prompt)
        if i in self.lines:
            return self.lines[i]
        lo = self.starts[i - 1] + 1 if i > 0 else 0
        hi = self.starts[i] if i < len(self.starts) else lo + 10_000_000
        line = None
        try:
            if hi - lo >= 2:
                a = lo + 1
                base = f(a, 0, 0)
                c_in = f(a + 1, 0, 0) - base
                c_cached = f(a, 1, 0) - base
                c_out = f(a, 0, 1) - base
                c0 = base - a * c_in
                probe = (min(hi, lo + 123_457), min(hi, lo + 123_457) // 3, 6_791)
                if f(*probe) == c0 + probe[0] * c_in + probe[1] * c_cached + probe[2] * c_out:
                    line = (c0, c_in, c_cached, c_out)
        except (LookupError, ValueError, ArithmeticError):
            line = None
        self.lines[i] = line
        return line


def _library_total(provider: str, model_id: str, prompt: int, cached: int, completion: int, at: datetime) -> Decimal:
    from genai_prices import Usage as GUsage, calc_price
    calc = calc_price(GUsage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion), model_id,
                      provider_id=provider, genai_request_timestamp=at)
    return Decimal(calc.total_price)


def _tier_starts(provider: str, model_id: str, at: datetime) -> list[int]:
    """The prompt sizes above which a tier of the library's price for the route starts, sorted.
    (Price variants apply only to a request context, which we never pass.)"""
    from genai_prices import types
    from genai_prices.data_snapshot import get_snapshot
    _prov, model = get_snapshot().find_provider_model(model_id, None, provider, None)
    starts = set()
    for v in vars(model.get_prices(at)).values():
        if isinstance(v, types.TieredPrices):
            starts.update(int(t.start) for t in v.tiers)
    return sorted(starts)
