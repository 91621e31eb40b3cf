"""What a policy built per request reuses from the ones before changes nothing it decides.

``Compiler`` remembers admitted, normalised and evaluated subterms by their JSON text (down to
``admission.MEMO_DEPTH``), so a policy built per request pays only for what it changed. Here a
compiler warmed on other policies that share parts with the one compiled is held to a compiler
that has seen nothing: the same normal form, encoding, fingerprint and identity, the same plan
over a population, the same refusal with the same code, path and message.

``Policy.plan(..., parts)`` reuses, over one population and context, the readings of carriers
those policies share; plans made so are held to plans made without it.
"""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import AdmissionError
from unhardcoded.lang.admission import MAX_DEPTH, MAX_NODES, MEMO_DEPTH
from unhardcoded.lang.compiler import Compiler, constrain
from unhardcoded.lang.encoding import lane_fingerprint
from unhardcoded.lang.interpreter import _SEEN, PlanParts

from . import strategies as S
from .test_interpreter_many import odd_context, odd_population

NC = {"action": "next_candidate"}


def view(c):
    return (c.sort, c.term, c.encoding, c.fingerprint, c.identity)


def outcome(fn):
    try:
        c = fn()
    except AdmissionError as exc:
        return ("refused", exc.code, exc.path, str(exc))
    return ("ok", view(c))


def hybrids(a: list, b: list) -> list[list]:
    """Policies made of the parts of two: each part in its own slot, and the filters nested one
    level deeper under an ``and`` or a ``not`` (the same subterms at other depths)."""
    return [
        ["policy", a[1], b[2], a[3], b[4], a[5]],
        ["policy", b[1], a[2], b[3], a[4], b[5]],
        ["policy", ["and", a[1], b[1]], a[2], a[3], a[4], a[5]],
        ["policy", ["not", ["or", b[1], a[1]]], b[2], b[3], b[4], b[5]],
        ["policy", a[1], ["add", a[2], ["scale", 0.5, b[2]]], a[3], a[4], ["override", b[5], "timeout", NC]],
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(S.policy(), min_size=2, max_size=3), S.population(max_size=6), S.context(),
       st.sampled_from([4, 64, 1024]))
def test_a_warm_compiler_compiles_policies_sharing_parts_as_a_fresh_one(policies, pop, x, size) -> None:
    warm = Compiler(S.SCHEMA, subterm_cache_size=size)  # 4: the memos start again every few subterms
    terms = [t for a in policies for b in policies for t in hybrids(a, b)]
    for t in terms:
        got = warm.compile(copy.deepcopy(t))
        fresh = Compiler(S.SCHEMA).compile(t)
        assert view(got) == view(fresh)
        assert outcome_of_plan(got.policy, pop, x, None) == outcome_of_plan(fresh.policy, pop, x, None)
        assert got.policy.failplan == fresh.policy.failplan
        request = {"temperature": 0.5, "max_tokens": 10}
        for cand in pop[:2]:
            assert got.policy.xform(dict(request), cand, x) == fresh.policy.xform(dict(request), cand, x)
    assert len(warm._admitted.data) <= size and len(warm._normal.data) <= size


@settings(max_examples=100, deadline=None)
@given(st.lists(S.policy(), min_size=2, max_size=2), S.pred(), S.population(max_size=6), S.context())
def test_a_constrained_policy_from_a_warm_compiler_is_the_general_compile(policies, envelope, pop, x) -> None:
    warm = Compiler(S.SCHEMA)
    for t in hybrids(*policies):
        reused = warm.compile_constrained(warm.compile(copy.deepcopy(t)), t, envelope)
        general = Compiler(S.SCHEMA).compile(constrain(t, envelope), want="Policy")
        assert view(reused) == view(general)
        assert outcome_of_plan(reused.policy, pop, x, None) == outcome_of_plan(general.policy, pop, x, None)


BAD_VALUES = [float("nan"), math.inf, None, "x", True, [], {}, ["no_such_op"], ["cmp"], -1, 0.5,
              ["field", "no_such_field"], ["is", "price_in"], "NFKC"]


def positions(t, path=()):
    """Every position inside a term: (path, value)."""
    yield path, t
    if isinstance(t, list):
        for i, v in enumerate(t):
            yield from positions(v, path + (i,))
    elif isinstance(t, dict):
        for k, v in t.items():
            yield from positions(v, path + (k,))


def replaced(t, path, value):
    t = copy.deepcopy(t)
    if not path:
        return value
    cur = t
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return t


@settings(max_examples=200, deadline=None)
@given(st.lists(S.policy(), min_size=2, max_size=2), st.data())
def test_a_warm_compiler_refuses_a_broken_policy_as_a_fresh_one(policies, data) -> None:
    """Break one position of a policy whose parts the compiler has admitted before: the refusal
    (code, path, message) is the one a compiler that has seen nothing gives."""
    warm = Compiler(S.SCHEMA)
    terms = hybrids(*policies)
    for t in terms:
        warm.compile(copy.deepcopy(t))
    t = data.draw(st.sampled_from(terms))
    path, _ = data.draw(st.sampled_from(list(positions(t))))
    broken = replaced(t, path, data.draw(st.sampled_from(BAD_VALUES)))
    want = outcome(lambda: Compiler(S.SCHEMA).compile(copy.deepcopy(broken), want="Policy", path=("policy_ir",)))
    assert outcome(lambda: warm.compile(broken, want="Policy", path=("policy_ir",))) == want


def nested_not(inner: list, n: int) -> list:
    for _ in range(n):
        inner = ["not", inner]
    return inner


def policy_with(filt: list) -> list:
    return ["policy", filt, ["zero"], ["argmax"], ["id"], ["always", NC]]


def refused_alike(warm_on: list[list], term: list, code: str) -> None:
    """A compiler warmed on ``warm_on`` refuses ``term`` as a fresh one does, with ``code``."""
    warm = Compiler(S.SCHEMA)
    for t in warm_on:
        warm.compile(t)
    want = outcome(lambda: Compiler(S.SCHEMA).compile(term, path=("policy_ir",)))
    assert want[0:2] == ("refused", code)
    assert outcome(lambda: warm.compile(term, path=("policy_ir",))) == want


def test_a_remembered_subterm_too_deep_for_where_it_is_now_is_refused_where_the_walk_refuses() -> None:
    """A filter admitted at depth 2 fits; the same filter one level deeper under the root's
    children breaks the depth bound: the memo must not let it through, and the error is the walk's."""
    deep = nested_not(["cmp", "price_in", "le", 5], MAX_DEPTH - 2)  # height MAX_DEPTH - 1: fits at depth 2
    refused_alike([policy_with(deep)], policy_with(["and", deep, ["top"]]), "too_deep")


def test_a_remembered_subterm_past_the_node_bound_with_its_neighbours_is_refused_where_the_walk_refuses() -> None:
    """A filter of ~3,000 nodes is admissible; two of it in one policy are past MAX_NODES."""
    big = ["or", *[["cmp", "price_in", "le", i] for i in range(MAX_NODES * 3 // 4)]]
    refused_alike([policy_with(big)], policy_with(["and", big, copy.deepcopy(big)]), "too_large")


def test_subterms_are_remembered_only_down_to_the_memo_depth_and_not_the_root() -> None:
    t = ["policy", nested_not(["is", "has_tee"], 6), ["zero"], ["argmax"], ["id"], ["always", NC]]
    c = Compiler(S.SCHEMA)
    c.compile(t)
    import orjson
    keys = set(c._admitted.data)
    assert orjson.dumps(t) not in keys                                  # the root: the text cache has it
    assert orjson.dumps(t[1]) in keys and orjson.dumps(["zero"]) in keys  # depth 2
    depth = {orjson.dumps(nested_not(["is", "has_tee"], 6 - k)): 2 + k for k in range(7)}
    assert {d for k, d in depth.items() if k in keys} == set(range(2, MEMO_DEPTH + 1))


def test_a_new_threshold_reuses_the_rest_of_the_policy() -> None:
    """What the memo is for: the second policy differs in one threshold; its scorer, selector,
    transform and FailPlan are the first one's evaluated carriers, and only the new parts are new."""
    def policy(threshold: float) -> list:
        return ["policy", ["and", ["cmp", "price_in", "le", threshold], ["is", "has_tee"]],
                ["normalize", ["field", "context"]], ["top_k", 2, ["argmax"]], ["id"], ["always", NC]]
    c = Compiler(S.SCHEMA)
    a, b = c.compile(policy(5)), c.compile(policy(6))
    assert a.identity != b.identity
    assert a.policy.scorer is b.policy.scorer and a.policy.selector is b.policy.selector
    assert a.policy.xform is b.policy.xform
    assert a.term[2] is b.term[2]                                         # one shared normal form
    assert view(b) == view(Compiler(S.SCHEMA).compile(policy(6)))


@pytest.mark.parametrize("s", ["", "(", "((", "a(", "sigma-pol/v2:(and (x) (y))", "é(中(" * 300, "(" * 5000,
                               "x" * 5000 + "(", "(" + "y" * 3000])
def test_the_fingerprint_by_stretches_is_the_definition_seen_or_not(s: str) -> None:
    from .test_normalform import lanes
    assert lane_fingerprint(s) == lanes(s) == lane_fingerprint(s)  # the second time from remembered stretches


def test_the_fingerprints_stretch_memo_is_bounded() -> None:
    from unhardcoded.lang import encoding
    for i in range(encoding._STRETCH_COUNT + 10):
        lane_fingerprint(f"(cmp {i})")
    assert len(encoding._STRETCHES) <= encoding._STRETCH_COUNT


def test_a_subterm_remembered_inside_another_counts_towards_that_ones_height() -> None:
    """D (height 61) is remembered at depth 2; then A = and(D, top) is walked with D found in the
    memo: A's height must be D's plus one, or A, remembered in its turn, would later be let in
    at depth 4, where it is too deep."""
    d = nested_not(["is", "has_tee"], 60)
    a = ["and", d, ["top"]]
    refused_alike([policy_with(d), policy_with(a)], policy_with(["not", ["or", a, ["top"]]]), "too_deep")


# ---- plans sharing parts over one population and context -------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(S.policy(), min_size=2, max_size=3), S.pred(),
       st.one_of(S.population(max_size=8), odd_population()), st.one_of(S.context(), odd_context()))
def test_plans_sharing_parts_equal_plans_made_alone(policies, envelope, pop, x) -> None:
    """Policies (and the same under an envelope, whose filter is a top-level ``and`` of shared
    children) planned one after another with one ``parts`` memo decide as each does alone,
    errors included."""
    c = Compiler(S.SCHEMA)
    parts = PlanParts()
    for t in [t for a in policies for b in policies for t in hybrids(a, b)]:
        sent = c.compile(copy.deepcopy(t))
        for compiled in (sent, c.compile_constrained(sent, t, envelope)):
            alone = outcome_of_plan(compiled.policy, pop, x, None)
            assert outcome_of_plan(compiled.policy, pop, x, parts) == alone
            assert outcome_of_plan(compiled.policy, pop, x, parts) == alone  # from the memo this time


def outcome_of_plan(policy, pop, x, parts):
    """What planning gives: the plan (with score types), the evaluation error, or what else it
    raises (an odd value can raise a TypeError in the walk too: the two must raise alike)."""
    from unhardcoded.lang import EvaluationError
    try:
        plan = policy.plan(pop, x, parts)
    except EvaluationError as exc:
        return ("error", exc.code, str(exc))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return ("raised", type(exc).__name__)
    return (([(id(r.candidate), r.score if r.score == r.score else "nan") for r in plan.ordered],
             [(r.provider, r.model, r.reason, id(r.candidate)) for r in plan.rejected]),
            [type(r.score).__name__ for r in plan.ordered])


def test_a_child_that_fails_only_where_an_earlier_child_rejects_leaves_the_plan_to_the_walk() -> None:
    """Read alone, the second child meets a price that is not a number on a candidate the first
    child rejects; the walk never asks it there. The plan is the walk's, not an error."""
    pop = [{"provider_id": "p1", "model_family": "a", "served_model_id": "a", "capabilities": {"context": 10},
            "price_in": "not a number"},
           {"provider_id": "p2", "model_family": "b", "served_model_id": "b", "capabilities": {"context": 9000},
            "price_in": 1}]
    term = ["policy", ["and", ["cmp", "context", "ge", 1000], ["cmp", "price_in", "le", 5]], ["zero"], ["argmax"],
            ["id"], ["always", NC]]
    policy = Compiler(S.SCHEMA).compile(term).policy
    parts = PlanParts()
    alone = outcome_of_plan(policy, pop, {}, None)
    assert alone[0][1] == [("p1", "a", "cmp:context:ge", id(pop[0]))]   # rejected, no error
    assert outcome_of_plan(policy, pop, {}, parts) == alone


def test_plans_sharing_parts_share_the_readings_of_shared_children() -> None:
    """Each policy differs from the one before in one threshold. The first is planned by the
    walk (its children are new: they are only marked seen); from the second on, the children
    seen before are read over the whole list once, and policies that decide alike share one
    plan; only the new child is read each time."""
    def policy(threshold: float):
        return c.compile(["policy", ["and", ["cmp", "price_in", "le", threshold], ["is", "has_tee"]],
                          ["field", "context"], ["argmax"], ["id"], ["always", NC]]).policy
    c = Compiler(S.SCHEMA)
    pop = [{"provider_id": f"p{i}", "model_family": "m", "served_model_id": "m", "price_in": i, "has_tee": i % 2 == 0,
            "capabilities": {"context": 1000 * i}} for i in range(6)]
    parts = PlanParts()
    a, b, d = policy(4), policy(4.5), policy(4.25)          # the same routes pass all three
    assert a.filter.kids[1] is b.filter.kids[1] is d.filter.kids[1]   # is has_tee: one carrier
    pa, pb, pd = a.plan(pop, {}, parts), b.plan(pop, {}, parts), d.plan(pop, {}, parts)
    assert [r.candidate for r in pa.ordered] == [r.candidate for r in pb.ordered] == [pop[4], pop[2], pop[0]]
    assert pb is pd and pa is not pb                                  # the walk's plan, then one shared plan
    read = {k for k, v in parts.data.items() if callable(k) and isinstance(v, list)}
    column = b.filter.kids[0].column                                  # price_in's values over the list
    assert column is d.filter.kids[0].column is a.filter.kids[0].column
    # kept: what is read for the second time (has_tee's reading, price_in's column); each
    # threshold's own child is read and only marked (one that came back would be kept then)
    assert read == {b.filter.kids[1], column}
    assert all(parts.data[p.filter.kids[0]] is _SEEN for p in (a, b, d))
    assert parts.data[column] == [0, 1, 2, 3, 4, 5]                   # read once, for both thresholds


def test_a_big_catalog_keeps_its_parts_for_one_new_threshold_after_another() -> None:
    """One plan's own readings over 20,000 candidates (each child's, the runs, the reasons, the
    survivors) exceed the fixed budget of list slots; sized by the list, the parts keep them, so
    policies that move a threshold keep sharing one plan instead of each taking the walk, and a
    new threshold's own reading is not kept (the parts do not fill with one-off readings)."""
    c = Compiler(S.SCHEMA)
    n = 20_000
    pop = [{"provider_id": f"p{i}", "model_family": "m", "served_model_id": "m", "price_in": i % 97,
            "has_tee": i % 2 == 0, "capabilities": {"context": i}} for i in range(n)]

    def policy(threshold: float):
        return c.compile(["policy", ["and", ["cmp", "price_in", "le", threshold], ["is", "has_tee"],
                                     ["cmp", "context", "ge", 100], ["cmp", "price_in", "ge", 1]],
                          ["field", "context"], ["top_k", 3, ["argmax"]], ["id"], ["always", NC]]).policy
    for parts, shared in ((PlanParts(n), True), (PlanParts(), False)):
        plans = [policy(50 + k * 1e-3).plan(pop, {}, parts) for k in range(8)]
        alone = policy(50).plan(pop, {})
        assert all([r.candidate for r in p.ordered] == [r.candidate for r in alone.ordered] for p in plans)
        assert all(p is plans[2] for p in plans[2:]) is shared
    assert parts.budget == PlanParts.WEIGHT and PlanParts(n).budget == PlanParts.PER_LIST * n


def test_comparisons_on_one_field_read_its_column_once_and_decide_as_alone() -> None:
    """Thresholds moved on one field, in either direction and across the relations: each
    comparison after the first reads no candidate (the field's column is remembered in the
    parts), and every plan is the plan the policy makes alone, also where comparisons on
    another field come in between (each field has its own column)."""
    c = Compiler(S.SCHEMA)
    pop = [{"provider_id": f"p{i}", "model_family": "m", "served_model_id": "m", "price_in": i % 7 - 0.5 * i,
            "has_tee": i % 3 != 0, "capabilities": {"context": 1000 * i}} for i in range(40)]
    reads = []
    parts = PlanParts()
    steps = [("price_in", "le", 2), ("price_in", "le", 2.5), ("price_in", "gt", -3), ("context", "ge", 9000),
             ("price_in", "ge", 0), ("context", "lt", 30000), ("price_in", "lt", 1), ("price_in", "eq", 3),
             ("price_in", "ne", 3)]
    for k, (name, rel, bound) in enumerate(steps):
        policy = c.compile(["policy", ["and", ["cmp", name, rel, bound], ["is", "has_tee"]],
                            ["field", "context"], ["top_k", 3, ["argmax"]], ["id"], ["always", NC]]).policy
        column = policy.filter.kids[0].column
        if column in parts.data:
            reads.append(k)
        shared, alone = policy.plan(pop, {}, parts), policy.plan(pop, {})
        assert [(r.candidate["provider_id"], r.score) for r in shared.ordered] == \
            [(r.candidate["provider_id"], r.score) for r in alone.ordered]
        assert [(x.provider, x.reason) for x in shared.rejected] == [(x.provider, x.reason) for x in alone.rejected]
    # the first is walked, the second reads price_in's column, the first on context reads its own
    assert reads == [2, 4, 5, 6, 7, 8]


def test_a_policy_with_several_new_children_is_planned_by_the_walk() -> None:
    """Two children not seen over these inputs before: reading both over the whole list costs
    more than the walk's narrowing, so the walk plans it and nothing is read ahead."""
    c = Compiler(S.SCHEMA)
    term = ["policy", ["and", ["cmp", "price_in", "le", 3], ["is", "has_tee"]], ["zero"], ["argmax"], ["id"],
            ["always", NC]]
    policy = c.compile(term).policy
    pop = [{"provider_id": f"p{i}", "model_family": "m", "served_model_id": "m", "price_in": i, "has_tee": True}
           for i in range(5)]
    parts = PlanParts()
    plan = policy.plan(pop, {}, parts)
    assert [r.candidate for r in plan.ordered] == pop[:4]
    assert not [v for v in parts.data.values() if isinstance(v, list)]


def test_one_observer_per_field_of_a_schema_and_its_own_default() -> None:
    from unhardcoded.lang.fields import FieldDecl, Schema
    a = Schema([FieldDecl("bench", "Num", 0.5)])
    b = Schema([FieldDecl("bench", "Num", 0.25)])
    assert a.observer("bench") is a.observer("bench")
    assert a.observer("bench")({}, {}) == 0.5 and b.observer("bench")({}, {}) == 0.25  # not shared across schemas
    assert a.observer("bench").many([{"bench": 2}, {}], {}) == [2, 0.5]


def test_plan_parts_are_bounded_by_what_they_hold() -> None:
    """A reading is as long as the candidate list: the memo starts again before it would hold
    more list slots than its budget, however few its entries."""
    parts = PlanParts()
    big = [None] * (PlanParts.WEIGHT // 3 + 1)
    for i in range(4):
        parts.put(("reading", i), big, len(big))
        assert parts.weight <= PlanParts.WEIGHT
    assert len(parts.data) < 4
    for i in range(PlanParts.ENTRIES + 5):
        parts.put(i, None, 1)
    assert len(parts.data) <= PlanParts.ENTRIES


def test_a_term_orjson_cannot_write_is_compiled_without_the_memo_for_that_part() -> None:
    """An integer past 64 bits is an admissible bound from Python (it is finite), but orjson
    cannot write it, so it has no text key: those subterms are walked, and the constrained
    compile still equals the general one."""
    big = ["cmp", "price_in", "le", 2 ** 70]
    term = ["policy", ["and", big, ["is", "has_tee"]], ["zero"], ["argmax"], ["id"], ["always", NC]]
    envelope = ["not", ["is", "disabled"]]
    c = Compiler(S.SCHEMA)
    sent = c.compile(copy.deepcopy(term))
    assert view(sent) == view(Compiler(S.SCHEMA).compile(term))
    reused = c.compile_constrained(sent, term, envelope)
    assert view(reused) == view(Compiler(S.SCHEMA).compile(constrain(term, envelope), want="Policy"))
