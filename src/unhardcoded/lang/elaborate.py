"""The declarative policy surface, lowered to a sigma-pol/v2 ``policy`` term.

The reference has one compiler for its declarative profiles (``elaborate`` in the reference
core), and its host serves it as ``POST /x/policy/build``. A spec is a JSON object:

* ``filter``: a filter spec (below); absent, ``and(meets_req, not(is disabled))``;
* ``scorer``: a Scorer term, passed through; absent, ``zero``. It is wrapped in
  ``gate(not(is breaker_open), ·)``: a candidate behind an open breaker ranks last;
* ``selector``: ``argmax`` (absent too), ``softmax_sample`` (``selector_opts.temp``, 1.0),
  ``top_k`` (``selector_opts.k``, 3, sampling at ``selector_opts.temp`` if given), or
  ``chain`` (``chain``: the routes in order);
* ``mutate``: a mutate spec (below); absent or ``"identity"``, ``id``;
* ``retry_table``: error kind → FailPlan action; ``unknown`` is the base (``next_candidate``
  absent), every other kind an ``override`` in sorted order.

Filter specs: the atoms ``requirements``, ``not_disabled``, ``breaker_closed``,
``scope_matches``; ``{all_of|any_of|none_of: [specs]}``; ``{tier_in|family_in|provider_in|
served_by_in: [names]}`` (one name: the single test); ``{provider_not_in|served_by_not_in:
[names]}``; ``{price_max: {input?, output?}}``; a bare list is ``all_of``.

Mutate specs: ``{pipe: [specs]}``, ``{filter_text: v}``, ``{filter_image: v}``, ``{jitter:
{param: amount}}``, ``{set_param: {param: value}}`` (``"from_ctx"``: ``inject_seed``),
``{clamp: {param: high}}`` (from 0); maps in sorted key order, one entry the single op; a
bare list is ``pipe``.

What the reference lowers, this lowers to the same term. Where the reference would quietly
take a spec it cannot mean (an unknown selector name read as ``argmax``, a second key in a
filter object ignored, a ``weights`` table dropped), this refuses it at its path
(``invalid_policy_spec``). The term is not admitted here: it is normalised and admitted where
it is used, like any other policy.
"""

from __future__ import annotations

from typing import Any, Mapping

from .admission import MAX_DEPTH
from .errors import LangError, PathPart

_ATOMS: dict[str, list] = {
    "requirements": ["meets_req"],
    "not_disabled": ["not", ["is", "disabled"]],
    "breaker_closed": ["not", ["is", "breaker_open"]],
    "scope_matches": ["scope_matches"],
}
# name list -> the one test each name is, kept (or, for *_not_in, dropped)
_SETS = {"tier_in": ("tier_eq", False), "family_in": ("family_eq", False), "provider_in": ("provider_eq", False),
         "provider_not_in": ("provider_eq", True), "served_by_in": ("served_by_eq", False),
         "served_by_not_in": ("served_by_eq", True)}
_SELECTORS = ("argmax", "softmax_sample", "top_k", "chain")
SPEC_KEYS = ("filter", "scorer", "selector", "selector_opts", "chain", "mutate", "retry_table")


class SpecError(LangError):
    kind = "invalid_policy_spec"


def _fail(message: str, path: tuple[PathPart, ...]) -> SpecError:
    return SpecError("invalid_policy_spec", message, path)


def _one_key(spec: Mapping[str, Any], path: tuple[PathPart, ...], what: str) -> str:
    if len(spec) != 1:
        raise _fail(f"a {what} object has exactly one key (got {len(spec)}: {', '.join(sorted(spec)) or 'none'})", path)
    return next(iter(spec))


def _list(value: Any, path: tuple[PathPart, ...], what: str) -> list:
    if type(value) is not list:
        raise _fail(f"{what} is a list", path)
    return value


def _each(lower: Any, specs: list, path: tuple[PathPart, ...]) -> list:
    """Every spec of a list lowered, each at its index (no deeper than a term may be)."""
    if len(path) > MAX_DEPTH:
        raise _fail(f"a spec nests no deeper than {MAX_DEPTH} levels", path)
    return [lower(s, (*path, i)) for i, s in enumerate(specs)]


def _directive(spec: Mapping[str, Any], path: tuple[PathPart, ...], what: str) -> tuple[str, tuple[PathPart, ...], Any]:
    """A one-key object's key, the path to its value, and the value."""
    key = _one_key(spec, path, what)
    return key, (*path, key), spec[key]


def _either(op: str, parts: list) -> list:
    return [op, *parts] if len(parts) != 1 else parts[0]


def lower_filter(spec: Any, path: tuple[PathPart, ...] = ("filter",)) -> list:
    if spec is None:
        return ["and", ["meets_req"], ["not", ["is", "disabled"]]]
    if type(spec) is str:
        atom = _ATOMS.get(spec)
        if atom is None:
            raise _fail(f"unknown filter atom {spec!r} (one of {', '.join(_ATOMS)})", path)
        return [*atom]
    if type(spec) is list:
        if not spec:
            raise _fail("a filter list holds at least one spec", path)
        return ["and", *_each(lower_filter, spec, path)]
    if type(spec) is not dict:
        raise _fail("a filter spec is an atom name, a list or an object", path)
    key, at, value = _directive(spec, path, "filter")
    if key in ("all_of", "any_of", "none_of"):
        parts = _each(lower_filter, _list(value, at, key), at)
        if key == "all_of":
            return ["and", *parts]
        return ["or", *parts] if key == "any_of" else ["not", ["or", *parts]]
    if key in _SETS:
        op, drop = _SETS[key]
        names = _list(value, at, key)
        for i, name in enumerate(names):
            if type(name) is not str:
                raise _fail(f"{key} holds names (strings)", (*at, i))
        term = _either("or", [[op, n] for n in names])
        return ["not", term] if drop else term
    if key == "price_max":
        if type(value) is not dict:
            raise _fail("price_max is an object of input and output ceilings", at)
        for k in value:
            if k not in ("input", "output"):
                raise _fail("price_max has input and output ceilings only", (*at, k))
        gates = [["cmp", field, "le", value[k]] for k, field in (("input", "price_in"), ("output", "price_out"))
                 if value.get(k) is not None and value[k] is not False]
        return _either("and", gates) if gates else ["top"]
    raise _fail(f"unknown filter directive {key!r}", at)


def lower_mutate(spec: Any, path: tuple[PathPart, ...] = ("mutate",)) -> list:
    if spec is None or spec == "identity":
        return ["id"]
    if type(spec) is list:
        if not spec:
            raise _fail("a mutate list holds at least one spec", path)
        return ["seq", *_each(lower_mutate, spec, path)]
    if type(spec) is not dict:
        raise _fail("a mutate spec is \"identity\", a list or an object", path)
    key, at, value = _directive(spec, path, "mutate")
    if key == "pipe":
        return ["seq", *_each(lower_mutate, _list(value, at, key), at)]
    if key in ("filter_text", "filter_image"):
        return [key, value]
    if key in ("jitter", "set_param", "clamp"):
        if type(value) is not dict or not value:
            raise _fail(f"{key} is a non-empty object of parameter names", at)
        ops = []
        for name in sorted(value):
            v = value[name]
            if key == "jitter":
                ops.append(["jitter", name, v])
            elif key == "clamp":
                ops.append(["clamp_param", name, 0, v])
            else:
                ops.append(["inject_seed", name] if v == "from_ctx" else ["set_param", name, v])
        return _either("seq", ops)
    raise _fail(f"unknown mutate directive {key!r}", at)


def lower_selector(spec: Mapping[str, Any]) -> list:
    name = spec.get("selector", "argmax")
    if name not in _SELECTORS:
        raise _fail(f"selector is one of {', '.join(_SELECTORS)}", ("selector",))
    opts = spec.get("selector_opts") or {}
    if type(opts) is not dict:
        raise _fail("selector_opts is an object", ("selector_opts",))
    for k in opts:
        if k not in ("temp", "k"):
            raise _fail("selector_opts has temp and k only", ("selector_opts", k))
    if name == "softmax_sample":
        return ["sample", opts.get("temp", 1.0)]
    if name == "chain":
        return ["chain", _list(spec.get("chain"), ("chain",), "chain (the routes in order, for selector chain)")]
    if name == "top_k":
        return ["top_k", opts.get("k", 3), ["sample", opts["temp"]] if opts.get("temp") is not None else ["argmax"]]
    return ["argmax"]


def lower_failplan(table: Any) -> list:
    table = {} if table is None else table
    if type(table) is not dict:
        raise _fail("retry_table is an object of error kind -> action", ("retry_table",))
    out: list = ["always", table.get("unknown", {"action": "next_candidate"})]
    for reason in sorted(table):
        if reason != "unknown":
            out = ["override", out, reason, table[reason]]
    return out


def build_policy(spec: Any) -> list:
    """The ``policy`` term a declarative spec lowers to (not normalised, not admitted)."""
    if type(spec) is not dict:
        raise _fail("a policy spec is a JSON object", ())
    for key in spec:
        if key == "weights":
            raise _fail("weights were removed in sigma-pol/v2: send the ranking as a scorer term", ("weights",))
        if key not in SPEC_KEYS:
            raise _fail(f"unknown key {key!r} (a spec has {', '.join(SPEC_KEYS)})", (key,))
    scorer = spec.get("scorer")
    return ["policy", lower_filter(spec.get("filter")),
            ["gate", ["not", ["is", "breaker_open"]], ["zero"] if scorer is None else scorer],
            lower_selector(spec), lower_mutate(spec.get("mutate")), lower_failplan(spec.get("retry_table"))]
