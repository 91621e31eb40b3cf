"""The catalog: providers, models, the routes between them, and the fields a
policy can observe.

A *route* is one model served by one provider: it is what a policy ranks (the
reference calls it a candidate). :meth:`Catalog.candidates` produces every
route as the plain mapping the language observes, built once per catalog and
shared by every request.

Every number here is either written in a catalog file or resolved from a
named source (the pricing library); where neither knows a value it stays
absent, and the language's conservative default applies (a missing price is
+inf and fails a ceiling).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..lang.fields import DEFAULT_TIER_ORDER, FieldDecl, Schema

WIRES = ("openai", "anthropic", "gemini")
CAPABILITY_FLAGS = ("supports_tools", "supports_json_mode", "supports_vision", "supports_seed",
                    "supports_streaming")


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    wire: str                     # openai | anthropic | gemini
    base_url: str
    key_env: str | None = None    # environment variable holding the caller's key
    tier: str = "fallback"
    has_tee: bool = False
    no_log: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    pricing_id: str | None = None  # the pricing library's provider id
    description: str = ""

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "wire": self.wire, "base_url": self.base_url, "key_env": self.key_env,
                "tier": self.tier, "has_tee": self.has_tee, "no_log": self.no_log,
                "pricing_id": self.pricing_id}


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; None where no source knows the value."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    source: str | None = None     # "catalog", "genai-prices <version>", ...

    def public(self) -> dict[str, Any]:
        return {"price_in": self.input, "price_out": self.output, "price_cached_in": self.cached_input,
                "price_source": self.source}


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    family: str
    model_id: str                 # the id the provider's API expects
    price: Price = Price()
    context: int | None = None    # route-specific context window, if it differs

    @property
    def key(self) -> str:
        return f"{self.provider}|{self.family}"


@dataclass(frozen=True, slots=True)
class Model:
    family: str
    vendor: str | None
    context: int | None
    context_source: str | None
    capabilities: Mapping[str, bool]
    fields: Mapping[str, Any]
    routes: tuple[Route, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    policy: Any                   # a sigma-pol/v2 Policy term (admitted when the catalog loads)
    description: str = ""


class Catalog:
    """An immutable catalog. Build it with :func:`unhardcoded.catalog.load_catalog`."""

    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, Model],
                 fields: list[FieldDecl], tier_order: tuple[str, ...] = DEFAULT_TIER_ORDER,
                 profiles: Mapping[str, Profile] | None = None, envelope: Any = None,
                 source: str = "<memory>") -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        self.fields = list(fields)
        self.tier_order = tuple(tier_order)
        self.profiles = dict(profiles or {})
        self.envelope = envelope
        self.source = source
        self.schema = Schema(self.fields, self.tier_order)
        self.routes: dict[str, Route] = {}
        for m in self.models.values():
            for r in m.routes:
                self.routes[r.key] = r
        self._candidates = tuple(self._build_candidates())
        self._digest: str | None = None

    # ---- the view the language observes --------------------------------
    def _build_candidates(self) -> list[dict[str, Any]]:
        out = []
        declared = [f for f in self.fields]
        for family in sorted(self.models):
            m = self.models[family]
            for r in m.routes:
                p = self.providers[r.provider]
                caps: dict[str, Any] = {k: v for k, v in m.capabilities.items()}
                ctx = r.context if r.context is not None else m.context
                if ctx is not None:
                    caps["context"] = ctx
                cand: dict[str, Any] = {
                    "provider_id": p.id,
                    "model_family": family,
                    "served_model_id": r.model_id,
                    "tier": p.tier,
                    "capabilities": caps,
                    "has_tee": p.has_tee,
                    "no_log": p.no_log,
                    "api_kind": p.wire,
                    "base_url": p.base_url,
                }
                if r.price.input is not None:
                    cand["price_in"] = r.price.input
                if r.price.output is not None:
                    cand["price_out"] = r.price.output
                for f in declared:
                    if f.name in m.fields:
                        cand[f.name] = m.fields[f.name]
                out.append(cand)
        return out

    def candidates(self) -> tuple[dict[str, Any], ...]:
        """Every route as a candidate mapping; shared, never mutate them."""
        return self._candidates

    def route(self, provider: str, family: str) -> Route | None:
        return self.routes.get(f"{provider}|{family}")

    # ---- identity ---------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything a decision over this catalog depended on, as plain data."""
        return {
            "tier_order": list(self.tier_order),
            "fields": [f.to_dict() for f in self.fields],
            "providers": {k: v.public() for k, v in sorted(self.providers.items())},
            "candidates": [_jsonable(c) for c in self._candidates],
        }

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`snapshot` (content address)."""
        if self._digest is None:
            self._digest = hashlib.sha256(canonical_json(self.snapshot()).encode("utf-8")).hexdigest()
        return self._digest

    def __len__(self) -> int:
        return len(self._candidates)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def canonical_json(v: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the form we hash."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
