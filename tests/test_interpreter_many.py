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
from unhardcoded.lang.interpreter import _many, default_algebra, evaluate

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
