"""Published list prices and context windows from the ``genai-prices`` library.

We do not maintain a price table of our own: ``genai-prices`` (Pydantic's
maintained, dated, per-provider price data) is made for this. A route whose
catalog entry gives no price asks it; where it does not know the model, the
price stays absent.

Ranking uses the base (lowest-tier) list price in force at the moment the
catalog is loaded; exact per-call cost (tiers, cache reads) is computed per
call in :mod:`unhardcoded.traces.cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from .model import Price


@dataclass(frozen=True, slots=True)
class Listing:
    price: Price
    context: int | None


class PriceSource(Protocol):
    name: str

    def lookup(self, provider: str, model_id: str, at: datetime) -> Listing | None: ...


def _base(v: Any) -> float | None:
    if v is None:
        return None
    base = getattr(v, "base", v)
    if isinstance(base, Decimal):
        return float(base)
    if isinstance(base, (int, float)):
        return float(base)
    return None


class GenaiPrices:
    """Looks routes up in genai-prices' bundled snapshot (no network)."""

    def __init__(self) -> None:
        import genai_prices  # noqa: F401  (the host's dependency)
        from genai_prices import data
        from importlib.metadata import version

        self._providers = {p.id: p for p in data.providers}
        self.name = f"genai-prices {version('genai-prices')}"

    def find(self, provider: str, model_id: str) -> Any:
        p = self._providers.get(provider)
        return None if p is None else p.find_model(model_id)

    def lookup(self, provider: str, model_id: str, at: datetime | None = None) -> Listing | None:
        info = self.find(provider, model_id)
        if info is None:
            return None
        prices = info.get_prices(at or datetime.now(timezone.utc))
        price = Price(input=_base(prices.input_mtok), output=_base(prices.output_mtok),
                      cached_input=_base(prices.cache_read_mtok), source=self.name)
        return Listing(price, info.context_window)


def default_price_source() -> PriceSource | None:
    try:
        return GenaiPrices()
    except ImportError:  # pragma: no cover - genai-prices is a declared dependency
        return None
