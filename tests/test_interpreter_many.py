"""The filter over a whole list at once (``Pred.many``) against the walk one candidate at a time.

``Policy.plan`` runs a predicate's vector form when it has one and falls back to the walk when
that raises. Both must give the same reasons whenever the walk returns, and a plan must be the
same (or fail with the same error) either way. The populations here include what a catalog or a
caller may put where a number belongs: strings, booleans, nulls, NaN, odd nesting.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import EvaluationError, Policy
from unhardcoded.lang.compiler import Compiler
from unhardcoded.lang.interpreter import Ranked, _many, default_algebra, evaluate
from unhardcoded.lang.signature import OPS

from . import strategies as S
from .collector import left_in_cycles

COMPILER = Compiler(S.SCHEMA)
ALGEBRA = default_algebra(S.SCHEMA)


def as_written(term: list):
    """A term evaluated in the order written (no normal form), so a test can say which child runs first."""
    return evaluate(term, ALGEBRA)

odd_values = st.one_of(st.none(), st.booleans(), st.just("3"), st.just(math.nan), st.just(math.inf),
                       st.just([]), st.just({}), st.integers(-5, 5), st.floats(-10, 10))


@st.composite
def odd_population(draw: st.DrawFn) -> list:
    """A population where some fields hold what no number should be."""
    pop = draw(S.population(max_size=8))
    for c in pop:
        for key in draw(st.lists(st.sampled_from([*S.NUM_FIELDS, *S.BOOL_FIELDS, "capabilities", "tier"]),
                                 max_size=2)):
            c[key] = draw(odd_values)
    return pop


@st.composite
def odd_context(draw: st.DrawFn) -> dict:
    x = draw(S.context())
    if draw(st.integers(0, 4)) == 0:
        x["state"] = draw(st.sampled_from([[], None, {}, {"breakers": [], "disabled": None, "credits": {"p1": "x"}}]))
    return x


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return ("raised", type(exc).__name__)


def walk_only(policy: Policy) -> Policy:
    """The same policy with a filter that has no vector form: the plan walks one by one."""
    keep = policy.filter
    return Policy(lambda c, x: keep(c, x), policy.scorer, policy.selector, policy.xform, policy.failplan)


def plan_view(policy: Policy, pop: list, x: dict):
    try:
        plan = policy.plan(pop, x)
    except EvaluationError as exc:
        return ("error", exc.code, str(exc))
    return ([(id(r.candidate), r.score if r.score == r.score else "nan") for r in plan.ordered],
            [(r.provider, r.model, r.reason, id(r.candidate)) for r in plan.rejected])


@settings(max_examples=400)
@given(S.pred(), st.one_of(S.population(max_size=8), odd_population()), st.one_of(S.context(), odd_context()))
def test_a_vector_form_returns_what_the_walk_returns_and_raises_where_it_raises(term, pop, x) -> None:
    pred = COMPILER.compile(term).carrier
    walk = outcome(lambda: [pred(c, x) for c in pop])
    vector = outcome(_many(pred), pop, x)
    if walk[0] == "ok":
        assert vector == walk
    else:
        assert vector[0] == "raised"


@settings(max_examples=300)
@given(S.policy(), st.one_of(S.population(max_size=8), odd_population()), st.one_of(S.context(), odd_context()))
def test_a_plan_is_the_same_with_and_without_the_vector_forms(term, pop, x) -> None:
    policy = COMPILER.compile(term).policy
    assert plan_view(policy, pop, x) == plan_view(walk_only(policy), pop, x)


def test_an_and_shows_each_child_only_the_candidates_the_earlier_ones_passed() -> None:
    # the second child would fail on a string price; the first rejects that candidate, so the
    # walk never asks the second about it, and neither does the vector form
    pred = as_written(["and", ["provider_eq", "p1"], ["cmp", "price_in", "le", 5]])
    pop = [{"provider_id": "p1", "model_family": "m1", "price_in": 1.0},
           {"provider_id": "p2", "model_family": "m1", "price_in": "cheap"},
           {"provider_id": "p1", "model_family": "m2", "price_in": 9}]
    x = {"request": {}, "state": {}}
    want = [None, "provider_id", "cmp:price_in:le"]
    assert [pred(c, x) for c in pop] == want
    assert pred.many(pop, x) == want


def test_a_fault_the_vector_form_meets_is_reported_as_the_walk_reports_it() -> None:
    # the walk meets the bad value of the first candidate in the second child first: it raises
    # bad_observation for 'context', never reaching the second candidate's bad price
    term = ["policy", ["and", ["cmp", "price_in", "le", 5], ["cmp", "context", "ge", 100]], ["zero"],
            ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]
    policy = as_written(term)
    pop = [{"provider_id": "p1", "model_family": "m1", "price_in": 1.0, "capabilities": {"context": "big"}},
           {"provider_id": "p2", "model_family": "m1", "price_in": True}]
    x = {"request": {}, "state": {}}
    got = plan_view(policy, pop, x)
    assert got == plan_view(walk_only(policy), pop, x)
    assert got[0] == "error" and got[1] == "bad_observation" and "'context'" in got[2]


def test_state_fields_are_read_per_provider() -> None:
    pred = as_written(["and", ["not", ["is", "breaker_open"]], ["not", ["is", "disabled"]],
                       ["cmp", "credits", "ge", 1]])
    pop = [{"provider_id": p, "model_family": "m"} for p in ("p1", "p2", "p3", "p4")]
    x = {"request": {}, "state": {"breakers": {"p1": True, "p4": False}, "disabled": {"p2": {"kind": "auth_error"}},
                                  "credits": {"p3": 0.5, "p4": 2}}}
    want = ["not", "not", "cmp:credits:ge", None]
    assert [pred(c, x) for c in pop] == want
    assert pred.many(pop, x) == want


@settings(max_examples=100)
@given(S.policy())
def test_a_compiled_policy_is_freed_without_the_cycle_collector(term) -> None:
    # a router that sees a new policy per request evicts one per request from its caches; a
    # reference cycle among the closures leaves each to the cycle collector instead (measured
    # with one in place, a new policy per request at c=64: 25-45 MB more resident, and over
    # twice the young collections in process)
    pop = [{"provider_id": "p1", "model_family": "m1", "price_in": 1.0}]
    x = {"request": {}, "state": {}}
    with left_in_cycles() as left:
        compiler = Compiler(S.SCHEMA)
        compiler.compile(term).policy.plan(pop, x)
        del compiler
    assert left == []


@st.composite
def restamped(draw: st.DrawFn, pop: list) -> list:
    """``pop`` with some candidates replaced by changed copies (as a re-stamp replaces the routes
    that served), odd values included; the others the same objects."""
    out = list(pop)
    for i in draw(st.lists(st.integers(0, max(0, len(pop) - 1)), max_size=3, unique=True)) if pop else []:
        if draw(st.booleans()):  # another reading of the same route altogether
            out[i] = draw(S.candidate(pop[i]["provider_id"], pop[i]["model_family"]))
            continue
        c = dict(pop[i])
        for key in draw(st.lists(st.sampled_from(["latency_ms", "tok_s", "success_rate", "price_in", "tier",
                                                  "capabilities", "has_tee"]), min_size=1, max_size=3)):
            c[key] = draw(st.one_of(odd_values, st.floats(0, 5000), st.sampled_from(["fallback", "partner"])))
        out[i] = c
    return out


OBSERVED = frozenset(("latency_ms", "tok_s", "success_rate"))


@settings(max_examples=400)
@given(S.policy(), st.one_of(S.population(max_size=8), odd_population()), st.one_of(S.context(), odd_context()),
       st.sampled_from([frozenset(), OBSERVED]), st.data())
def test_a_plan_from_a_prior_is_the_plan_made_afresh(term, pop, x, volatile, data) -> None:
    # with volatile keys the plan before may come back as it is: its candidates are then the
    # earlier objects, which must equal the pool's in every other key, at the same places
    policy = COMPILER.compile(term).policy
    try:
        plan0, reasons = policy.plan_and_reasons(pop, x)
    except EvaluationError:
        return  # no plan, so nothing a router would keep as a prior
    assert list(reasons) == [policy.filter(c, x) for c in pop]
    later = data.draw(restamped(pop))
    place = {id(c): i for i, c in enumerate(pop)} | {id(c): i for i, c in enumerate(later)}

    def steady(c):  # what a reader of the plan may read of its candidate
        return sorted((k, repr(v)) for k, v in c.items() if k not in volatile)

    def view(plan):
        for r in [*plan.ordered, *plan.rejected]:
            assert steady(r.candidate) == steady(later[place[id(r.candidate)]])
        return ([(place[id(r.candidate)], r.score if r.score == r.score else "nan") for r in plan.ordered],
                [(r.provider, r.model, r.reason, place[id(r.candidate)]) for r in plan.rejected])

    def from_prior():
        plan, again = policy.plan_and_reasons(later, x, None, (pop, reasons, plan0), volatile)
        return view(plan), list(again)

    def afresh():
        return view(policy.plan(later, x)), [policy.filter(c, x) for c in later]

    def outcome_of(fn):
        try:
            return ("ok", fn())
        except EvaluationError as exc:
            return ("error", exc.code, str(exc))
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            return ("raised", type(exc).__name__)
    assert outcome_of(from_prior) == outcome_of(afresh)


@settings(max_examples=400)
@given(st.one_of(S.scorer(), S.selector(), S.xform()), S.population(max_size=6), S.context(), st.data())
def test_what_a_carrier_says_it_reads_is_all_it_reads(term, pop, x, data) -> None:
    # a key outside a scorer's, selector's or transform's ``reads`` may change in any candidate
    # without changing what it gives (Policy.plan_and_reasons returns the plan before on that)
    carrier = COMPILER.compile(term).carrier
    keys = getattr(carrier, "reads", None)
    if keys is None or not pop:
        return
    others = [k for k in ["price_in", "price_out", "latency_ms", "tok_s", "success_rate", "tier", "capabilities",
                          "provider_id", "model_family", "offer", "bench_x", "has_tee", "scope"] if k not in keys]
    if not others:
        return
    i = data.draw(st.integers(0, len(pop) - 1))
    changed = dict(pop[i])
    for k in data.draw(st.lists(st.sampled_from(others), min_size=1, max_size=3, unique=True)):
        changed[k] = data.draw(st.one_of(odd_values, st.floats(0, 5000), st.sampled_from(["partner", "p3", "m2"])))
    later = [*pop[:i], changed, *pop[i + 1:]]
    sort = OPS[term[0]].out

    def run(cands):
        if sort == "Scorer":
            return [repr(v) for v in carrier(cands, x)]
        if sort == "Selector":
            return [(cands.index(r.candidate), repr(r.score)) for r in carrier([Ranked(c, j) for j, c in enumerate(cands)], x)]
        return [repr(carrier({"temperature": 0.5, "max_tokens": 9}, c, x)) for c in cands]
    assert outcome(run, pop) == outcome(run, later)


def test_a_prior_asks_the_filter_only_about_the_candidates_that_changed() -> None:
    inner = COMPILER.compile(["policy", ["cmp", "latency_ms", "le", 100], ["neg", ["field", "latency_ms"]],
                              ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]).policy
    asked: list = []

    def keep(c, x):
        asked.append(c["provider_id"])
        return inner.filter(c, x)

    def many(cands, x):
        asked.append("all at once")
        return inner.filter.many(cands, x)
    keep.many = many
    policy = Policy(keep, inner.scorer, inner.selector, inner.xform, inner.failplan)
    pop = [{"provider_id": f"p{i}", "model_family": "m", "latency_ms": 10.0 * i} for i in range(40)]
    x = {"request": {}, "state": {}}
    plan, reasons = policy.plan_and_reasons(pop, x)
    assert asked == ["all at once"] and [r.candidate["provider_id"] for r in plan.ordered][:2] == ["p0", "p1"]
    later = list(pop)
    later[0] = {**pop[0], "latency_ms": 500.0}   # the best route got slow: now rejected
    later[30] = {**pop[30], "latency_ms": 5.0}   # a rejected one got fast: now the best
    asked.clear()
    plan2, reasons2 = policy.plan_and_reasons(later, x, None, (pop, reasons, None))
    assert asked == ["p0", "p30"]
    assert [r.candidate["provider_id"] for r in plan2.ordered][:2] == ["p30", "p1"]
    assert reasons2[0] == "cmp:latency_ms:le" and reasons2[30] is None
    assert [(r.provider, r.reason) for r in plan2.rejected][0] == ("p0", "cmp:latency_ms:le")
    # a pool that changed in many places is read whole, not asked one by one
    asked.clear()
    policy.plan_and_reasons([dict(c) for c in pop], x, None, (pop, reasons, None))
    assert asked == ["all at once"]
