"""Admission: a total check of a submitted term before anything runs.

``check(term, schema)`` returns the term's sort or raises :class:`AdmissionError`
with a stable code and the JSONPath of the first fault, found in the same
depth-first, left-to-right order the reference uses. It checks shape, known
operations, arity, sorts, every parameter against its sort, field declarations,
the tier order, registered custom transforms, and the resource bounds
(depth <= 64, <= 4096 subterm nodes) before recursion can go deep.

Where the reference is silent or ill-defined (a JSON ``null`` inside a
parameter, an object where a list belongs), we refuse; a refusal never forks a
decision (docs/spec/sigma-pol.md §7).
"""

from __future__ import annotations

import math
from typing import Any, Collection, Protocol

try:  # the subterm memo's key; without orjson there is no memo
    from orjson import dumps as _text
except ImportError:  # pragma: no cover
    _text = None

from .errors import AdmissionError, PathPart
from .fields import Schema, default_schema
from .signature import ACTIONS, OPERATIONAL_SORTS, OPS, RELATIONS

MAX_DEPTH = 64
MAX_NODES = 4096

_ACTION_CORE_KEYS = frozenset({"action", "attempts", "backoff_ms", "then_action", "open_breaker_ms"})
_CHAIN_KEYS = frozenset({"provider", "provider_id", "model", "model_family"})
_STRING_SORTS = frozenset({"Family", "Provider", "ServedBy", "Capability", "ParamName", "Sym", "FailReason"})


def is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def is_finite_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) <= 1.7976931348623157e308
    return isinstance(v, float) and math.isfinite(v)


def _fail(code: str, message: str, path: list[PathPart]) -> AdmissionError:
    return AdmissionError(code, message, list(path))


def _text_ok(s: str) -> bool:
    """A string that can be encoded (no unpaired surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_texts(v: Any, path: list[PathPart]) -> None:
    """Every string in a record parameter, keys included, must be valid Unicode."""
    if isinstance(v, str):
        if not _text_ok(v):
            raise _fail("bad_string", "string holds an unpaired surrogate", path)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_texts(x, path + [i])
    elif isinstance(v, dict):
        for k, x in v.items():
            if not _text_ok(k):
                raise _fail("bad_string", "key holds an unpaired surrogate", path)
            _check_texts(x, path + [k])


def _check_action(v: Any, path: list[PathPart]) -> None:
    if not isinstance(v, dict):
        raise _fail("bad_action", "an Action is an object such as {\"action\": \"next_candidate\"}", path)
    verb = v.get("action")
    if not isinstance(verb, str) or verb not in ACTIONS:
        raise _fail("bad_action", f"Action.action must be one of {', '.join(sorted(ACTIONS))}; got {verb!r}",
                    path + ["action"])
    if "then_action" in v and (not isinstance(v["then_action"], str) or v["then_action"] not in ACTIONS):
        raise _fail("bad_action", f"Action.then_action must be one of {', '.join(sorted(ACTIONS))}",
                    path + ["then_action"])
    for key in ("attempts", "open_breaker_ms"):
        if key in v and not is_finite_number(v[key]):
            raise _fail("bad_action", f"Action.{key} must be a finite number", path + [key])
    if "backoff_ms" in v:
        b = v["backoff_ms"]
        if not is_finite_number(b):
            if not isinstance(b, list):
                raise _fail("bad_action", "Action.backoff_ms must be a number or a list of numbers", path + ["backoff_ms"])
            for i, x in enumerate(b):
                if not is_finite_number(x):
                    raise _fail("bad_action", "Action.backoff_ms entries must be finite numbers",
                                path + ["backoff_ms", i])
    for key, x in v.items():
        if key not in _ACTION_CORE_KEYS and not is_finite_number(x):
            raise _fail("bad_action", f"Action key {key!r} is a host knob and must map to a finite number",
                        path + [key])


def _empty_record(v: Any) -> bool:
    """``{}``: the reference reads a Recipe or Chain into a Lua table, where an empty object and an
    empty list are one value, so it admits ``{}`` as the empty list; so do we (the normal form
    makes it ``[]``). A non-empty object is still refused: the reference admits one only because a
    table cannot tell it from a list, and then encodes and forwards it as a record."""
    return type(v) is dict and not v


def _check_recipe(v: Any, path: list[PathPart]) -> None:
    if _empty_record(v):
        return
    if not isinstance(v, list):
        raise _fail("bad_recipe", "a Recipe is a list of directive names or flat {name: number} records", path)
    for i, step in enumerate(v):
        if isinstance(step, str):
            continue
        if not isinstance(step, dict):
            raise _fail("bad_recipe", "a Recipe step is a string or a flat record", path + [i])
        for k, x in step.items():
            if not is_finite_number(x):
                raise _fail("bad_recipe", "a Recipe record maps names to finite numbers", path + [i, k])


def _check_chain(v: Any, path: list[PathPart]) -> None:
    if _empty_record(v):
        return
    if not isinstance(v, list):
        raise _fail("bad_chain", "a Chain is a list of {\"provider\": ..., \"model\": ...} records", path)
    for i, e in enumerate(v):
        if not isinstance(e, dict):
            raise _fail("bad_chain", "a Chain entry is a {\"provider\": ..., \"model\": ...} record", path + [i])
        for k, x in e.items():
            if k not in _CHAIN_KEYS:
                raise _fail("bad_chain", f"unknown Chain key {k!r} (provider, provider_id, model, model_family)",
                            path + [i, k])
            if not isinstance(x, str):
                raise _fail("bad_chain", f"Chain.{k} must be a string", path + [i, k])
        if "provider" not in e and "provider_id" not in e:
            raise _fail("bad_chain", "a Chain entry names its provider", path + [i])
        if "model" not in e and "model_family" not in e:
            raise _fail("bad_chain", "a Chain entry names its model", path + [i])


def check_param(sort: str, v: Any, schema: Schema, path: list[PathPart], customs: Collection[str]) -> None:
    if sort == "Num":
        if not is_finite_number(v):
            raise _fail("bad_number", f"expected a finite number, got {_show(v)}", path)
    elif sort == "Count":
        if not is_finite_number(v) or v % 1 != 0 or v < 1:
            raise _fail("bad_count", f"expected a positive integer, got {_show(v)}", path)
    elif sort == "Rel":
        if not isinstance(v, str) or v not in RELATIONS:
            raise _fail("bad_relation", f"expected one of {'|'.join(RELATIONS)}, got {_show(v)}", path)
    elif sort in ("NumField", "BoolField"):
        if not isinstance(v, str):
            raise _fail("bad_field", f"expected a field name, got {_show(v)}", path)
        d = schema.decl(v)
        if d is None:
            raise _fail("undeclared_field", f"field {v!r} is not declared by this host", path)
        want = "Num" if sort == "NumField" else "Bool"
        if d.sort != want:
            raise _fail("field_sort", f"field {v!r} has sort {d.sort}, expected {want}", path)
    elif sort == "Tier":
        if not isinstance(v, str) or v not in schema.tier_rank:
            raise _fail("unknown_tier", f"unknown tier {_show(v)}; tiers are {', '.join(schema.tier_order)}", path)
    elif sort in _STRING_SORTS:
        if not isinstance(v, str):
            raise _fail("bad_string", f"expected a string ({sort}), got {_show(v)}", path)
        if not _text_ok(v):
            raise _fail("bad_string", "string holds an unpaired surrogate", path)
        if sort == "Sym" and v not in customs:
            raise _fail("unknown_custom", f"custom transform {v!r} is not registered by this host", path)
    elif sort == "Scalar":
        if not (isinstance(v, (str, bool)) or is_finite_number(v)):
            raise _fail("bad_scalar", f"expected a number, string or boolean, got {_show(v)}", path)
        _check_texts(v, path)
    elif sort == "Action":
        _check_action(v, path)
        _check_texts(v, path)
    elif sort == "Recipe":
        _check_recipe(v, path)
        _check_texts(v, path)
    elif sort == "Chain":
        _check_chain(v, path)
        _check_texts(v, path)
    else:  # pragma: no cover - the signature names only the sorts above
        raise _fail("internal", f"unknown parameter sort {sort}", path)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return "an object" if isinstance(v, dict) else "a list"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class SubtermMemo(Protocol):
    """What a caller keeps between admissions: a subterm's JSON text -> ``(sort, height, nodes)``."""

    def get(self, key: Any) -> Any: ...

    def put(self, key: Any, value: Any) -> None: ...


MEMO_DEPTH = 4
"""Subterms down to this depth (the root is 1) are remembered by their JSON text, when a memo is
given; deeper ones are walked. (Each remembered depth costs one JSON rendering of its subterms.)"""


def check(term: Any, schema: Schema | None = None, *, customs: Collection[str] = (),
          path: tuple[PathPart, ...] = (), memo: SubtermMemo | None = None,
          texts: dict[int, tuple[Any, bytes]] | None = None) -> str:
    """Admit ``term``; return its sort. Raise :class:`AdmissionError` on the first fault.

    With ``memo`` (one per schema and custom registry), a subterm below the root whose exact JSON
    text was admitted before is not walked again: its sort, height and node count stand for it,
    and where they would break a bound at this position it is walked, so the fault and its path
    are the ones the walk finds. ``texts``, if given, receives ``id(subterm) -> (subterm, text)``
    for every subterm the memo was asked about (normalisation keys its own memo by them)."""
    walk = _Admission(schema or default_schema(), customs)
    if memo is not None and _text is not None:
        walk.memo = memo
        walk.texts = {} if texts is None else texts
    return walk.rec(term, list(path), 1)


class _Admission:
    """One admission's walk. (A class, not a closure that calls itself: that closure would be a
    reference cycle per call, left to the cycle collector; this is freed as soon as it returns.)"""

    __slots__ = ("schema", "customs", "nodes", "deepest", "memo", "texts")

    def __init__(self, schema: Schema, customs: Collection[str]) -> None:
        self.schema = schema
        self.customs = customs
        self.nodes = 0
        self.deepest = 0
        self.memo: SubtermMemo | None = None
        self.texts: dict[int, tuple[Any, bytes]] = {}

    def rec(self, t: Any, p: list[PathPart], depth: int) -> str:
        memo = self.memo
        if memo is None or depth == 1 or depth > MEMO_DEPTH or type(t) is not list:
            return self.walk(t, p, depth)
        try:
            key = _text(t)
        except Exception:  # not JSON data (or not a term at all): the walk says why
            return self.walk(t, p, depth)
        hit = memo.get(key)
        if hit is not None:
            sort, height, nodes = hit
            if depth + height - 1 <= MAX_DEPTH and self.nodes + nodes <= MAX_NODES:
                self.nodes += nodes
                if depth + height - 1 > self.deepest:
                    self.deepest = depth + height - 1
                self.texts[id(t)] = (t, key)
                return sort
        nodes, deepest = self.nodes, self.deepest
        self.deepest = 0
        sort = self.walk(t, p, depth)
        memo.put(key, (sort, self.deepest - depth + 1, self.nodes - nodes))
        if deepest > self.deepest:
            self.deepest = deepest
        self.texts[id(t)] = (t, key)
        return sort

    def walk(self, t: Any, p: list[PathPart], depth: int) -> str:
        if depth > MAX_DEPTH:
            raise _fail("too_deep", f"term nests deeper than {MAX_DEPTH}", p)
        self.nodes += 1
        if depth > self.deepest:
            self.deepest = depth
        if self.nodes > MAX_NODES:
            raise _fail("too_large", f"term has more than {MAX_NODES} nodes", p)
        if not isinstance(t, list) or not t or not isinstance(t[0], str):
            raise _fail("term_shape", f"a term is a list [op, args...] with a string op; got {_show(t)}", p)
        name = t[0]
        op = OPS.get(name)
        # the children: through the memo while they are within its depth, walked below it
        rec = self.rec if self.memo is not None and depth < MEMO_DEPTH else self.walk
        if op is None:
            raise _fail("unknown_op", f"unknown operation {name!r}", p + [0])
        if op.variadic is not None:
            if len(t) < 2:
                raise _fail("arity", f"{name} needs at least one argument", p)
            for i in range(1, len(t)):
                sort = rec(t[i], p + [i], depth + 1)
                if sort != op.variadic:
                    raise _fail("sort_mismatch", f"{name} takes {op.variadic} arguments; this is a {sort}", p + [i])
            return op.out
        if len(t) - 1 != len(op.ins):
            raise _fail("arity", f"{name} takes {len(op.ins)} argument(s), got {len(t) - 1}", p)
        for i, want in enumerate(op.ins, start=1):
            if want in OPERATIONAL_SORTS:
                sort = rec(t[i], p + [i], depth + 1)
                if sort != want:
                    raise _fail("sort_mismatch", f"argument {i} of {name} must be a {want}; this is a {sort}", p + [i])
            else:
                check_param(want, t[i], self.schema, p + [i], self.customs)
        return op.out


def check_sort(term: Any, want: str, schema: Schema | None = None, *, customs: Collection[str] = (),
               path: tuple[PathPart, ...] = ()) -> str:
    """Admit ``term`` and require it to be of sort ``want``."""
    sort = check(term, schema, customs=customs, path=path)
    if sort != want:
        raise AdmissionError("sort_mismatch", f"expected a {want} term, got a {sort}", list(path))
    return sort
