"""From an OpenAI-compatible request body to what the decision needs.

The ``model`` string selects a route, as the reference host defines it:

============================  ===============================================
``""`` or any plain name      the ``default`` profile
``profile:NAME``              that profile
``family:FAMILY``             ``default``, requiring that model family
``pin:PROVIDER/FAMILY``       ``default``, pinned to that one route
``policy:NAME``               names the ``policy_ir`` sent in the body
``flow:NAME``                 a registered flow
============================  ===============================================

A ``policy_ir`` in the body drives selection; a ``flow_ir`` takes precedence
over everything. Our extension: a ``policy_ir`` that is a bare predicate runs
as the ``default`` profile's policy with the predicate ∧-ed onto its filter.
Another extension: an optional ``requirements`` object (``min_context``,
``needs``, ``privacy``, ``tier``, ``min_tok_s``) narrows ``meets_req``.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..lang.errors import LangError

_REQUIREMENT_KEYS = {"min_context", "needs", "privacy", "tier", "min_tok_s", "min_quality"}
_PRIVACY = {"standard", "no_log", "tee_required"}


class RequestError(LangError):
    """A request the router cannot serve as sent (HTTP 4xx)."""

    kind = "invalid_request_error"

    def __init__(self, code: str, message: str, path: tuple = (), status: int = 400) -> None:
        super().__init__(code, message, path)
        self.status = status

    def under(self, *prefix: Any) -> "RequestError":
        return RequestError(self.code, self.message, (*prefix, *self.parts), self.status)


@dataclass(slots=True)
class Contract:
    route: str                          # the route as the caller named it
    profile: str = "default"
    policy_name: str | None = None
    flow_name: str | None = None
    requirements: dict[str, Any] = field(default_factory=dict)
    pin: tuple[str, str] | None = None
    policy_ir: Any = None
    flow_ir: Any = None
    seed: int | None = None

    def request_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``ctx.request`` for the language: requirements and the derived-needs inputs."""
        view: dict[str, Any] = {"requirements": dict(self.requirements)}
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            view["tools"] = tools
        rf = body.get("response_format")
        if type(rf) is dict:
            view["response_format"] = {"type": rf.get("type")}
        images = image_parts(body.get("messages"))
        if images:
            view["images"] = images
        return view


def image_parts(messages: Any) -> list[dict[str, Any]]:
    """Image content parts in the conversation (so ``meets_req`` derives ``vision``)."""
    out: list[dict[str, Any]] = []
    if not isinstance(messages, list):
        return out
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is list:
            for part in content:
                if type(part) is dict and part.get("type") in ("image_url", "input_image", "image"):
                    out.append({"type": part.get("type")})
    return out


def parse_model(model: Any) -> Contract:
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise RequestError("bad_model", "model is a string", ("model",))
    m = model.strip()
    c = Contract(route=m)
    if m.startswith("profile:"):
        c.profile = m[len("profile:"):] or "default"
        if not c.profile.strip():
            raise RequestError("bad_model", "profile: names a profile", ("model",))
    elif m.startswith("family:"):
        family = m[len("family:"):]
        if not family:
            raise RequestError("bad_model", "family: names a model family", ("model",))
        c.requirements["model_family"] = family
    elif m.startswith("pin:"):
        rest = m[len("pin:"):]
        provider, _, family = rest.partition("/")
        if not provider or not family:
            raise RequestError("bad_model", "pin: is written pin:PROVIDER/FAMILY", ("model",))
        c.pin = (provider, family)
    elif m.startswith("policy:"):
        c.policy_name = m[len("policy:"):] or None
    elif m.startswith("flow:"):
        c.flow_name = m[len("flow:"):]
        if not c.flow_name:
            raise RequestError("bad_model", "flow: names a registered flow", ("model",))
    return c


def parse_requirements(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RequestError("bad_requirements", "requirements is an object", ("requirements",))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        p = ("requirements", k)
        if k not in _REQUIREMENT_KEYS:
            raise RequestError("bad_requirements", f"unknown requirement {k!r}; known: {', '.join(sorted(_REQUIREMENT_KEYS))}", p)
        if k in ("min_context", "min_tok_s", "min_quality"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise RequestError("bad_requirements", f"{k} is a finite number", p)
        elif k == "needs":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise RequestError("bad_requirements", "needs is a list of strings (tools, vision, json_mode, seed)", p)
        elif k == "privacy":
            if v not in _PRIVACY:
                raise RequestError("bad_requirements", f"privacy is one of {', '.join(sorted(_PRIVACY))}", p)
        elif k == "tier":
            if not isinstance(v, str):
                raise RequestError("bad_requirements", "tier is a string", p)
        out[k] = v
    return out


def parse_contract(body: Mapping[str, Any], *, path_profile: str | None = None) -> Contract:
    """Read the routing-relevant parts of a chat request body."""
    c = parse_model(body.get("model"))
    if path_profile is not None:
        c = Contract(route=f"profile:{path_profile}", profile=path_profile)
    extra = parse_requirements(body.get("requirements"))
    c.requirements = {**extra, **c.requirements}
    c.policy_ir = body.get("policy_ir")
    c.flow_ir = body.get("flow_ir")
    if c.policy_name is not None and c.policy_ir is None and c.flow_ir is None and path_profile is None:
        raise RequestError(
            "policy_in_model_field",
            f"model {c.route!r} names a policy but the body carries no policy_ir: a policy travels as a "
            "policy_ir term in the body; the model field only names it",
            ("model",))
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2 ** 63) <= seed < 2 ** 63:
            raise RequestError("bad_seed", "seed is a 64-bit integer", ("seed",))
        c.seed = seed
    return c
