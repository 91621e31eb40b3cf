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
    if type(obj) is dict:
        return obj.get(key)
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


class RequestCheck:
    """The request side of ``meets_req``, worked out once per request."""

    __slots__ = ("needs", "min_context", "family", "tier", "privacy", "min_quality", "min_tok_s", "empty")

    def __init__(self, request: Any) -> None:
        req = _m(request, "requirements")
        self.needs = [(n, NEED_TO_CAPABILITY[n]) for n in derive_needs(request)
                      if isinstance(n, str) and n in NEED_TO_CAPABILITY]
        if not isinstance(req, Mapping):
            req = {}
        self.min_context = req.get("min_context") if truthy(req.get("min_context")) else None
        self.family = req.get("model_family") if truthy(req.get("model_family")) else None
        self.tier = req.get("tier") if truthy(req.get("tier")) else None
        self.privacy = req.get("privacy")
        self.min_quality = req.get("min_quality") if truthy(req.get("min_quality")) else None
        self.min_tok_s = req.get("min_tok_s") if truthy(req.get("min_tok_s")) else None
        self.empty = not self.needs and self.min_context is None and self.family is None and self.tier is None \
            and self.privacy not in ("tee_required", "no_log") and self.min_quality is None and self.min_tok_s is None

    def __call__(self, cand: Mapping[str, Any]) -> str | None:
        if self.empty:
            return None
        caps = cand.get("capabilities")
        for need, flag in self.needs:
            if not truthy(_m(caps, flag)):
                return "missing_capability:" + need
        if self.min_context is not None and _or(_m(caps, "context"), 0) < self.min_context:
            return "min_context"
        if self.family is not None and cand.get("model_family") != self.family:
            return "model_family"
        if self.tier is not None and cand.get("tier") != self.tier:
            return "tier"
        privacy = self.privacy
        if privacy == "tee_required" and not truthy(cand.get("has_tee")):
            return "tee_required"
        if privacy == "no_log" and not (truthy(cand.get("no_log")) or truthy(cand.get("has_tee"))):
            return "no_log"
        if self.min_quality is not None and _or(cand.get("quality_hint"), 0) < self.min_quality:
            return "min_quality"
        if self.min_tok_s is not None and _or(cand.get("tok_s"), 0) < self.min_tok_s:
            return "min_tok_s"
        return None


def meets_requirements(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
    """None when the candidate meets the request's requirements, else the reason."""
    return RequestCheck(_m(ctx, "request"))(cand)


def scope_matches(cand: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
    scope = cand.get("scope")
    if scope is None:
        return None
    if scope == _m(_m(ctx, "request"), "scope"):
        return None
    return "scope"
