"""Policy templates: a product intent and a few bounded options, compiled to a sigma-pol/v2 term.

The language is deliberately low level; most callers want one of a handful of
intents ("the cheapest healthy route of this model", "the cheapest of the
smartest few"). A template turns such an intent into an ordinary policy term.
Nothing here is special at run time: the term goes through the same admission,
normal form and identity as a hand-written one, and its trace looks the same.

The four templates and their options are the reference host's (same ids, same
option names, same shapes of term), with one adaptation: where the reference
names its own providers in a fixed precedence, the default precedence here is
the catalog's, best tier first (see :func:`tier_groups`). ``default`` and
``agent`` compile to the same terms as the shipped profiles of those names
(a test holds them equal), so a caller can start from a template and arrive at
what ``profile:default`` runs.

Pure: no I/O; the only input besides the options is the provider list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TemplateError", "TEMPLATE_IDS", "describe", "build", "tier_groups"]

TEMPLATE_IDS = ("cheapest-family", "smart-value", "agent", "default")

# the rails every product template shares (USD per million tokens; a missing
# price observes as +inf, so an unpriced route fails a ceiling: never unbounded spend)
INPUT_SHARE = 0.8
RELIABILITY_FLOOR = 0.8
MAX_PRICE_IN = 5.0
MAX_PRICE_OUT = 25.0
TOP_N = 5
COST_WEIGHT = 0.75
INTELLIGENCE_WEIGHT = 0.25

AGENT = {"top_n": 10, "top_k": 8, "min_context": 128_000, "reliability_floor": 0.8,
         "max_price_in": 15.0, "max_price_out": 30.0}
AGENT_WEIGHTS = (0.6, 0.15, 0.25)  # intelligence, cheap input, reliability

_COMMON = ("expected_input_share", "reliability_floor", "max_price_in", "max_price_out")
_OPTIONS = {
    "cheapest-family": frozenset(_COMMON + ("family", "provider_strategy", "provider_order")),
    "smart-value": frozenset(_COMMON + ("top_n",)),
    "agent": frozenset(),
    "default": frozenset(),
}

# FailPlans, as (error kind, action) overrides on "next_candidate". The order is
# the shipped profiles' (the normal form sorts nothing here: override chains keep their order).
_BALANCED = (
    ("auth_error", {"action": "disable_provider"}),
    ("network_error", {"action": "retry_same", "attempts": 2, "backoff_ms": [200, 600],
                       "then_action": "next_candidate"}),
    ("rate_limit", {"action": "next_candidate", "open_breaker_ms": 30000}),
    ("server_error", {"action": "retry_same", "attempts": 1, "backoff_ms": 500, "then_action": "next_candidate"}),
    ("stream_interrupted", {"action": "abort"}),
)
_FAST = (
    ("auth_error", {"action": "disable_provider"}),
    ("rate_limit", {"action": "next_candidate", "open_breaker_ms": 30000}),
    ("stream_interrupted", {"action": "abort"}),
)


class TemplateError(ValueError):
    """An intent that cannot be compiled: ``code``, the JSON ``path`` of the fault in the options."""

    def __init__(self, code: str, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


# ---------------------------------------------------------------- option checks
def _number(opts: Mapping[str, Any], name: str, default: float, low: float, high: float | None) -> float:
    v = opts.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TemplateError("invalid_option", f"{name} must be a finite number", f"$.{name}")
    if v < low or (high is not None and v > high):
        span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise TemplateError("invalid_option", f"{name} must be {span}", f"$.{name}")
    return v


def _positive_int(opts: Mapping[str, Any], name: str, default: int) -> int:
    v = opts.get(name, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TemplateError("invalid_option", f"{name} must be a positive integer", f"$.{name}")
    return v


def _provider_order(value: Any, known: Sequence[str]) -> list[list[str]]:
    if not isinstance(value, list) or not value:
        raise TemplateError("invalid_option", "provider_order must be a non-empty array of provider groups",
                            "$.provider_order")
    seen: set[str] = set()
    groups: list[list[str]] = []
    for i, raw in enumerate(value):
        entries = raw if isinstance(raw, list) else [raw]
        if not entries:
            raise TemplateError("invalid_option", f"provider_order[{i}] is empty", f"$.provider_order[{i}]")
        group: list[str] = []
        for j, p in enumerate(entries):
            where = f"$.provider_order[{i}]" + (f"[{j}]" if isinstance(raw, list) else "")
            if not isinstance(p, str) or not p.strip():
                raise TemplateError("invalid_option", "a provider is a non-empty string", where)
            p = p.strip()
            if p in seen:
                raise TemplateError("invalid_option", f"provider {p!r} appears twice", where)
            if known and p not in known:
                raise TemplateError("unknown_provider", f"no provider {p!r} in the catalog", where)
            seen.add(p)
            group.append(p)
        groups.append(group)
    return groups


def tier_groups(providers: Mapping[str, str], tier_order: Sequence[str]) -> list[list[str]]:
    """The default precedence: providers grouped by tier, best tier first, names sorted in a group.

    ``providers`` maps provider id to tier; ``tier_order`` lists tiers from lowest to highest.
    """
    rank = {t: i for i, t in enumerate(tier_order)}
    by_tier: dict[str, list[str]] = {}
    for pid, tier in providers.items():
        by_tier.setdefault(tier, []).append(pid)
    order = sorted(by_tier, key=lambda t: (-rank.get(t, -1), t))
    return [sorted(by_tier[t]) for t in order]


# ---------------------------------------------------------------- term pieces
def _all(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else ["and", *parts] if parts else ["top"]


def _any(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else ["or", *parts] if parts else ["bot"]


def _cost(share: float) -> Any:
    """Higher is cheaper, for the expected mix of input and output tokens."""
    return ["neg", ["normalize", ["add", ["scale", share, ["field", "price_in"]],
                                  ["scale", round(1.0 - share, 12), ["field", "price_out"]]]]]


def _healthy_first(selector: Any) -> Any:
    """Routes with an open breaker stay as the last resort, after every healthy one."""
    return ["prefer", ["not", ["is", "breaker_open"]], selector]


def _fail_plan(table: Sequence[tuple[str, Mapping[str, Any]]]) -> Any:
    plan: Any = ["always", {"action": "next_candidate"}]
    for kind, action in table:
        plan = ["override", plan, kind, dict(action)]
    return plan


def _rails(opts: Mapping[str, Any]) -> tuple[list[Any], Any, dict[str, Any]]:
    share = _number(opts, "expected_input_share", INPUT_SHARE, 0, 1)
    floor = _number(opts, "reliability_floor", RELIABILITY_FLOOR, 0, 1)
    pin = _number(opts, "max_price_in", MAX_PRICE_IN, 0, None)
    pout = _number(opts, "max_price_out", MAX_PRICE_OUT, 0, None)
    pred = [["meets_req"], ["not", ["is", "disabled"]], ["cmp", "success_rate", "ge", floor],
            ["cmp", "price_in", "le", pin], ["cmp", "price_out", "le", pout]]
    intent = {"expected_input_share": share, "reliability_floor": floor, "max_price_in": pin, "max_price_out": pout}
    return pred, _cost(share), intent


def _policy(pred: Any, scorer: Any, selector: Any, fail: Any, xform: Any = None) -> list[Any]:
    return ["policy", pred, scorer, selector, xform or ["id"], fail]


# ---------------------------------------------------------------- the templates
def _cheapest_family(opts: Mapping[str, Any], groups: list[list[str]], known: Sequence[str]) -> tuple[list, dict]:
    family = opts.get("family")
    if not isinstance(family, str) or not family.strip():
        raise TemplateError("missing_option", "cheapest-family needs a non-empty family", "$.family")
    family = family.strip()
    pred, cost, intent = _rails(opts)
    pred.append(["family_eq", family])
    strategy = opts.get("provider_strategy", "cost")
    if strategy == "cost":
        if "provider_order" in opts:
            raise TemplateError("invalid_option", "provider_order applies only to provider_strategy 'ordered'",
                                "$.provider_order")
        selector = _healthy_first(["argmax"])
    elif strategy == "ordered":
        order = _provider_order(opts["provider_order"], known) if "provider_order" in opts else groups
        if not order:
            raise TemplateError("invalid_option", "the catalog has no providers to order", "$.provider_order")
        group_preds = [_any([["provider_eq", p] for p in g]) for g in order]
        selector: Any = ["argmax"]
        for gp in reversed(group_preds):  # nested prefer: lexicographic provider precedence, cost inside
            selector = ["prefer", gp, selector]
        selector = _healthy_first(selector)
        pred.append(_any(group_preds))
        intent["provider_order"] = [list(g) for g in order]
    else:
        raise TemplateError("invalid_option", "provider_strategy is 'cost' or 'ordered'", "$.provider_strategy")
    intent.update({"family": family, "provider_strategy": strategy})
    return _policy(_all(pred), cost, selector, _fail_plan(_BALANCED)), intent


def _smart_value(opts: Mapping[str, Any]) -> tuple[list, dict]:
    pred, cost, intent = _rails(opts)
    top_n = _positive_int(opts, "top_n", TOP_N)
    pred.append(["cmp", "bench_intelligence_rank", "le", top_n])
    intent["top_n"] = top_n
    return _policy(_all(pred), cost, _healthy_first(["argmax"]), _fail_plan(_BALANCED)), intent


def _default() -> tuple[list, dict]:
    pred, cost, intent = _rails({})
    scorer = ["add", ["scale", COST_WEIGHT, cost],
              ["scale", INTELLIGENCE_WEIGHT, ["normalize", ["field", "bench_intelligence"]]]]
    selector = _healthy_first(["prefer", ["cmp", "bench_intelligence_rank", "le", TOP_N], ["argmax"]])
    intent.update({"top_n": TOP_N, "cost_weight": COST_WEIGHT, "intelligence_weight": INTELLIGENCE_WEIGHT})
    return _policy(_all(pred), scorer, selector, _fail_plan(_BALANCED)), intent


def _agent() -> tuple[list, dict]:
    a = AGENT
    pred = [["meets_req"], ["not", ["is", "disabled"]], ["is", "cap_tools"],
            ["cmp", "context", "ge", a["min_context"]], ["cmp", "success_rate", "ge", a["reliability_floor"]],
            ["cmp", "bench_intelligence_rank", "le", a["top_n"]],
            ["cmp", "price_in", "le", a["max_price_in"]], ["cmp", "price_out", "le", a["max_price_out"]]]
    wi, wc, wr = AGENT_WEIGHTS
    scorer = ["add", ["scale", wi, ["normalize", ["field", "bench_intelligence"]]],
              ["scale", wc, ["neg", ["normalize", ["field", "price_in"]]]],
              ["scale", wr, ["field", "success_rate"]]]
    selector = ["top_k", a["top_k"], _healthy_first(["argmax"])]
    intent = dict(a, intelligence_weight=wi, input_cost_weight=wc, reliability_weight=wr)
    return _policy(_all(pred), scorer, selector, _fail_plan(_FAST)), intent


# ---------------------------------------------------------------- public entry points
def describe(groups: list[list[str]]) -> list[dict[str, Any]]:
    """The templates, their required options and their defaults (``GET /x/policy/templates``)."""
    rails = {"expected_input_share": INPUT_SHARE, "reliability_floor": RELIABILITY_FLOOR,
             "max_price_in": MAX_PRICE_IN, "max_price_out": MAX_PRICE_OUT}
    return [
        {"id": "cheapest-family",
         "description": "The cheapest healthy route of one model family, by expected cost; with "
                        "provider_strategy 'ordered', providers in a fixed precedence first (default: the "
                        "catalog's tiers, best first), cost inside each group.",
         "required": ["family"],
         "defaults": {**rails, "provider_strategy": "cost", "provider_order": [list(g) for g in groups]}},
        {"id": "smart-value",
         "description": "The cheapest healthy route among the top-N models by measured intelligence.",
         "required": [],
         "defaults": {"top_n": TOP_N, **rails}},
        {"id": "agent",
         "description": "Tool agents: tools and a 128k context required, top ten by intelligence, "
                        "reliability weighted, eight routes in the cascade. Equals profile:agent as shipped.",
         "required": [],
         "defaults": dict(AGENT)},
        {"id": "default",
         "description": "What a call with no policy runs as shipped: healthy routes first, then the top five "
                        "by intelligence; among them 75% expected cost, 25% intelligence. Equals profile:default "
                        "as shipped.",
         "required": [],
         "defaults": {"top_n": TOP_N, **rails, "cost_weight": COST_WEIGHT,
                      "intelligence_weight": INTELLIGENCE_WEIGHT}},
    ]


def build(template_id: str, options: Any, groups: list[list[str]] | None = None,
          known_providers: Sequence[str] = ()) -> tuple[list[Any], dict[str, Any]]:
    """Compile a template: ``(policy term, intent)``; the term is not yet admitted nor normalised.

    ``groups`` is the default provider precedence (:func:`tier_groups` of the catalog);
    ``known_providers``, when given, is what ``provider_order`` may name.
    """
    if template_id not in _OPTIONS:
        raise TemplateError("unknown_template",
                            f"no policy template {template_id!r}; there are: {', '.join(TEMPLATE_IDS)}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TemplateError("invalid_option", "the options are a JSON object", "$")
    for name in sorted(options):
        if name not in _OPTIONS[template_id]:
            allowed = ", ".join(sorted(_OPTIONS[template_id])) or "none"
            raise TemplateError("unknown_option", f"{template_id} takes no option {name!r} (it takes: {allowed})",
                                f"$.{name}")
    if template_id == "cheapest-family":
        term, intent = _cheapest_family(options, groups or [], known_providers)
    elif template_id == "smart-value":
        term, intent = _smart_value(options)
    elif template_id == "agent":
        term, intent = _agent()
    else:
        term, intent = _default()
    return term, {"template": template_id, **intent}
