"""The observation vocabulary: how a policy sees a candidate.

A term never holds a candidate; it observes named fields of it (``cmp``, ``is``,
``field``). What two hosts must agree on is therefore not how they store a
candidate but this table: each field's sort, where its value comes from, and
its default when absent. Defaults are conservative: a missing price is +inf
and fails any ceiling.

A candidate here is a plain mapping in the shape the reference uses
(``provider_id``, ``model_family``, ``tier``, ``capabilities.context``,
``price_in``...). A host adds its own fields (benchmarks, capabilities...) by
declaring them in a :class:`Schema`; a term that names an undeclared field is
refused at admission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

Getter = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]

DEFAULT_TIER_ORDER: tuple[str, ...] = ("fallback", "marketplace", "partner")


def _m(obj: Any, key: str) -> Any:
    """``obj[key]`` when obj is a mapping, else None (JSON's empty ``[]`` reads as empty)."""
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, Mapping):
        return obj.get(key)
    return None


def _ema(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    ema = _m(_m(ctx, "state"), "ema")
    if ema is None:
        return None
    return _m(ema, f"{cand.get('provider_id')}|{cand.get('model_family')}")


def _price(name: str) -> Getter:
    # The catalog price wins; the runtime estimate fills a missing one.
    def get(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
        v = cand.get(name)
        if v is not None:
            return v
        return _m(_ema(cand, ctx), name)
    get.first_key = name  # type: ignore[attr-defined]
    get.reads = frozenset((name, "provider_id", "model_family"))  # type: ignore[attr-defined]  (the estimate is per route)

    get.many = lambda cands, ctx: [get(c, ctx) if (v := c.get(name)) is None else v  # type: ignore[attr-defined]
                                   for c in cands]
    return get


def _own(name: str) -> Getter:
    def get(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
        return cand.get(name)
    get.first_key = name  # type: ignore[attr-defined]
    get.reads = frozenset((name,))  # type: ignore[attr-defined]
    get.many = lambda cands, ctx: [c.get(name) for c in cands]  # type: ignore[attr-defined]
    return get


def _context(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    return _m(cand.get("capabilities"), "context")


def _context_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
    return [caps.get("context") if type(caps := c.get("capabilities")) is dict else _m(caps, "context")
            for c in cands]


def _credits(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    return _m(_m(_m(ctx, "state"), "credits"), cand.get("provider_id"))


def _by_provider(table: Any, cands: Sequence[Mapping[str, Any]]) -> list:
    """``_m(table, provider_id)`` for each candidate: the table is looked up once, not per candidate."""
    if type(table) is dict:
        get = table.get
        return [get(c.get("provider_id")) for c in cands]
    return [_m(table, c.get("provider_id")) for c in cands]


def _credits_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
    return _by_provider(_m(_m(ctx, "state"), "credits"), cands)


def _breaker_open(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    breakers = _m(_m(ctx, "state"), "breakers")
    if breakers is None:
        return None
    return _m(breakers, cand.get("provider_id")) is True


def _breaker_open_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
    breakers = _m(_m(ctx, "state"), "breakers")
    if breakers is None:
        return [None] * len(cands)
    return [v is True for v in _by_provider(breakers, cands)]


def _disabled(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    disabled = _m(_m(ctx, "state"), "disabled")
    if disabled is None:
        return None
    return _m(disabled, cand.get("provider_id")) is not None


def _disabled_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
    disabled = _m(_m(ctx, "state"), "disabled")
    if disabled is None:
        return [None] * len(cands)
    return [v is not None for v in _by_provider(disabled, cands)]


# A getter may carry ``many(cands, ctx)``: its readings of a list of candidates at once, equal to
# ``[get(c, ctx) for c in cands]`` whenever that returns (what is per context is looked up once).
_context.many = _context_many  # type: ignore[attr-defined]
_credits.many = _credits_many  # type: ignore[attr-defined]
_breaker_open.many = _breaker_open_many  # type: ignore[attr-defined]
_disabled.many = _disabled_many  # type: ignore[attr-defined]
# and ``reads``: the candidate's keys its reading depends on (besides the context); a getter
# without it may read any (see Schema.observer)
_context.reads = frozenset(("capabilities",))  # type: ignore[attr-defined]
_credits.reads = _breaker_open.reads = _disabled.reads = frozenset(("provider_id",))  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class FieldDecl:
    """One observable: its sort (``Num`` or ``Bool``), default, source and meaning."""

    name: str
    sort: str
    default: Any
    description: str = ""
    source: str = "catalog"
    core: bool = False
    group: str = "host"
    get: Getter | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sort not in ("Num", "Bool"):
            raise ValueError(f"field {self.name!r}: sort must be Num or Bool")
        if self.sort == "Num":
            if isinstance(self.default, bool) or not isinstance(self.default, (int, float)) or math.isnan(self.default):
                raise ValueError(f"field {self.name!r}: a Num field needs a numeric default")
        elif not isinstance(self.default, bool):
            raise ValueError(f"field {self.name!r}: a Bool field needs a boolean default")

    @property
    def getter(self) -> Getter:
        return self.get if self.get is not None else _own(self.name)

    def to_dict(self) -> dict[str, Any]:
        default = self.default
        if isinstance(default, float) and math.isinf(default):
            default = "+inf" if default > 0 else "-inf"
        return {"name": self.name, "sort": self.sort, "default": default, "source": self.source,
                "core": self.core, "group": self.group, "description": self.description}


CORE_FIELDS: tuple[FieldDecl, ...] = (
    FieldDecl("price_in", "Num", math.inf, "USD per million input tokens", "catalog|state", True, "core", _price("price_in")),
    FieldDecl("price_out", "Num", math.inf, "USD per million output tokens", "catalog|state", True, "core", _price("price_out")),
    FieldDecl("latency_ms", "Num", math.inf, "observed latency of the route in milliseconds", "observed", True, "core"),
    FieldDecl("tok_s", "Num", 0, "observed output tokens per second", "observed", True, "core"),
    FieldDecl("success_rate", "Num", 1, "observed share of attempts that succeeded (0..1)", "observed", True, "core"),
    FieldDecl("credits", "Num", 0, "provider credits known to the host", "state", True, "core", _credits),
    FieldDecl("context", "Num", 0, "context window in tokens", "catalog", True, "core", _context),
    FieldDecl("has_tee", "Bool", False, "served inside a trusted execution environment", "catalog", True, "core"),
    FieldDecl("no_log", "Bool", False, "the provider does not log prompts", "catalog", True, "core"),
    FieldDecl("breaker_open", "Bool", False, "the provider's circuit breaker is open", "state", True, "core", _breaker_open),
    FieldDecl("disabled", "Bool", False, "the provider is disabled for a while", "state", True, "core", _disabled),
)

CORE_FIELD_NAMES = frozenset(f.name for f in CORE_FIELDS)


class Schema:
    """Core vocabulary + host-declared fields + the tier order."""

    __slots__ = ("decls", "tier_order", "tier_rank", "_key", "_observers")

    def __init__(self, extensions: Iterable[FieldDecl] = (), tier_order: Iterable[str] = DEFAULT_TIER_ORDER) -> None:
        decls: dict[str, FieldDecl] = {f.name: f for f in CORE_FIELDS}
        for decl in extensions:
            if decl.name in CORE_FIELD_NAMES:
                raise ValueError(f"field {decl.name!r} is a core field and cannot be redeclared")
            if decl.name in decls:
                raise ValueError(f"field {decl.name!r} is declared twice")
            decls[decl.name] = decl
        order = tuple(tier_order)
        if not order or len(set(order)) != len(order) or not all(isinstance(t, str) and t for t in order):
            raise ValueError("tier order must be a non-empty list of distinct names")
        self.decls = decls
        self.tier_order = order
        self.tier_rank = {t: i + 1 for i, t in enumerate(order)}
        self._key = (tuple((d.name, d.sort, repr(d.default)) for d in decls.values()), order)
        self._observers: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], Any]] = {}

    @property
    def key(self) -> tuple:
        """Hashable description of what admission and evaluation depend on."""
        return self._key

    def decl(self, name: str) -> FieldDecl | None:
        return self.decls.get(name)

    def observer(self, name: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
        """The field's reading of a candidate in a context, its default filled in.

        ``observe.reads`` is the set of the candidate's keys the reading depends on, or None
        when that is not known (a host's own getter that does not say).

        When the field's value, if present, is one key of the candidate (``first_key``), the
        observer says so: the interpreter reads that key inline and calls the observer only
        when it is absent (a hot-path shortcut with the same result). ``observe.many(cands,
        ctx)`` reads a list of candidates at once, with the same result as one call each.
        One observer per field, made the first time it is asked for (it depends on the
        declaration alone).
        """
        hit = self._observers.get(name)
        if hit is not None:
            return hit
        observe = self._observer(name)
        self._observers[name] = observe
        return observe

    def _observer(self, name: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
        d = self.decls[name]
        get, default = d.getter, d.default

        def observe(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            v = get(cand, ctx)
            return default if v is None else v
        observe.first_key = getattr(get, "first_key", None)  # type: ignore[attr-defined]
        observe.reads = getattr(get, "reads", None)  # type: ignore[attr-defined]  (None: any key)
        # (the vector form refers to the getter, never to ``observe``: no cycle, so a compiled
        # policy is freed by reference counting as soon as a cache lets it go)
        many, key = getattr(get, "many", None), observe.first_key
        if key is not None:  # a present value is that key's: one pass, the getter only where it is absent
            def observe_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
                return [v if (v := c.get(key)) is not None else (default if (w := get(c, ctx)) is None else w)
                        for c in cands]
        elif many is None:
            def observe_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
                return [default if (v := get(c, ctx)) is None else v for c in cands]
        else:
            def observe_many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
                return [default if v is None else v for v in many(cands, ctx)]
        observe.many = observe_many  # type: ignore[attr-defined]
        return observe

    def observe(self, name: str, cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
        return self.observer(name)(cand, ctx)

    def describe(self) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self.decls.values()]

    @classmethod
    def from_declarations(cls, fields: Iterable[Mapping[str, Any]], tier_order: Iterable[str] | None = None) -> "Schema":
        """Build from plain records ``{name, sort, default, description?}``."""
        def default(v: Any) -> Any:
            return {"+inf": math.inf, "-inf": -math.inf}.get(v, v) if isinstance(v, str) else v
        decls = [FieldDecl(name=f["name"], sort=f["sort"], default=default(f["default"]),
                           description=f.get("description", ""), source=f.get("source", "catalog"),
                           group=f.get("group", "host"))
                 for f in fields if not f.get("core")]
        return cls(decls, tier_order or DEFAULT_TIER_ORDER)


_DEFAULT = Schema()


def default_schema() -> Schema:
    """The core vocabulary alone, with the default tier order."""
    return _DEFAULT
