"""The reference semantics as a fold over the term.

``evaluate(term, algebra)`` knows only the recursion: it evaluates subterm
positions, passes parameters through, and hands both to ``algebra[op]``. All
meaning lives in the algebra. :func:`default_algebra` is the reference
semantics; other algebras (a pretty-printer, an explainer) reuse the fold.

Carriers of the default algebra:

=========  ==============================================================
Pred       ``fn(cand, ctx) -> None | reason``  (None: the candidate passes)
Scorer     ``fn(population, ctx) -> [score]``   (relative to the population)
Selector   ``fn([Ranked], ctx) -> [Ranked]``    (the whole failover order)
Xform      ``fn(request, cand, ctx) -> request``
FailPlan   ``{error_kind: Action}`` with the base under ``unknown``
Policy     :class:`Policy`
=========  ==============================================================

Numbers are IEEE-754 doubles and only +, -, *, / and comparisons are used.
Children of AC operations are evaluated in normal-form order, so an ``and``
reports the first failing child of its canonical order.
"""

from __future__ import annotations

import math
import operator
from itertools import compress
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..memo import BoundedMemo
from .errors import EvaluationError
from .fields import Schema, default_schema
from .ordering import InvalidOrder, reference_sort
from .prng import MODULUS, lcg, substream
from .requirements import RequestCheck, scope_matches, truthy
from .signature import OPERATIONAL_SORTS, OPS

Pred = Callable[[Mapping[str, Any], Mapping[str, Any]], "str | None"]
Scorer = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], list]
Xform = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]
Custom = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]


class Ranked:
    """A candidate with its score, as selectors order them."""

    __slots__ = ("candidate", "score")

    def __init__(self, candidate: Mapping[str, Any], score: Any) -> None:
        self.candidate = candidate
        self.score = score

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Ranked({self.candidate.get('provider_id')}/{self.candidate.get('model_family')}, {self.score!r})"


@dataclass(slots=True)
class Rejection:
    provider: Any
    model: Any
    reason: str
    candidate: Mapping[str, Any] = field(repr=False, default_factory=dict)


@dataclass(slots=True)
class Plan:
    ordered: list[Ranked]
    rejected: list[Rejection]


def classify(failplan: Mapping[str, Any], error_kind: str) -> dict[str, Any]:
    """The Action a FailPlan gives an error kind."""
    return failplan.get(error_kind) or failplan.get("unknown") or {"action": "next_candidate"}


@dataclass(slots=True)
class Policy:
    """An evaluated policy: filter, scorer, selector, transform, failure plan."""

    filter: Pred
    scorer: Scorer
    selector: Callable[[list[Ranked], Mapping[str, Any]], list[Ranked]]
    xform: Xform
    failplan: dict[str, Any]

    def plan(self, candidates: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any],
             parts: "PlanParts | None" = None) -> Plan:
        """Filter (keeping every reason), score the survivors, order them.

        The filter runs over the whole list at once where it can (``Pred.many``, below); if that
        raises, the candidate-by-candidate walk runs instead and raises what the reference does.

        ``parts``, if given, is a memo the caller keeps for one list of candidates and one
        context (its inputs: the same objects, and a context that means the same): policies
        planned over them reuse what they share (see :meth:`_plan_parts`).
        """
        return self.plan_and_reasons(candidates, ctx, parts)[0]

    def plan_and_reasons(self, candidates: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any],
                         parts: "PlanParts | None" = None, prior: "tuple | None" = None,
                         volatile: frozenset = frozenset()) -> tuple[Plan, Sequence[Any]]:
        """:meth:`plan`, and the filter's reason for each candidate (None where it passed).

        ``prior``, if given, is ``(candidates, reasons, plan)`` of this policy over another list
        in a context that means the same as ``ctx``. A filter's reason for a candidate depends
        on that candidate and the context alone, so where the two lists hold the same object
        at the same place the reason is the one before, and only the other places are asked
        again (one by one, as the walk asks). For a pool re-stamped after a few routes served,
        that is a few candidates instead of all. If there are many such places, or a question
        raises, the plan is made as if there were no prior (and raises what that raises).

        ``volatile`` names keys in which a candidate may differ from the one at its place
        before and still be, to whoever reads the plan, the same candidate (the host's
        observations: latency, success rate). Where every candidate that differs does so only
        in such keys, the filter gives it the reason it gave before, and the scorer, selector
        and transform read none of those keys, the scores and order are what they were: the
        plan before is the plan, returned as it is (its candidates are then the earlier
        objects, equal to these in every key but those)."""
        if prior is not None:
            got = self._replan(candidates, ctx, prior, volatile)
            if got is not None:
                return got
        if parts is not None:
            got = self._plan_parts(candidates, ctx, parts)
            if got is not None:
                return got
        keep = self.filter
        many = getattr(keep, "many", None)
        if many is not None:
            try:
                reasons = many(candidates, ctx)
            except Exception:  # the walk below meets the same fault, at the candidate the reference does
                reasons = None
            if reasons is not None:
                survivors, rejected = _split(candidates, reasons)
                return Plan(self.select(survivors, ctx), rejected), reasons
        reasons = [keep(cand, ctx) for cand in candidates]
        survivors, rejected = _split(candidates, reasons)
        return Plan(self.select(survivors, ctx), rejected), reasons

    def _replan(self, candidates: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any], prior: tuple,
                volatile: frozenset) -> tuple[Plan, list] | None:
        before, whys, plan = prior
        n = len(candidates)
        if len(before) != n or len(whys) != n:
            return None
        changed = changed_places(before, candidates)
        if 4 * len(changed) > n:  # reading the whole list at once costs less than asking each
            return None
        reasons = list(whys)
        keep = self.filter
        try:
            for i in changed:
                reasons[i] = keep(candidates[i], ctx)
        except Exception:
            return None
        if plan is not None and volatile:
            reads: Any = _ABSENT  # not looked up yet
            for i in changed:
                why = reasons[i]
                if why != whys[i] or not _alike(before[i], candidates[i], volatile):
                    break
                if why is None:  # a survivor: scored, ordered and transformed
                    if reads is _ABSENT:
                        reads = _reads(self.scorer, self.selector, self.xform)
                    if reads is None or not volatile.isdisjoint(reads):
                        break
            else:
                return plan, reasons
        survivors, rejected = _split(candidates, reasons)
        return Plan(self.select(survivors, ctx), rejected), reasons

    def _plan_parts(self, candidates: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any],
                    parts: "PlanParts") -> tuple[Plan, tuple] | None:
        """The plan from what other policies over the same candidates and context left in ``parts``.

        A policy built per request shares most of its carriers with the one before (the compiler
        remembers subterms), and a carrier's readings of the same candidates in the same context
        are the same. So each child of a top-level ``and`` (or the filter itself) gives its
        reasons over the whole list once; a candidate's reason is its first child's, in order,
        that rejects it, as in the walk (combined from the last child back, and each run of
        last children remembered, so a policy that changed one child combines only up to it).
        The same reasons give the same survivors and rejections, and the same scorer and
        selector over the same survivors the same plan: one Plan object, shared. If a child
        raises (it may, on a candidate an earlier child rejects, where the walk never asks it),
        None: the general path decides (as it does for a policy with more than one child not seen
        over these inputs before).

        Keys are the carriers themselves (hashed by identity, and held by the memo, so never
        another's), runs of them as tuples, the reasons as a tuple of strings and Nones, and a
        field's vector observer (one per schema field) for that field's values over the list,
        which every comparison on the field reads (a moved threshold reads no candidate)."""
        kids = getattr(self.filter, "kids", None) or (self.filter,)
        n = len(kids)
        if n > 1:
            # Reading every child over the whole list costs more than the walk's narrowing when
            # the children are new: only a policy that repeats all its children but one (a
            # threshold moved) reads them so; the first sight of others only marks them seen.
            unseen = [q for q in kids if q not in parts.data]
            if len(unseen) > 1:
                for q in unseen:
                    parts.put(q, _SEEN, 1)
                return None
        start, acc = n, None
        for i in range(1, n):  # the longest run of last children combined before
            acc = parts.get(kids[i:])
            if acc is not None:
                start = i
                break
        fresh = False  # a child not seen over these inputs before is read but not kept, nor runs with it
        for i in range(start - 1, -1, -1):
            q = kids[i]
            whys = parts.get(q)
            if whys is None or whys is _SEEN:
                first = whys is None
                try:
                    column = getattr(q, "column", None)
                    if column is None:
                        whys = _many(q)(candidates, ctx)
                    else:  # a comparison: its field's values over the list are read once for all
                        vs = parts.get(column)
                        if vs is None:
                            vs = parts.put(column, column(candidates, ctx), len(candidates))
                        whys = q.on_column(vs)
                except Exception:
                    return None
                if first:  # (a moved threshold's child is seldom asked for again: kept from its second sight)
                    fresh = True
                    parts.put(q, _SEEN, 1)
                else:
                    parts.put(q, whys, len(whys))
            acc = whys if acc is None else [a if a is not None else b for a, b in zip(whys, acc)]
            if 0 < i < n - 1 and not fresh:
                parts.put(kids[i:], acc, len(acc))
        reasons = tuple(acc) if acc is not None else ()
        hit = parts.get(reasons)
        if hit is None:
            hit = parts.put(reasons, _split(candidates, reasons), 2 * len(reasons))
        survivors, rejected = hit
        key = (self.scorer, self.selector, id(survivors))
        chosen = parts.get(key)
        if chosen is None or chosen[0] is not survivors:
            chosen = parts.put(key, (survivors, Plan(self.select(survivors, ctx), rejected)), len(survivors))
        return chosen[1], reasons

    def select(self, survivors: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list[Ranked]:
        scores = self.scorer(survivors, ctx)
        return self.selector([Ranked(c, s) for c, s in zip(survivors, scores)], ctx)

    def classify(self, error_kind: str) -> dict[str, Any]:
        return classify(self.failplan, error_kind)


# --------------------------------------------------------------------------
# the fold
# --------------------------------------------------------------------------

def evaluate(t: list, algebra: Mapping[str, Callable[[list], Any]]) -> Any:
    op = OPS[t[0]]
    if op.variadic is not None:
        args = [evaluate(k, algebra) for k in t[1:]]
    else:
        args = [evaluate(t[i], algebra) if s in OPERATIONAL_SORTS else t[i]
                for i, s in enumerate(op.ins, start=1)]
    return algebra[op.name](args)


def evaluate_known(t: list, algebra: Mapping[str, Callable[[list], Any]], known: Mapping[int, list],
                   unset: Any) -> Any:
    """``evaluate`` where some subterms may have been evaluated before: ``known`` maps the id of
    a subterm of ``t`` (alive while ``t`` is) to the memo entry ``[term, body, carrier or unset]``
    of a term equal to it; a known subterm's carrier is taken from its entry, or evaluated once
    and kept there. (A carrier is a function of its term and the algebra alone, so the one kept
    is the one evaluation would make.)"""
    entry = known.get(id(t))
    if entry is not None:
        carrier = entry[2]
        if carrier is unset:
            carrier = entry[2] = _evaluate_node(t, algebra, known, unset)
        return carrier
    return _evaluate_node(t, algebra, known, unset)


def _evaluate_node(t: list, algebra: Mapping[str, Callable[[list], Any]], known: Mapping[int, list], unset: Any) -> Any:
    op = OPS[t[0]]
    if op.variadic is not None:
        args = [evaluate_known(k, algebra, known, unset) for k in t[1:]]
    else:
        args = [evaluate_known(t[i], algebra, known, unset) if s in OPERATIONAL_SORTS else t[i]
                for i, s in enumerate(op.ins, start=1)]
    return algebra[op.name](args)


# --------------------------------------------------------------------------
# the reference algebra
# --------------------------------------------------------------------------

def _number(v: Any, name: str) -> Any:
    t = type(v)
    if t is float or t is int:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise EvaluationError("bad_observation", f"field {name!r} observed a non-number ({type(v).__name__})")
    return v


_score_of = operator.attrgetter("score")


def _order_key(r: Ranked) -> float:
    s = r.score
    return -math.inf if s != s else s


def _by_score(scored: list[Ranked]) -> list[Ranked]:
    """Score descending, ties in input order (the reference's comparator).

    That comparator is a total order unless a score is NaN; then the order is
    whatever the reference's quicksort makes of it, so we run that sort. If
    the reference itself would give up ("invalid order function"), NaN scores
    rank last (docs/spec/sigma-pol.md §6).
    """
    scores = [r.score for r in scored]
    if [s for s in scores if s != s]:  # a NaN: the only score unequal to itself
        indexed = list(enumerate(scored))

        def less(a: tuple[int, Ranked], b: tuple[int, Ranked]) -> bool:
            if a[1].score != b[1].score:
                return a[1].score > b[1].score
            return a[0] < b[0]
        try:
            return [r for _, r in reference_sort(indexed, less)]
        except InvalidOrder:
            pass
        return sorted(scored, key=_order_key, reverse=True)
    # Stable: equal scores keep input order. No NaN here, so the score is its own key (read in C,
    # not by a Python call per candidate).
    return sorted(scored, key=_score_of, reverse=True)


_INT64 = 1 << 64


def _wrap(v: int) -> int:
    """Two integers combine as 64-bit two's complement, as in the reference (Lua 5.4)."""
    if -(1 << 63) <= v < (1 << 63):
        return v
    v &= _INT64 - 1
    return v - _INT64 if v >= (1 << 63) else v


def _mul(a: Any, b: Any) -> Any:
    return _wrap(a * b) if type(a) is int and type(b) is int else a * b


def _plus(a: Any, b: Any) -> Any:
    return _wrap(a + b) if type(a) is int and type(b) is int else a + b


def _minus(a: Any, b: Any) -> Any:
    return _wrap(a - b) if type(a) is int and type(b) is int else a - b


def _div(a: Any, b: Any) -> Any:
    """Division is always on doubles (integers are converted first, as in the reference)."""
    fa, fb = float(a), float(b)
    if fb == 0.0:
        if fa == 0.0 or fa != fa:
            return math.nan
        return math.copysign(math.inf, fa) * math.copysign(1.0, fb)
    return fa / fb


def _clamp(x: Any, lo: Any, hi: Any) -> Any:
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def _clone(req: Any) -> dict:
    return dict(req) if isinstance(req, Mapping) else {}


def _seed(ctx: Mapping[str, Any]) -> Any:
    return ctx.get("seed") if isinstance(ctx, Mapping) else None


# Python compares int with float exactly, as Lua 5.4 does; NaN compares false but for "ne".
_REL: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt, "le": operator.le, "eq": operator.eq,
    "ne": operator.ne, "ge": operator.ge, "gt": operator.gt,
}


# the same relations over a list of values at once: a reason for each value that fails
_REL_MANY: dict[str, Callable[[list, Any, str], list]] = {
    "lt": lambda vs, n, why: [None if v < n else why for v in vs],
    "le": lambda vs, n, why: [None if v <= n else why for v in vs],
    "eq": lambda vs, n, why: [None if v == n else why for v in vs],
    "ne": lambda vs, n, why: [None if v != n else why for v in vs],
    "ge": lambda vs, n, why: [None if v >= n else why for v in vs],
    "gt": lambda vs, n, why: [None if v > n else why for v in vs],
}
_NUMBER_TYPES = frozenset((float, int))
def _split(candidates: Sequence[Mapping[str, Any]], reasons: Sequence[Any]) -> tuple[list, list[Rejection]]:
    """The candidates a filter passed (reason None), and a Rejection for each it did not."""
    survivors = [c for c, why in zip(candidates, reasons) if why is None]
    rejected = [Rejection(c.get("provider_id"), c.get("model_family"), why, c)
                for c, why in zip(candidates, reasons) if why is not None]
    return survivors, rejected


_TIER, _FAMILY, _PROVIDER = frozenset(("tier",)), frozenset(("model_family",)), frozenset(("provider_id",))
_SERVED_BY, _CAPABILITIES = frozenset(("offer", "provider_id")), frozenset(("capabilities",))

_SEEN: Any = object()  # a child seen in a plan over these inputs, not yet read over the whole list


class PlanParts(BoundedMemo):
    """What plans over one list of candidates and one context share (``Policy.plan``).

    Bounded by what it holds, not only by its entries: each reading is as long as the list, so
    a budget of list slots and of entries; when either would be passed it starts again rather
    than grow. The budget is ``WEIGHT`` (~1 MB of references), or ``PER_LIST`` readings of a
    list of ``list_length`` where that is more: one plan's own readings (each child's, the runs
    of last children, the reasons, the survivors) must fit, or a big catalog would never keep
    them and every new policy over it would take the walk."""

    __slots__ = ()
    WEIGHT = 1 << 17
    PER_LIST = 24
    ENTRIES = 512

    def __init__(self, list_length: int = 0) -> None:
        super().__init__(self.ENTRIES, max(self.WEIGHT, self.PER_LIST * list_length))


_NOTHING: frozenset = frozenset()
_ABSENT: Any = object()


def _reads(*parts: Any) -> frozenset | None:
    """The candidate keys ``parts`` (carriers, or sets of keys) read, together; None if any
    part's are not known (a carrier without ``reads``: a host's custom transform, ``meets_req``)."""
    out = _NOTHING
    for part in parts:
        keys = part if type(part) is frozenset else getattr(part, "reads", None)
        if keys is None:
            return None
        out = out | keys
    return out


def changed_places(before: Sequence[Any], after: Sequence[Any]) -> list[int]:
    """Where two lists of the same length hold different objects (by identity, in one C pass)."""
    return list(compress(range(len(after)), map(operator.is_not, before, after)))


def same_value(a: Any, b: Any) -> bool:
    """The same object, or of the same type and equal (so 1 is not 1.0, nor True 1)."""
    return a is b or (type(a) is type(b) and a == b)


def _alike(a: Mapping[str, Any], b: Mapping[str, Any], volatile: frozenset) -> bool:
    """Whether two candidates hold the same values (``same_value``) in every key but ``volatile``."""
    for k, v in b.items():
        if k not in volatile and not same_value(a.get(k, _ABSENT), v):
            return False
    return all(k in b or k in volatile for k in a)


def _reading(fn: Any, keys: frozenset | None) -> Any:
    fn.reads = keys
    return fn


def _many(pred: Pred) -> Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], list]:
    """A predicate over a list of candidates: a reason (or None) for each.

    Where a predicate has a vector form (``pred.many``) that is used; it returns what the
    candidate-by-candidate call returns whenever that call returns, and may raise where that
    call would not (a caller that must agree on faults walks one by one then). Otherwise the
    predicate is called once per candidate.
    """
    many = getattr(pred, "many", None)
    if many is not None:
        return many
    return lambda cands, ctx: [pred(c, ctx) for c in cands]


def default_algebra(schema: Schema | None = None, customs: Mapping[str, Custom] | None = None) -> dict[str, Callable[[list], Any]]:
    schema = schema or default_schema()
    customs = customs or {}
    tier_rank = schema.tier_rank
    alg: dict[str, Callable[[list], Any]] = {}

    def op(name: str) -> Callable[[Callable[[list], Any]], Callable[[list], Any]]:
        def register(fn: Callable[[list], Any]) -> Callable[[list], Any]:
            alg[name] = fn
            return fn
        return register

    # ---- Pred ------------------------------------------------------------
    @op("top")
    def _top(a: list) -> Pred:
        return _reading(lambda c, ctx: None, _NOTHING)

    @op("bot")
    def _bot(a: list) -> Pred:
        return _reading(lambda c, ctx: "bot", _NOTHING)

    @op("and")
    def _and(ps: list) -> Pred:
        def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            for q in ps:
                why = q(c, ctx)
                if why is not None:
                    return why
            return None
        qs = [_many(q) for q in ps]
        p.kids = tuple(ps)  # type: ignore[attr-defined]  (Policy._plan_parts reads each child alone)
        p.reads = _reads(*ps)  # type: ignore[attr-defined]

        def many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
            # each child sees only the candidates every earlier child passed, as in the walk
            out: list = [None] * len(cands)
            where: Sequence[int] = range(len(cands))
            live = cands
            for q in qs:
                whys = q(live, ctx)
                if whys.count(None) == len(whys):
                    continue
                for i, why in zip(where, whys):
                    if why is not None:
                        out[i] = why
                passed = [why is None for why in whys]
                live = list(compress(live, passed))
                if not live:
                    break
                where = list(compress(where, passed))
            return out
        p.many = many  # type: ignore[attr-defined]
        return p

    @op("or")
    def _or(ps: list) -> Pred:
        def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            for q in ps:
                if q(c, ctx) is None:
                    return None
            return "or"
        qs = [_many(q) for q in ps]
        p.reads = _reads(*ps)  # type: ignore[attr-defined]

        def many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
            out: list = ["or"] * len(cands)
            where: Sequence[int] = range(len(cands))
            live = cands
            for q in qs:
                if not live:
                    break
                left_at, left = [], []
                for i, c, why in zip(where, live, q(live, ctx)):
                    if why is None:
                        out[i] = None
                    else:
                        left_at.append(i)
                        left.append(c)
                where, live = left_at, left
            return out
        p.many = many  # type: ignore[attr-defined]
        return p

    @op("not")
    def _not(a: list) -> Pred:
        inner = a[0]
        p: Any = lambda c, ctx: "not" if inner(c, ctx) is None else None  # noqa: E731
        inner_many = _many(inner)
        p.many = lambda cands, ctx: ["not" if why is None else None for why in inner_many(cands, ctx)]
        p.reads = _reads(inner)
        return p

    @op("meets_req")
    def _meets_req(a: list) -> Pred:
        # The request side is worked out once per request object, not per candidate.
        memo: list[Any] = [None]  # one (request, check) tuple, swapped whole

        def check_of(ctx: Mapping[str, Any]) -> RequestCheck:
            request = ctx.get("request") if type(ctx) is dict else (ctx.get("request") if isinstance(ctx, Mapping) else None)
            entry = memo[0]
            if entry is not None and entry[0] is request and request is not None:
                return entry[1]
            check = RequestCheck(request)
            memo[0] = (request, check)
            return check

        def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            check = check_of(ctx)
            try:
                return check(c)
            except TypeError as exc:
                raise EvaluationError("bad_requirements", f"requirements cannot be compared: {exc}") from None

        def many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
            check = check_of(ctx)
            if check.empty:  # a request that asks for nothing (the usual one): check(c) is None for all
                return [None] * len(cands)
            return [check(c) for c in cands]
        p.many = many  # type: ignore[attr-defined]  (refers to check_of, not p: no cycle)
        return p

    @op("scope_matches")
    def _scope(a: list) -> Pred:
        return scope_matches

    @op("is")
    def _is(a: list) -> Pred:
        name = a[0]
        observe = schema.observer(name)
        reason = "is:" + name
        p: Any = lambda c, ctx: None if truthy(observe(c, ctx)) else reason  # noqa: E731
        observe_many = observe.many
        p.many = lambda cands, ctx: [None if v is not None and v is not False else reason
                                     for v in observe_many(cands, ctx)]
        p.reads = observe.reads
        return p

    @op("cmp")
    def _cmp(a: list) -> Pred:
        name, rel, num = a
        observe = schema.observer(name)
        test = _REL[rel]
        reason = "cmp:" + name + ":" + rel

        key = getattr(observe, "first_key", None)
        observe_many, test_many = observe.many, _REL_MANY[rel]

        def on_column(vs: list) -> list:
            if not _NUMBER_TYPES.issuperset(map(type, vs)):
                vs = [_number(v, name) for v in vs]
            return test_many(vs, num, reason)

        def many(cands: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any]) -> list:
            return on_column(observe_many(cands, ctx))
        if key is None:
            def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
                return None if test(_number(observe(c, ctx), name), num) else reason
            p.many = many  # type: ignore[attr-defined]
            p.column, p.on_column = observe_many, on_column  # type: ignore[attr-defined]
            p.reads = observe.reads  # type: ignore[attr-defined]
            return p

        def fast(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            v = c.get(key)
            if v is None:
                v = observe(c, ctx)
            t = type(v)
            if t is not float and t is not int:
                v = _number(v, name)
            return None if test(v, num) else reason
        fast.many = many  # type: ignore[attr-defined]
        fast.column, fast.on_column = observe_many, on_column  # type: ignore[attr-defined]
        fast.reads = observe.reads  # type: ignore[attr-defined]
        return fast

    @op("tier_eq")
    def _tier_eq(a: list) -> Pred:
        tier = a[0]
        return _reading(lambda c, ctx: None if _or_default(c.get("tier"), "fallback") == tier else "tier", _TIER)

    @op("min_tier")
    def _min_tier(a: list) -> Pred:
        floor = tier_rank[a[0]]
        def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            tier = _or_default(c.get("tier"), "fallback")
            # a tier the order does not name ranks 0, whatever it is (a list or an object too)
            return None if (tier_rank.get(tier, 0) if type(tier) is str else 0) >= floor else "min_tier"
        return _reading(p, _TIER)

    @op("family_eq")
    def _family_eq(a: list) -> Pred:
        fam = a[0]
        return _reading(lambda c, ctx: None if c.get("model_family") == fam else "model_family", _FAMILY)

    @op("provider_eq")
    def _provider_eq(a: list) -> Pred:
        pid = a[0]
        return _reading(lambda c, ctx: None if c.get("provider_id") == pid else "provider_id", _PROVIDER)

    @op("served_by_eq")
    def _served_by_eq(a: list) -> Pred:
        route = a[0]
        return _reading(lambda c, ctx: None if served_by(c) == route else "served_by", _SERVED_BY)

    @op("has_cap")
    def _has_cap(a: list) -> Pred:
        cap = a[0]
        reason = "missing_capability:" + cap

        def p(c: Mapping[str, Any], ctx: Mapping[str, Any]) -> str | None:
            caps = c.get("capabilities")
            return None if isinstance(caps, Mapping) and truthy(caps.get(cap)) else reason
        return _reading(p, _CAPABILITIES)

    # ---- Scorer ----------------------------------------------------------
    @op("zero")
    def _zero(a: list) -> Scorer:
        return _reading(lambda pop, ctx: [0] * len(pop), _NOTHING)

    @op("add")
    def _add(ss: list) -> Scorer:
        def s(pop: Sequence[Any], ctx: Mapping[str, Any]) -> list:
            if not ss:
                return [0] * len(pop)
            # 0 + x, then x + y: on doubles as they are, on two integers with the 64-bit wrap
            out = [0.0 + x if type(x) is float else _plus(0, x) for x in ss[0](pop, ctx)]
            for sub in ss[1:]:
                v = sub(pop, ctx)
                out = [x + y if type(x) is float or type(y) is float else _plus(x, y) for x, y in zip(out, v)]
            return out
        return _reading(s, _reads(*ss))

    @op("scale")
    def _scale(a: list) -> Scorer:
        w, inner = a
        if type(w) is float:  # a double weight never meets the integer wrap
            return _reading(lambda pop, ctx: [w * x for x in inner(pop, ctx)], _reads(inner))
        return _reading(lambda pop, ctx: [_mul(w, x) for x in inner(pop, ctx)], _reads(inner))

    @op("gate")
    def _gate(a: list) -> Scorer:
        pred, inner = a

        def s(pop: Sequence[Any], ctx: Mapping[str, Any]) -> list:
            v = inner(pop, ctx)
            return [x if pred(c, ctx) is None else 0 for c, x in zip(pop, v)]
        return _reading(s, _reads(pred, inner))

    @op("neg")
    def _neg(a: list) -> Scorer:
        inner = a[0]
        return _reading(lambda pop, ctx: [1 - x if type(x) is float else _minus(1, x) for x in inner(pop, ctx)],
                        _reads(inner))

    @op("normalize")
    def _normalize(a: list) -> Scorer:
        inner = a[0]

        def s(pop: Sequence[Any], ctx: Mapping[str, Any]) -> list:
            v = inner(pop, ctx)
            lo, hi = math.inf, -math.inf
            for x in v:
                if x < lo:
                    lo = x
                if x > hi:
                    hi = x
            if hi <= lo:
                return [0] * len(v)
            span = _minus(hi, lo)
            doubles = type(lo) is float and type(span) is float
            out = []
            for x in v:
                if x >= hi:
                    out.append(1)
                elif x <= lo:
                    out.append(0)
                else:
                    # on doubles this is _div(_minus(x, lo), span): span > 0, so no division by zero
                    d = (x - lo) / span if doubles and type(x) is float else _div(_minus(x, lo), span)
                    out.append(0 if d != d else d)
            return out
        return _reading(s, _reads(inner))

    @op("clamp")
    def _clamp_scorer(a: list) -> Scorer:
        lo, hi, inner = a
        return _reading(lambda pop, ctx: [_clamp(x, lo, hi) for x in inner(pop, ctx)], _reads(inner))

    @op("field")
    def _field(a: list) -> Scorer:
        name = a[0]
        observe = schema.observer(name)
        key = getattr(observe, "first_key", None)
        if key is None:
            return _reading(lambda pop, ctx: [_number(observe(c, ctx), name) for c in pop], observe.reads)

        def s(pop: Sequence[Any], ctx: Mapping[str, Any]) -> list:
            out = [c.get(key) for c in pop]
            if _NUMBER_TYPES.issuperset(map(type, out)):  # every value a number as stored: nothing to observe
                return out
            for i, v in enumerate(out):
                t = type(v)
                if t is not float and t is not int:
                    out[i] = _number(observe(pop[i], ctx), name)
            return out
        return _reading(s, observe.reads)

    @op("lit")
    def _lit(a: list) -> Scorer:
        n = a[0]
        return _reading(lambda pop, ctx: [n] * len(pop), _NOTHING)

    # ---- Selector --------------------------------------------------------
    @op("argmax")
    def _argmax(a: list) -> Callable:
        return _reading(lambda scored, ctx: _by_score(scored), _NOTHING)

    @op("ordered")
    def _ordered(a: list) -> Callable:
        return _reading(lambda scored, ctx: list(scored), _NOTHING)

    @op("sample")
    def _sample(a: list) -> Callable:
        t = a[0]
        if t < 0:
            t = 0
        q = _div(t, _plus(t, 1))

        def sel(scored: list[Ranked], ctx: Mapping[str, Any]) -> list[Ranked]:
            pool = _by_score(scored)
            weights: list = []
            w: Any = 1
            for _ in pool:
                weights.append(w)
                w = w * q
            rng = lcg(_seed(ctx) or 0)
            out: list[Ranked] = []
            while pool:
                total: Any = 0
                for x in weights:
                    total = total + x
                r = rng() * total
                pick, acc = len(pool) - 1, 0
                for i, x in enumerate(weights):
                    acc = acc + x
                    if r <= acc:
                        pick = i
                        break
                out.append(pool.pop(pick))
                weights.pop(pick)
            return out
        return _reading(sel, _NOTHING)

    @op("chain")
    def _chain(a: list) -> Callable:
        prio: dict[str, int] = {}
        for i, e in enumerate(a[0], start=1):
            provider = e["provider"] if "provider" in e else e["provider_id"]
            model = e["model"] if "model" in e else e["model_family"]
            prio[f"{provider}|{model}"] = i

        def sel(scored: list[Ranked], ctx: Mapping[str, Any]) -> list[Ranked]:
            out = []
            for r in scored:
                c = r.candidate
                p = prio.get(f"{c.get('provider_id')}|{c.get('model_family')}")
                if p is not None:
                    out.append(Ranked(c, -p))
            # Two candidates of one provider/model tie; the reference's sort decides.
            return reference_sort(out, lambda x, y: x.score > y.score)
        return _reading(sel, _PROVIDER | _FAMILY)

    @op("top_k")
    def _top_k(a: list) -> Callable:
        k, inner = int(a[0]), a[1]
        return _reading(lambda scored, ctx: inner(scored, ctx)[:k], _reads(inner))

    @op("prefer")
    def _prefer(a: list) -> Callable:
        pred, inner = a

        def sel(scored: list[Ranked], ctx: Mapping[str, Any]) -> list[Ranked]:
            first, rest = [], []
            for r in inner(scored, ctx):
                (first if pred(r.candidate, ctx) is None else rest).append(r)
            return first + rest
        return _reading(sel, _reads(pred, inner))

    # ---- Xform -----------------------------------------------------------
    @op("id")
    def _id(a: list) -> Xform:
        return _reading(lambda req, c, ctx: req, _NOTHING)

    @op("seq")
    def _seq(xs: list) -> Xform:
        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            for step in xs:
                req = step(req, c, ctx)
            return req
        return _reading(x, _reads(*xs))

    def _setter(name: str, value: Any) -> Xform:
        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            out = _clone(req)
            v = _seed(ctx) if value == "from_ctx" and isinstance(value, str) else value
            if v is None:
                out.pop(name, None)
            else:
                out[name] = v
            return out
        return _reading(x, _NOTHING)

    @op("set_param")
    def _set_param(a: list) -> Xform:
        return _setter(a[0], a[1])

    @op("inject_seed")
    def _inject_seed(a: list) -> Xform:
        return _setter(a[0], "from_ctx")

    @op("clamp_param")
    def _clamp_param(a: list) -> Xform:
        name, lo, hi = a

        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            out = _clone(req)
            v = out.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[name] = _clamp(v, lo, hi)
            return out
        return _reading(x, _NOTHING)

    @op("jitter")
    def _jitter(a: list) -> Xform:
        name, amount = a
        salt = "jitter:" + name

        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            seed = _seed(ctx)
            if seed is None:
                return req
            rng = lcg(substream(seed, salt))
            out = _clone(req)
            base = out.get(name)
            if isinstance(base, (int, float)) and not isinstance(base, bool):
                out[name] = base + (rng() * 2 - 1) * amount
            else:
                out[name] = (rng() * 2 - 1) * amount
            return out
        return _reading(x, _NOTHING)

    def _directive(kind: str, recipe: Any) -> Xform:
        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            out = _clone(req)
            prior = out.get("_filters")
            filters = dict(prior) if isinstance(prior, Mapping) else {}
            entry: dict[str, Any] = {"recipe": recipe}
            seed = _seed(ctx)
            if seed is not None:
                entry["seed"] = seed % MODULUS
            filters[kind] = entry
            out["_filters"] = filters
            return out
        return _reading(x, _NOTHING)

    @op("filter_text")
    def _filter_text(a: list) -> Xform:
        return _directive("text", a[0])

    @op("filter_image")
    def _filter_image(a: list) -> Xform:
        return _directive("image", a[0])

    @op("custom")
    def _custom(a: list) -> Xform:
        fn = customs.get(a[0])
        if fn is None:
            raise EvaluationError("unknown_custom", f"custom transform {a[0]!r} is not registered")
        return fn

    @op("when")
    def _when(a: list) -> Xform:
        pred, inner = a

        def x(req: Any, c: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
            return inner(req, c, ctx) if pred(c, ctx) is None else req
        return _reading(x, _reads(pred, inner))

    # ---- FailPlan --------------------------------------------------------
    @op("always")
    def _always(a: list) -> dict:
        return {"unknown": a[0]}

    @op("override")
    def _override(a: list) -> dict:
        plan, reason, action = a
        out = dict(plan)
        out[reason] = action
        return out

    # ---- Policy ----------------------------------------------------------
    @op("policy")
    def _policy(a: list) -> Policy:
        return Policy(filter=a[0], scorer=a[1], selector=a[2], xform=a[3], failplan=a[4])

    missing = set(OPS) - set(alg)
    assert not missing, f"default algebra lacks {missing}"
    return alg


def _or_default(v: Any, default: Any) -> Any:
    return default if v is None or v is False else v


def served_by(cand: Mapping[str, Any]) -> Any:
    """The route that serves a candidate: its marketplace peer, else its provider."""
    offer = cand.get("offer")
    if isinstance(offer, Mapping):
        peer = offer.get("peer_id")
        if peer is not None and peer is not False:
            return peer
    return cand.get("provider_id")
