"""``meets_req``: the request's requirements block, checked against one candidate.

The one deliberately coarse predicate of the language. In evaluation order,
the first failure names the rejection reason:

1. derived needs (explicit ``requirements.needs``, then ``vision`` for
   non-empty ``images``, ``tools`` for non-empty ``tools``, ``json_mode`` for
   ``response_format.type == "json_object"``): a need with a capability
   mapping requires the model's flag, else ``missing_capability:<need>``;
2. ``min_context`` against ``capabilities.context`` (absent is 0);
3. ``model_family``; 4. ``tier``; 5. ``privacy == "tee_required"``;
6. ``privacy == "no_log"`` (``no_log`` or ``has_tee`` satisfies it);
7. ``min_quality`` against ``quality_hint`` (absent is 0);
8. ``min_tok_s`` against the stamped ``tok_s`` (absent is 0, so unobserved
   throughput fails closed).

Truthiness follows the reference: only an absent value and ``false`` are false.
"""

from __future__ import annotations

from typing import Any, Mapping

NEED_TO_CAPABILITY = {
    "tools": "supports_tools",
    "vision": "supports_vision",
    "json_mode": "supports_json_mode",
    "seed": "supports_seed",
}


def truthy(v: Any) -> bool:
    return v is not None and v is not False


def _m(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def _or(v: Any, default: Any) -> Any:
    return default if v is None or v is False else v


def derive_needs(request: Any) -> list[str]:
    """The needs of a request, explicit ones first, each once."""
    needs: list[Any] = []
    req = _m(request, "requirements")
    explicit = _m(req, "needs")
    if isinstance(explicit, list):
        for n in explicit:
            if n is None:
                break
            needs.append(n)
    images = _m(request, "images")
    if isinstance(images, list) and images:
        needs.append("vision")
    tools = _m(request, "tools")
    if isinstance(tools, list) and tools:
        needs.append("tools")
    rf = _m(request, "response_format")
    if isinstance(rf, Mapping) and rf.get("type") == "json_object":
        needs.append("json_mode")
    seen: list[Any] = []
    for n in needs:
        if isinstance(n, (str, int, float)) and n not in seen:
            seen.append(n)
    return seen


def meets_requirements(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
    """None when the candidate meets the request's requirements, else the reason."""
    request = _m(ctx, "request")
    req = _m(request, "requirements")
    caps = cand.get("capabilities")
    for need in derive_needs(request):
        flag = NEED_TO_CAPABILITY.get(need) if isinstance(need, str) else None
        if flag is not None and not truthy(_m(caps, flag)):
            return "missing_capability:" + need
    if not isinstance(req, Mapping):
        return None
    min_context = req.get("min_context")
    if truthy(min_context) and _or(_m(caps, "context"), 0) < min_context:
        return "min_context"
    family = req.get("model_family")
    if truthy(family) and cand.get("model_family") != family:
        return "model_family"
    tier = req.get("tier")
    if truthy(tier) and cand.get("tier") != tier:
        return "tier"
    privacy = req.get("privacy")
    if privacy == "tee_required" and not truthy(cand.get("has_tee")):
        return "tee_required"
    if privacy == "no_log" and not (truthy(cand.get("no_log")) or truthy(cand.get("has_tee"))):
        return "no_log"
    min_quality = req.get("min_quality")
    if truthy(min_quality) and _or(cand.get("quality_hint"), 0) < min_quality:
        return "min_quality"
    min_tok_s = req.get("min_tok_s")
    if truthy(min_tok_s) and _or(cand.get("tok_s"), 0) < min_tok_s:
        return "min_tok_s"
    return None


def scope_matches(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
    scope = cand.get("scope")
    if scope is None:
        return None
    if scope == _m(_m(ctx, "request"), "scope"):
        return None
    return "scope"
