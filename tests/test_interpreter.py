"""The reference semantics, operation by operation (SIGMA-POL §3, §5, §7).

Initiality reduces conformance to a per-operation checklist, so this file
walks the signature: every Pred with its rejection reason, the observation
vocabulary with its defaults, meets_req in its evaluation order, every scorer,
selector, transform and the FailPlan. Expected numbers are derived in the
comments (and the PRNG by a loop written here).
"""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import (
    AdmissionError, EvaluationError, FieldDecl, Policy, Ranked, Schema, check, classify, compile_policy,
    compile_term, default_algebra, evaluate, loads_strict,
)
from unhardcoded.lang.compiler import Compiler
from unhardcoded.lang.prng import lcg, salt_hash, substream

from . import strategies as S

M = 2147483647
NC = {"action": "next_candidate"}


def cand(**over) -> dict:
    c = {"provider_id": "p1", "model_family": "m1", "served_model_id": "m1",
         "capabilities": {"context": 8000}, "tier": "partner"}
    c.update(over)
    return c


def ctx(**over) -> dict:
    c = {"request": {"requirements": {}}, "state": {"ema": {}, "breakers": {}, "disabled": {}, "credits": {}},
         "now_ms": 0}
    c.update(over)
    return c


def ev(term, schema=None, customs=None):
    """Evaluate a term as written (no normal form), after admission."""
    check(term, schema, customs=tuple((customs or {}).keys()))
    return evaluate(term, default_algebra(schema, customs))


def reason(term, c=None, x=None, schema=None):
    return ev(term, schema)(c if c is not None else cand(), x if x is not None else ctx())


def pol(pred=None, scorer=None, selector=None, xform=None, failplan=None) -> list:
    return ["policy", pred or ["top"], scorer or ["zero"], selector or ["argmax"], xform or ["id"],
            failplan or ["always", NC]]


def scores(term, pop, x=None, schema=None) -> list:
    return ev(term, schema)(pop, x if x is not None else ctx())


def ids(ranked) -> list:
    return [r.candidate["provider_id"] for r in ranked]


def ranked(*scores_) -> list:
    return [Ranked(cand(provider_id=f"p{i}"), s) for i, s in enumerate(scores_, start=1)]


def minstd(seed) -> list:
    """The pinned generator, written out: seed mod M (0 -> M-1), four warm-up steps, then s/M."""
    s = (0 if seed is None else seed) % M
    if s <= 0:
        s += M - 1
    for _ in range(4):
        s = s * 16807 % M
    out = []
    for _ in range(8):
        s = s * 16807 % M
        out.append(s / M)
    return out


def salted(seed, salt: str) -> int:
    h = 0
    for b in salt.encode("utf-8"):
        h = (h * 31 + b) % M
    return ((seed or 0) + h) % M


# --------------------------------------------------------------------------
# Pred: every op with its rejection reason
# --------------------------------------------------------------------------

@pytest.mark.parametrize("term, c, want", [
    (["top"], cand(), None),
    (["bot"], cand(), "bot"),
    (["or", ["family_eq", "m9"], ["tier_eq", "fallback"]], cand(), "or"),   # or names itself, not its children
    (["or", ["family_eq", "m9"], ["tier_eq", "partner"]], cand(), None),
    (["or", ["bot"], ["top"]], cand(), None),
    (["not", ["provider_eq", "p1"]], cand(), "not"),
    (["not", ["bot"]], cand(), None),
    (["not", ["is", "has_tee"]], cand(has_tee=True), "not"),
    (["and", ["top"], ["bot"], ["tier_eq", "fallback"]], cand(), "bot"),  # the first failing child
    (["and", ["family_eq", "m9"], ["tier_eq", "fallback"]], cand(), "model_family"),
    (["is", "has_tee"], cand(), "is:has_tee"),
    (["is", "has_tee"], cand(has_tee=True), None),
    (["is", "no_log"], cand(no_log=False), "is:no_log"),
    (["cmp", "context", "ge", 9000], cand(), "cmp:context:ge"),
    (["cmp", "context", "lt", 8000], cand(), "cmp:context:lt"),
    (["tier_eq", "marketplace"], cand(), "tier"),
    (["tier_eq", "partner"], cand(), None),
    (["tier_eq", "fallback"], cand(tier=None), None),                     # a missing tier reads as fallback
    (["tier_eq", "fallback"], cand(tier=False), None),
    (["min_tier", "partner"], cand(tier="marketplace"), "min_tier"),
    (["min_tier", "marketplace"], cand(), None),
    (["min_tier", "marketplace"], cand(tier="gold"), "min_tier"),         # an unknown tier ranks below all
    (["min_tier", "fallback"], cand(tier="gold"), "min_tier"),
    (["min_tier", "fallback"], cand(tier=[]), "min_tier"),                # so does one that is no string at all
    (["min_tier", "fallback"], cand(tier={"a": 1}), "min_tier"),
    (["min_tier", "fallback"], cand(tier=3), "min_tier"),
    (["family_eq", "m9"], cand(), "model_family"),
    (["family_eq", "m1"], cand(), None),
    (["provider_eq", "p9"], cand(), "provider_id"),
    (["provider_eq", "p1"], cand(), None),
    (["served_by_eq", "p1"], cand(), None),                               # a direct route is served by its provider
    (["served_by_eq", "peerA"], cand(offer={"peer_id": "peerA"}), None),
    (["served_by_eq", "p1"], cand(offer={"peer_id": "peerA"}), "served_by"),
    (["served_by_eq", "p1"], cand(offer={}), None),                       # an offer without a peer
    (["has_cap", "supports_tools"], cand(), "missing_capability:supports_tools"),
    (["has_cap", "supports_tools"], cand(capabilities={"supports_tools": True}), None),
    (["has_cap", "supports_tools"], cand(capabilities={"supports_tools": 0}), None),     # 0 is true
    (["has_cap", "supports_tools"], cand(capabilities={"supports_tools": False}), "missing_capability:supports_tools"),
    (["has_cap", "context"], cand(), None),
    (["has_cap", "x"], cand(capabilities=None), "missing_capability:x"),
    (["has_cap", "x"], cand(capabilities=[]), "missing_capability:x"),
])
def test_pred(term, c, want) -> None:
    assert reason(term, c) == want
    # the same verdict once compiled (evaluated in normal form)
    assert compile_term(term).carrier(c, ctx()) == want


@pytest.mark.parametrize("term, as_written, in_normal_form", [
    (["or", ["bot"], ["bot"]], "or", "bot"),                          # or(bot, bot) = bot
    (["or", ["bot"], ["tier_eq", "fallback"]], "or", "tier"),          # bot is the unit of or
    (["not", ["top"]], "not", "bot"),                                  # not(top) = bot
    (["not", ["not", ["tier_eq", "fallback"]]], "not", "tier"),        # involution
    (["and", ["tier_eq", "fallback"], ["bot"]], "tier", "bot"),        # bot absorbs
    (["and", ["tier_eq", "fallback"], ["family_eq", "m9"]], "tier", "model_family"),   # '(family_eq' < '(tier_eq'
])
def test_reasons_come_from_the_normal_form(term, as_written, in_normal_form) -> None:
    assert reason(term) == as_written
    assert compile_term(term).carrier(cand(), ctx()) == in_normal_form


@pytest.mark.parametrize("scope, request_scope, want", [
    (None, None, None), (None, "s1", None),          # a global candidate serves every scope
    ("s1", "s1", None), ("s1", "s2", "scope"), ("s1", None, "scope"),
])
def test_scope_matches(scope, request_scope, want) -> None:
    c = cand() if scope is None else cand(scope=scope)
    x = ctx(request={"requirements": {}} if request_scope is None else {"requirements": {}, "scope": request_scope})
    assert reason(["scope_matches"], c, x) == want


@pytest.mark.parametrize("rel, value, want", [
    ("lt", 8000, False), ("lt", 8001, True), ("le", 8000, True), ("le", 7999, False),
    ("eq", 8000, True), ("eq", 8000.0, True), ("eq", 8001, False), ("ne", 8000, False), ("ne", 1, True),
    ("ge", 8000, True), ("ge", 8001, False), ("gt", 7999.5, True), ("gt", 8000, False),
])
def test_cmp_relations(rel, value, want) -> None:
    assert (reason(["cmp", "context", rel, value]) is None) == want


def test_integer_literals_beyond_64_bits_denote_their_double() -> None:
    # Num is an IEEE-754 double (SIGMA-POL §1, item 3): an integer literal too wide for 64 bits
    # is read as the double nearest to it, as the reference's JSON readers read it.
    big = loads_strict(b"1000000000000000000000000000000")
    assert isinstance(big, float) and big == 1e30
    assert reason(["cmp", "price_in", "eq", big], cand(price_in=1e30)) is None
    assert reason(["cmp", "price_in", "lt", big], cand(price_in=1e30)) == "cmp:price_in:lt"
    scorer = ["add", ["gate", ["provider_eq", "p1"], ["lit", big]], ["gate", ["provider_eq", "p2"], ["lit", 1e30]]]
    plan = compile_policy(pol(scorer=scorer)).policy.plan([cand(), cand(provider_id="p2")], ctx())
    assert [(r.candidate["provider_id"], r.score) for r in plan.ordered] == [("p1", 1e30), ("p2", 1e30)]  # a tie


def test_cmp_on_a_non_number_observation_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError):
        reason(["cmp", "price_in", "le", 5], cand(price_in="5"))


def test_min_tier_with_a_declared_order() -> None:
    schema = Schema(tier_order=["bronze", "silver", "gold"])
    assert reason(["min_tier", "silver"], cand(tier="gold"), schema=schema) is None
    assert reason(["min_tier", "silver"], cand(tier="silver"), schema=schema) is None
    assert reason(["min_tier", "silver"], cand(tier="bronze"), schema=schema) == "min_tier"
    assert reason(["min_tier", "bronze"], cand(tier="partner"), schema=schema) == "min_tier"   # not in this order
    # a missing tier reads "fallback", which this order does not know
    assert reason(["min_tier", "bronze"], cand(tier=None), schema=schema) == "min_tier"


def test_and_reports_the_first_failure_of_the_normal_form_order() -> None:
    # Written tier_eq first; in normal form '(cmp' sorts before '(tier_eq', so a compiled
    # policy evaluates (and reports) the cmp first.
    term = ["and", ["tier_eq", "fallback"], ["cmp", "context", "ge", 1e9]]
    assert reason(term) == "tier"
    plan = compile_policy(pol(term)).policy.plan([cand()], ctx())
    assert [r.reason for r in plan.rejected] == ["cmp:context:ge"]


# --------------------------------------------------------------------------
# the observation vocabulary and its defaults
# --------------------------------------------------------------------------

def observe(name: str, c: dict, x: dict | None = None, schema=None):
    return scores(["field", name], [c], x, schema)[0]


def test_defaults_when_absent() -> None:
    bare = {"provider_id": "p1", "model_family": "m1"}
    assert observe("price_in", bare) == math.inf
    assert observe("price_out", bare) == math.inf
    assert observe("latency_ms", bare) == math.inf
    assert observe("tok_s", bare) == 0
    assert observe("success_rate", bare) == 1
    assert observe("credits", bare) == 0
    assert observe("context", bare) == 0
    assert observe("price_in", bare, {"request": {}}) == math.inf      # no state at all


def test_a_missing_price_fails_any_ceiling() -> None:
    assert reason(["cmp", "price_in", "le", 1.7976931348623157e308]) == "cmp:price_in:le"
    assert reason(["cmp", "price_out", "lt", 1e300]) == "cmp:price_out:lt"
    assert reason(["cmp", "price_in", "ge", 0]) is None
    assert reason(["cmp", "latency_ms", "le", 1e300]) == "cmp:latency_ms:le"
    assert reason(["cmp", "success_rate", "eq", 1]) is None
    assert reason(["cmp", "tok_s", "eq", 0]) is None


def test_values_when_present() -> None:
    c = cand(price_in=1.5, price_out=4, latency_ms=300, tok_s=80, success_rate=0.9,
             capabilities={"context": 128000})
    assert [observe(n, c) for n in ("price_in", "price_out", "latency_ms", "tok_s", "success_rate", "context")] == [
        1.5, 4, 300, 80, 0.9, 128000]


def test_catalog_price_beats_the_state_estimate() -> None:
    x = ctx(state={"ema": {"p1|m1": {"price_in": 3, "price_out": 9}, "p1|m2": {"price_in": 100}}})
    assert observe("price_in", cand(price_in=7), x) == 7
    assert observe("price_in", cand(price_in=0), x) == 0             # 0 is a price, not an absence
    assert observe("price_in", cand(), x) == 3                       # no catalog price: the estimate
    assert observe("price_out", cand(), x) == 9
    assert observe("price_in", cand(model_family="m3"), x) == math.inf   # the estimate is per provider|model
    assert reason(["cmp", "price_in", "le", 5], cand(), x) is None
    assert reason(["cmp", "price_in", "le", 5], cand(price_in=7), x) == "cmp:price_in:le"


def test_credits_come_from_the_state() -> None:
    x = ctx(state={"credits": {"p1": 2.5, "p2": 9}})
    assert observe("credits", cand(), x) == 2.5
    assert observe("credits", cand(provider_id="p3"), x) == 0
    assert observe("credits", cand(credits=100)) == 0               # not read off the candidate


@pytest.mark.parametrize("breakers, is_open", [
    ({"p1": True}, True), ({"p1": 1}, False), ({"p1": "true"}, False), ({"p1": False}, False),
    ({"p2": True}, False), ({}, False), (None, False),
])
def test_breaker_open_only_when_exactly_true(breakers, is_open) -> None:
    state = {} if breakers is None else {"breakers": breakers}
    got = reason(["is", "breaker_open"], cand(), ctx(state=state))
    assert (got is None) == is_open
    if not is_open:
        assert got == "is:breaker_open"


@pytest.mark.parametrize("disabled, is_disabled", [
    ({"p1": {"kind": "auth_error", "at_ms": 0}}, True), ({"p1": "auth_error"}, True),
    ({"p1": False}, True),                                           # present is disabled, whatever the value
    ({"p1": 0}, True), ({"p1": None}, False),                         # null is absence
    ({"p2": "x"}, False), ({}, False), (None, False),
])
def test_disabled_when_present(disabled, is_disabled) -> None:
    state = {} if disabled is None else {"disabled": disabled}
    assert (reason(["is", "disabled"], cand(), ctx(state=state)) is None) == is_disabled


@pytest.mark.parametrize("value, holds", [(True, True), (0, True), ("", True), (False, False), (None, False)])
def test_bool_fields_use_lua_truthiness(value, holds) -> None:
    assert (reason(["is", "has_tee"], cand(has_tee=value)) is None) == holds


def test_declared_fields_read_the_candidate_with_their_default() -> None:
    schema = Schema([FieldDecl("bench_a_rank", "Num", 1e9), FieldDecl("eu", "Bool", False)])
    assert observe("bench_a_rank", cand(bench_a_rank=3), schema=schema) == 3
    assert observe("bench_a_rank", cand(), schema=schema) == 1e9
    assert reason(["is", "eu"], cand(), schema=schema) == "is:eu"
    assert reason(["is", "eu"], cand(eu=True), schema=schema) is None
    assert reason(["cmp", "bench_a_rank", "le", 5], cand(), schema=schema) == "cmp:bench_a_rank:le"


def test_shortlist_intersection_by_declared_rank_fields() -> None:
    # "top 2 by A and top 2 by B, partner, price <= 15; cheapest first" (§3.1)
    schema = Schema([FieldDecl("bench_a_rank", "Num", 1e9), FieldDecl("bench_b_rank", "Num", 1e9)])
    term = pol(["and", ["cmp", "bench_a_rank", "le", 2], ["cmp", "bench_b_rank", "le", 2], ["tier_eq", "partner"],
                ["cmp", "price_in", "le", 15]], ["neg", ["field", "price_in"]])

    def m(pid, ra, rb, tier, price):
        return {"provider_id": pid, "model_family": "f", "tier": tier, "bench_a_rank": ra, "bench_b_rank": rb,
                "price_in": price}
    pop = [m("m1", 1, 1, "partner", 10), m("m2", 2, 2, "partner", 8), m("m3", 1, 3, "partner", 5),
           m("m4", 1, 1, "marketplace", 4)]
    plan = compile_policy(term, schema).policy.plan(pop, {"request": {"requirements": {}}})
    assert ids(plan.ordered) == ["m2", "m1"]
    assert [r.score for r in plan.ordered] == [1 - 8, 1 - 10]
    assert [(r.provider, r.reason) for r in plan.rejected] == [("m3", "cmp:bench_b_rank:le"), ("m4", "tier")]


# --------------------------------------------------------------------------
# meets_req
# --------------------------------------------------------------------------

def meets(c: dict, request: dict):
    return reason(["meets_req"], c, ctx(request=request))


def test_meets_req_evaluation_order() -> None:
    req = {"requirements": {"needs": ["tools"], "min_context": 100000, "model_family": "mX", "tier": "marketplace",
                            "privacy": "tee_required", "min_quality": 0.9, "min_tok_s": 50}}
    c = cand()
    steps = [
        ("missing_capability:tools", {"capabilities": {"context": 8000, "supports_tools": True}}),
        ("min_context", {"capabilities": {"context": 200000, "supports_tools": True}}),
        ("model_family", {"model_family": "mX"}),
        ("tier", {"tier": "marketplace"}),
        ("tee_required", {"has_tee": True}),
        ("min_quality", {"quality_hint": 0.95}),
        ("min_tok_s", {"tok_s": 60}),
    ]
    for want, fix in steps:
        assert meets(c, req) == want
        c = {**c, **fix}
    assert meets(c, req) is None


@pytest.mark.parametrize("over, want", [
    ({}, "no_log"), ({"no_log": True}, None), ({"has_tee": True}, None), ({"no_log": 0}, None),
    ({"no_log": False, "has_tee": False}, "no_log"),
])
def test_meets_req_no_log(over, want) -> None:
    assert meets(cand(**over), {"requirements": {"privacy": "no_log"}}) == want


def test_meets_req_privacy_standard_and_unknown_are_no_constraint() -> None:
    assert meets(cand(), {"requirements": {"privacy": "standard"}}) is None
    assert meets(cand(), {"requirements": {"privacy": "whatever"}}) is None


@pytest.mark.parametrize("request_, want", [
    ({"images": ["data:..."]}, "missing_capability:vision"),
    ({"images": []}, None),
    ({"images": {"a": 1}}, None),                                      # not a list
    ({"tools": [{"type": "function"}]}, "missing_capability:tools"),
    ({"tools": []}, None),
    ({"response_format": {"type": "json_object"}}, "missing_capability:json_mode"),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_schema"}}, None),
    ({"requirements": {"needs": ["seed"]}}, "missing_capability:seed"),
    ({"requirements": {"needs": ["vision"]}}, "missing_capability:vision"),
    ({"requirements": {"needs": ["other", "streaming"]}}, None),       # needs without a capability mapping
    ({"requirements": {"needs": "tools"}}, None),                      # not a list
])
def test_meets_req_derived_needs(request_, want) -> None:
    assert meets(cand(capabilities={}), request_) == want


@pytest.mark.parametrize("need, flag", [("tools", "supports_tools"), ("vision", "supports_vision"),
                                        ("json_mode", "supports_json_mode"), ("seed", "supports_seed")])
@pytest.mark.parametrize("value, ok", [(True, True), (0, True), ("", True), ("no", True), (False, False),
                                       (None, False)])
def test_meets_req_capability_truthiness(need, flag, value, ok) -> None:
    got = meets(cand(capabilities={flag: value}), {"requirements": {"needs": [need]}})
    assert got == (None if ok else f"missing_capability:{need}")
    assert meets(cand(capabilities={}), {"requirements": {"needs": [need]}}) == f"missing_capability:{need}"


def test_meets_req_needs_order() -> None:
    # Our pinned order (requirements.py): explicit needs in their order, then vision, tools, json_mode.
    # (The reference iterates a Lua set; with several missing capabilities its order is unspecified.)
    req = {"requirements": {"needs": ["seed", "tools"]}, "images": ["i"], "response_format": {"type": "json_object"}}
    c = cand(capabilities={})
    assert meets(c, req) == "missing_capability:seed"
    c["capabilities"]["supports_seed"] = True
    assert meets(c, req) == "missing_capability:tools"
    c["capabilities"]["supports_tools"] = True
    assert meets(c, req) == "missing_capability:vision"
    c["capabilities"]["supports_vision"] = True
    assert meets(c, req) == "missing_capability:json_mode"
    c["capabilities"]["supports_json_mode"] = True
    assert meets(c, req) is None


@pytest.mark.parametrize("requirements, c, want", [
    ({"model_family": ""}, cand(), "model_family"),        # "" is true in Lua: the family must equal ""
    ({"tier": ""}, cand(), "tier"),
    ({"tier": "fallback"}, cand(tier=None), "tier"),       # unlike tier_eq, no fallback default here
    ({"tier": False}, cand(), None),                       # false is false: no constraint
    ({"model_family": None}, cand(), None),
    ({"min_context": 0}, cand(capabilities={}), None),     # 0 is true, and 0 < 0 does not hold
    ({"min_context": 1}, cand(capabilities={}), "min_context"),
    ({"min_context": 1}, cand(capabilities={"context": False}), "min_context"),   # false context reads 0
    ({"min_context": 8000}, cand(), None),
    ({"min_context": 8001}, cand(), "min_context"),
    ({"min_context": False}, cand(capabilities={}), None),
    ({"min_tok_s": 0}, cand(), None),
    ({"min_tok_s": 1}, cand(), "min_tok_s"),               # no throughput observed fails closed
    ({"min_tok_s": 1}, cand(tok_s=1), None),
    ({"min_tok_s": 1}, cand(tok_s=False), "min_tok_s"),
    ({"min_quality": 0.5}, cand(), "min_quality"),         # no quality_hint reads 0
    ({"min_quality": 0.5}, cand(quality_hint=0.5), None),
    ({"privacy": "tee_required"}, cand(has_tee=0), None),
    ({"privacy": "tee_required"}, cand(has_tee=""), None),
    ({"privacy": "tee_required"}, cand(has_tee=False), "tee_required"),
    ({}, cand(), None),
])
def test_meets_req_lua_truthiness(requirements, c, want) -> None:
    assert meets(c, {"requirements": requirements}) == want


def test_meets_req_without_requirements() -> None:
    assert meets(cand(), {}) is None
    assert reason(["meets_req"], cand(), {"state": {}}) is None


# --------------------------------------------------------------------------
# scorers
# --------------------------------------------------------------------------

POP3 = [cand(capabilities={"context": 0.2}), cand(provider_id="p2", capabilities={"context": 0.8}),
        cand(provider_id="p3", capabilities={"context": 0.5})]


def test_zero_lit_field() -> None:
    assert scores(["zero"], POP3) == [0, 0, 0]
    assert scores(["lit", 2.5], POP3) == [2.5, 2.5, 2.5]
    assert scores(["field", "context"], POP3) == [0.2, 0.8, 0.5]
    assert scores(["zero"], []) == [] and scores(["lit", 1], []) == [] and scores(["normalize", ["lit", 1]], []) == []


def test_add_sums_in_child_order() -> None:
    # ((0 + 0.1) + 0.2) + 0.3 = 0.6000000000000001, while ((0 + 0.3) + 0.2) + 0.1 = 0.6
    assert scores(["add", ["lit", 0.1], ["lit", 0.2], ["lit", 0.3]], [cand()]) == [0.6000000000000001]
    assert scores(["add", ["lit", 0.3], ["lit", 0.2], ["lit", 0.1]], [cand()]) == [0.6]
    # compiled, the children run in normal-form order: "(lit 0.10000000000000001)" sorts first
    c = compile_policy(pol(scorer=["add", ["lit", 0.3], ["lit", 0.2], ["lit", 0.1]]))
    assert [r.score for r in c.policy.plan([cand()], ctx()).ordered] == [0.6000000000000001]
    assert scores(["add", ["scale", 0.5, ["lit", 1]], ["field", "context"]], POP3) == [0.5 + 0.2, 0.5 + 0.8, 0.5 + 0.5]


def test_scale_gate_neg_clamp() -> None:
    assert scores(["scale", -2, ["field", "context"]], POP3) == [-0.4, -1.6, -1.0]
    assert scores(["gate", ["provider_eq", "p2"], ["field", "context"]], POP3) == [0, 0.8, 0]
    assert scores(["gate", ["not", ["is", "breaker_open"]], ["lit", 3]], POP3,
                  ctx(state={"breakers": {"p3": True}})) == [3, 3, 0]
    assert scores(["neg", ["field", "context"]], POP3) == [1 - 0.2, 1 - 0.8, 1 - 0.5]
    assert scores(["clamp", 0.3, 0.6, ["field", "context"]], POP3) == [0.3, 0.6, 0.5]
    assert scores(["clamp", 1, 0, ["field", "context"]], POP3) == [1, 1, 1]     # lo > hi: lo wins below lo


def test_normalize_min_max() -> None:
    assert scores(["normalize", ["field", "context"]], POP3) == [0, 1, (0.5 - 0.2) / (0.8 - 0.2)]


def test_normalize_degenerate_population_is_zero() -> None:
    assert scores(["normalize", ["field", "context"]], POP3[:1]) == [0]
    assert scores(["normalize", ["lit", 7]], POP3) == [0, 0, 0]
    bare = [{"provider_id": "a", "model_family": "m"}, {"provider_id": "b", "model_family": "m"}]
    assert scores(["normalize", ["field", "price_in"]], bare) == [0, 0]          # inf, inf: degenerate


def test_normalize_pins_endpoints_and_never_makes_nan() -> None:
    pop = [cand(price_in=2), cand(provider_id="p2"), cand(provider_id="p3")]      # 2, +inf, +inf
    assert scores(["normalize", ["field", "price_in"]], pop) == [0, 1, 1]
    pop = [cand(price_in=2), cand(provider_id="p2", price_in=5), cand(provider_id="p3")]
    # 5 -> (5 - 2) / (inf - 2) = 0.0; the top +inf is pinned to 1
    assert scores(["normalize", ["field", "price_in"]], pop) == [0, 0.0, 1]
    # -inf, 0, +inf: the middle is (0 + inf) / (inf + inf) = nan, which is replaced by 0
    pop = [cand(), cand(provider_id="p2"), cand(provider_id="p3")]           # latency +inf for all
    mixed = scores(["normalize", ["gate", ["provider_eq", "p2"], ["scale", -1, ["field", "latency_ms"]]]], pop)
    assert mixed == [1, 0, 1]                                   # 0, -inf, 0 -> lo=-inf pinned 0, hi=0 pinned 1
    spread = scores(["normalize", ["add", ["gate", ["provider_eq", "p1"], ["field", "latency_ms"]],
                                   ["gate", ["provider_eq", "p3"], ["scale", -1, ["field", "latency_ms"]]]]], pop)
    assert spread == [1, 0, 0]                                  # +inf, 0, -inf: the middle nan becomes 0
    assert not any(math.isnan(v) for v in mixed + spread)


def test_normalize_of_normalize_is_normalize() -> None:
    once = scores(["normalize", ["field", "context"]], POP3)
    assert scores(["normalize", ["normalize", ["field", "context"]]], POP3) == once


def test_scores_are_relative_to_the_survivors() -> None:
    # p2 (the widest context) is filtered out: normalize runs over p1 and p3 only.
    c = compile_policy(pol(["not", ["provider_eq", "p2"]], ["normalize", ["field", "context"]]))
    plan = c.policy.plan(POP3, ctx())
    assert [(r.candidate["provider_id"], r.score) for r in plan.ordered] == [("p3", 1), ("p1", 0)]
    assert [(r.provider, r.model, r.reason) for r in plan.rejected] == [("p2", "m1", "not")]


# --------------------------------------------------------------------------
# selectors
# --------------------------------------------------------------------------

def select(term, items, x=None):
    return ev(term)(items, x if x is not None else ctx())


def test_argmax_stable_ties() -> None:
    out = select(["argmax"], ranked(0.5, 0.9, 0.5, 0.9, -1))
    assert ids(out) == ["p2", "p4", "p1", "p3", "p5"]
    assert ids(select(["argmax"], ranked(0, -0.0, 0.0))) == ["p1", "p2", "p3"]      # -0 ties with 0
    assert ids(select(["argmax"], ranked(-math.inf, math.inf, 1))) == ["p2", "p3", "p1"]
    assert select(["argmax"], []) == []


def test_argmax_keeps_scores() -> None:
    assert [r.score for r in select(["argmax"], ranked(1, 3, 2))] == [3, 2, 1]


def test_ordered_keeps_input_order() -> None:
    assert ids(select(["ordered"], ranked(0.1, 0.9, 0.5))) == ["p1", "p2", "p3"]


def test_minstd_first_outputs_for_seed_42() -> None:
    draw = lcg(42)
    assert [draw() for _ in range(8)] == minstd(42)
    # and by hand for the very first one: 42 * 16807^5 mod (2^31 - 1)
    assert minstd(42)[0] == (42 * pow(16807, 5, M)) % M / M


@pytest.mark.parametrize("seed", [0, None, 1, -1, -5, M, M + 3, 2 ** 40, -(2 ** 40)])
def test_minstd_seed_reduction(seed) -> None:
    draw = lcg(seed)
    got = [draw() for _ in range(8)]
    assert got == minstd(seed)
    assert all(0 < u < 1 for u in got)


def test_minstd_zero_class_seeds_agree() -> None:
    # 0 (and anything congruent to it) is replaced by M - 1; an absent seed is 0.
    first = lambda s: lcg(s)()  # noqa: E731
    assert first(0) == first(None) == first(M) == first(-M) == first(M - 1)
    assert first(1) != first(0)


def test_substream_salt() -> None:
    assert salt_hash("a") == 97 and salt_hash("ab") == 97 * 31 + 98
    for seed in (None, 0, 7, -3, 2 ** 40):
        assert substream(seed, "jitter:temperature") == salted(seed, "jitter:temperature")


def test_sample_temp_zero_is_argmax() -> None:
    items = ranked(0.5, 0.9, 0.5, 0.2, 0.9)
    want = ids(select(["argmax"], items))
    for seed in (None, 0, 1, 42, 99, -7, 2 ** 33):
        x = ctx() if seed is None else ctx(seed=seed)
        assert ids(select(["sample", 0], items, x)) == want
        assert ids(select(["sample", -3], items, x)) == want         # a negative temperature is 0


def test_sample_two_candidates_by_hand() -> None:
    # temp 1: q = 1/2, weights [1, 0.5] in argmax order, total 1.5; the first draw u picks
    # the best when u * 1.5 <= 1.
    items = ranked(0.2, 0.9)                                # argmax order: p2, p1
    for seed in range(1, 40):
        u = minstd(seed)[0]
        want = ["p2", "p1"] if u * 1.5 <= 1 else ["p1", "p2"]
        assert ids(select(["sample", 1], items, ctx(seed=seed))) == want


def test_sample_three_candidates_by_hand() -> None:
    # temp 3: q = 3/4, weights [1, 0.75, 0.5625]; draw 1 over all three, draw 2 over the rest.
    items = ranked(3, 2, 1)
    for seed in (5, 42, 1234):
        u = minstd(seed)
        pool, w, out = ["p1", "p2", "p3"], [1, 0.75, 0.5625], []
        for k in range(3):
            r = u[k] * sum(w)
            acc, pick = 0, len(pool) - 1
            for i, x in enumerate(w):
                acc += x
                if r <= acc:
                    pick = i
                    break
            out.append(pool.pop(pick))
            w.pop(pick)
        assert ids(select(["sample", 3], items, ctx(seed=seed))) == out


def test_sample_is_seeded_and_reproducible() -> None:
    items = ranked(*[i / 10 for i in range(10)])
    a = ids(select(["sample", 5], items, ctx(seed=42)))
    assert a == ids(select(["sample", 5], items, ctx(seed=42)))
    assert sorted(a) == sorted(ids(items))
    assert ids(select(["sample", 5], items, ctx())) == ids(select(["sample", 5], items, ctx(seed=0)))
    seen = {tuple(ids(select(["sample", 5], items, ctx(seed=s)))) for s in range(30)}
    assert len(seen) > 1                                    # the seed matters


def test_sample_keeps_scores() -> None:
    out = select(["sample", 2], ranked(0.3, 0.1, 0.2), ctx(seed=3))
    assert {(r.candidate["provider_id"], r.score) for r in out} == {("p1", 0.3), ("p2", 0.1), ("p3", 0.2)}


def test_top_k() -> None:
    items = ranked(0.5, 0.9, 0.7)
    assert ids(select(["top_k", 2, ["argmax"]], items)) == ["p2", "p3"]
    assert ids(select(["top_k", 1, ["ordered"]], items)) == ["p1"]
    assert ids(select(["top_k", 9, ["argmax"]], items)) == ["p2", "p3", "p1"]
    assert ids(select(["top_k", 2.0, ["argmax"]], items)) == ["p2", "p3"]
    assert ids(select(["top_k", 1, ["top_k", 2, ["argmax"]]], items)) == ["p2"]


def test_chain_whitelists_and_orders_by_priority() -> None:
    items = [Ranked(cand(), 0.9), Ranked(cand(provider_id="p2"), 0.8), Ranked(cand(provider_id="p3"), 0.1)]
    out = select(["chain", [{"provider": "p3", "model": "m1"}, {"provider": "p1", "model": "m1"}]], items)
    assert ids(out) == ["p3", "p1"]
    assert [r.score for r in out] == [-1, -2]               # the score becomes minus the priority
    out = select(["chain", [{"provider_id": "p2", "model_family": "m1"}, {"provider": "p1", "model": "m9"}]], items)
    assert ids(out) == ["p2"]
    assert select(["chain", []], items) == []


def test_prefer_is_a_stable_partition_that_keeps_scores() -> None:
    items = [Ranked(cand(provider_id="a", tier="fallback"), 0.9), Ranked(cand(provider_id="b"), 0.5),
             Ranked(cand(provider_id="c", tier="fallback"), 0.7), Ranked(cand(provider_id="d"), 0.8)]
    out = select(["prefer", ["tier_eq", "partner"], ["argmax"]], items)
    assert [(r.candidate["provider_id"], r.score) for r in out] == [("d", 0.8), ("b", 0.5), ("a", 0.9), ("c", 0.7)]
    out = select(["prefer", ["tier_eq", "partner"], ["ordered"]], items)
    assert ids(out) == ["b", "d", "a", "c"]
    assert ids(select(["prefer", ["bot"], ["argmax"]], items)) == ids(select(["argmax"], items))


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------

def xf(term, req, c=None, x=None, customs=None):
    before = copy.deepcopy(req)
    out = ev(term, customs=customs)(req, c if c is not None else cand(), x if x is not None else ctx())
    assert req == before, "a transform mutated the request it was given"
    return out


def test_set_param_and_inject_seed() -> None:
    assert xf(["set_param", "max_tokens", 4096], {"t": 1}) == {"t": 1, "max_tokens": 4096}
    assert xf(["set_param", "stop", "END"], {}) == {"stop": "END"}
    assert xf(["set_param", "stream", False], {"stream": True}) == {"stream": False}
    assert xf(["set_param", "seed", "from_ctx"], {}, x=ctx(seed=7)) == {"seed": 7}
    assert xf(["inject_seed", "seed"], {"seed": 1}, x=ctx(seed=-9)) == {"seed": -9}
    # without a seed, "from_ctx" sets the parameter to nothing: it is removed
    assert xf(["inject_seed", "seed"], {"seed": 1, "t": 2}) == {"t": 2}
    assert xf(["set_param", "seed", "from_ctx"], {}) == {}


def test_clamp_param_only_on_numbers() -> None:
    assert xf(["clamp_param", "temperature", 0, 1], {"temperature": 1.7}) == {"temperature": 1}
    assert xf(["clamp_param", "temperature", 0, 1], {"temperature": -2}) == {"temperature": 0}
    assert xf(["clamp_param", "temperature", 0, 1], {"temperature": 0.4}) == {"temperature": 0.4}
    assert xf(["clamp_param", "temperature", 0, 1], {"temperature": True}) == {"temperature": True}
    assert xf(["clamp_param", "temperature", 0, 1], {"temperature": "9"}) == {"temperature": "9"}
    assert xf(["clamp_param", "temperature", 0, 1], {}) == {}


def jittered(base, amount: float, seed: int, name: str) -> float:
    u = minstd(salted(seed, "jitter:" + name))[0]
    return (base if isinstance(base, (int, float)) and not isinstance(base, bool) else 0) + (u * 2 - 1) * amount


def test_jitter_needs_a_seed() -> None:
    req = {"temperature": 0.7}
    out = xf(["jitter", "temperature", 0.3], req)
    assert out == {"temperature": 0.7}


@pytest.mark.parametrize("seed", [7, 0, 42, -3, 2 ** 40])
def test_jitter_by_hand(seed) -> None:
    out = xf(["jitter", "temperature", 0.3], {"temperature": 0.7}, x=ctx(seed=seed))
    assert out["temperature"] == jittered(0.7, 0.3, seed, "temperature")
    assert abs(out["temperature"] - 0.7) <= 0.3
    # a non-numeric or absent base is replaced by the noise alone
    assert xf(["jitter", "top_p", 0.2], {"top_p": "x"}, x=ctx(seed=seed))["top_p"] == (
        (minstd(salted(seed, "jitter:top_p"))[0] * 2 - 1) * 0.2)
    assert xf(["jitter", "top_p", 0.2], {}, x=ctx(seed=seed))["top_p"] == jittered(None, 0.2, seed, "top_p")


def test_jitter_streams_are_independent_per_parameter() -> None:
    x = ctx(seed=11)
    req = {"temperature": 0.7, "top_p": 0.9}
    both = xf(["seq", ["jitter", "temperature", 0.3], ["jitter", "top_p", 0.2]], req, x=x)
    rev = xf(["seq", ["jitter", "top_p", 0.2], ["jitter", "temperature", 0.3]], req, x=x)
    alone = xf(["jitter", "top_p", 0.2], req, x=x)
    assert both == rev
    assert both["top_p"] == alone["top_p"] == jittered(0.9, 0.2, 11, "top_p")
    assert both["temperature"] == jittered(0.7, 0.3, 11, "temperature")


def test_filter_directives() -> None:
    out = xf(["filter_text", ["NFKC", {"p": 0.5}]], {"x": 1}, x=ctx(seed=7))
    assert out == {"x": 1, "_filters": {"text": {"recipe": ["NFKC", {"p": 0.5}], "seed": 7}}}
    out = xf(["filter_image", []], {}, x=ctx(seed=-1))
    assert out == {"_filters": {"image": {"recipe": [], "seed": M - 1}}}           # floored modulo
    assert xf(["filter_text", []], {}, x=ctx(seed=M + 5))["_filters"]["text"]["seed"] == 5
    assert xf(["filter_text", ["a"]], {}) == {"_filters": {"text": {"recipe": ["a"]}}}   # no seed, no seed key
    prior = {"_filters": {"image": {"recipe": ["old"]}, "text": {"recipe": ["older"]}}}
    out = xf(["filter_text", ["new"]], prior, x=ctx(seed=3))
    assert out["_filters"] == {"image": {"recipe": ["old"]}, "text": {"recipe": ["new"], "seed": 3}}
    both = xf(["seq", ["filter_text", ["t"]], ["filter_image", ["i"]]], {}, x=ctx(seed=1))
    assert both["_filters"] == {"text": {"recipe": ["t"], "seed": 1}, "image": {"recipe": ["i"], "seed": 1}}


def test_when() -> None:
    w = ["when", ["tier_eq", "fallback"], ["set_param", "max_tokens", 100]]
    assert xf(w, {}) == {}
    assert xf(w, {}, c=cand(tier="fallback")) == {"max_tokens": 100}


def test_seq_runs_in_order() -> None:
    a, b = ["set_param", "x", 1], ["set_param", "x", 2]
    assert xf(["seq", a, b], {}) == {"x": 2}
    assert xf(["seq", b, a], {}) == {"x": 1}
    assert xf(["seq", ["set_param", "temperature", 3], ["clamp_param", "temperature", 0, 1]], {}) == {"temperature": 1}
    assert xf(["seq", ["clamp_param", "temperature", 0, 1], ["set_param", "temperature", 3]], {}) == {"temperature": 3}
    assert xf(["id"], {"a": 1}) == {"a": 1}


def test_reference_xform_example() -> None:
    x = ["seq", ["set_param", "max_tokens", 4096], ["inject_seed", "seed"], ["clamp_param", "temperature", 0, 1],
         ["filter_text", ["NFKC", "RmZeroWidth"]]]
    out = xf(x, {"temperature": 1.7}, x=ctx(seed=7))
    assert out == {"temperature": 1, "max_tokens": 4096, "seed": 7,
                   "_filters": {"text": {"recipe": ["NFKC", "RmZeroWidth"], "seed": 7}}}


def test_custom_transforms_resolve_against_the_registry() -> None:
    def mark(req, c, x):
        out = dict(req)
        out["marked"] = c["provider_id"]
        return out
    assert xf(["custom", "mark"], {}, customs={"mark": mark}) == {"marked": "p1"}
    with pytest.raises(EvaluationError):
        evaluate(["custom", "mark"], default_algebra())
    with pytest.raises(AdmissionError) as info:
        compile_term(["custom", "mark"])
    assert info.value.code == "unknown_custom"
    assert Compiler(customs={"mark": mark}).compile(["custom", "mark"]).sort == "Xform"


def test_nothing_mutates_the_request() -> None:
    req = {"temperature": 1.7, "top_p": "x", "seed": 3, "_filters": {"image": {"recipe": ["r"]}}, "messages": [1]}
    x = ["seq", ["set_param", "max_tokens", 1], ["inject_seed", "seed"], ["clamp_param", "temperature", 0, 1],
         ["jitter", "top_p", 0.1], ["jitter", "temperature", 0.1], ["filter_text", ["a"]], ["filter_image", ["b"]],
         ["when", ["top"], ["set_param", "messages", "m"]]]
    out = xf(x, req, x=ctx(seed=5))
    assert out is not req and out["messages"] == "m" and req["messages"] == [1]


# --------------------------------------------------------------------------
# FailPlan
# --------------------------------------------------------------------------

def test_failplan_classify() -> None:
    fp = ev(["override", ["override", ["always", NC], "auth_error", {"action": "disable_provider"}],
             "server_error", {"action": "retry_same", "attempts": 2, "backoff_ms": 500}])
    assert fp == {"unknown": NC, "auth_error": {"action": "disable_provider"},
                  "server_error": {"action": "retry_same", "attempts": 2, "backoff_ms": 500}}
    assert classify(fp, "auth_error") == {"action": "disable_provider"}
    assert classify(fp, "server_error")["attempts"] == 2
    assert classify(fp, "anything_else") == NC                  # the base is the unknown fallback
    assert classify({}, "timeout") == {"action": "next_candidate"}


def test_failplan_override_beats_the_base_and_outer_beats_inner() -> None:
    fp = ev(["override", ["override", ["always", {"action": "abort"}], "timeout", {"action": "retry_same"}],
             "timeout", {"action": "next_provider_same_model"}])
    assert classify(fp, "timeout") == {"action": "next_provider_same_model"}
    assert classify(fp, "rate_limit") == {"action": "abort"}
    fp = ev(["override", ["always", {"action": "abort"}], "unknown", NC])
    assert classify(fp, "whatever") == NC


def test_policy_classify() -> None:
    c = compile_policy(pol(failplan=["override", ["always", NC], "rate_limit", {"action": "abort"}]))
    assert c.policy.classify("rate_limit") == {"action": "abort"}
    assert c.policy.classify("timeout") == NC


# --------------------------------------------------------------------------
# Policy.plan
# --------------------------------------------------------------------------

def test_plan_rejects_with_provider_model_reason_and_scores_survivors() -> None:
    term = pol(["and", ["not", ["is", "disabled"]], ["min_tier", "partner"]],
               ["add", ["scale", 1, ["field", "context"]]])
    pop = [cand(), cand(provider_id="p2", tier="fallback"), cand(provider_id="p3", model_family="m2"),
           cand(provider_id="p4", capabilities={"context": 9000})]
    plan = compile_policy(term).policy.plan(pop, ctx(state={"disabled": {"p3": "auth_error"}}))
    assert [(r.candidate["provider_id"], r.score) for r in plan.ordered] == [("p4", 9000), ("p1", 8000)]
    # rejections in input order; the reason comes from the normal-form order of the and
    assert [(r.provider, r.model, r.reason) for r in plan.rejected] == [("p2", "m1", "min_tier"), ("p3", "m2", "not")]
    assert plan.rejected[0].candidate is pop[1]


def test_plan_gate_demotes_without_dropping() -> None:
    term = pol(scorer=["gate", ["not", ["is", "breaker_open"]], ["field", "context"]])
    pop = [cand(capabilities={"context": 5}), cand(provider_id="p2", capabilities={"context": 9})]
    plan = compile_policy(term).policy.plan(pop, ctx(state={"breakers": {"p2": True}}))
    assert [(r.candidate["provider_id"], r.score) for r in plan.ordered] == [("p1", 5), ("p2", 0)]
    assert plan.rejected == []


def test_plan_of_an_empty_population() -> None:
    c = compile_policy(pol(scorer=["normalize", ["field", "price_in"]], selector=["sample", 1]))
    plan = c.policy.plan([], ctx())
    assert plan.ordered == [] and plan.rejected == []


def test_policy_is_the_five_slots() -> None:
    p = ev(pol())
    assert isinstance(p, Policy)
    assert p.filter(cand(), ctx()) is None and p.failplan == {"unknown": NC}


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------

def uses(term, ops: set) -> bool:
    if isinstance(term, list) and term and isinstance(term[0], str):
        return term[0] in ops or any(uses(x, ops) for x in term[1:])
    return False


COMPILER = Compiler(S.SCHEMA)


@settings(max_examples=150)
@given(S.policy(), S.population(), S.context())
def test_plan_never_raises_and_orders_the_survivors(term, pop, x) -> None:
    policy = COMPILER.compile(term).policy
    before = copy.deepcopy((pop, x))
    plan = policy.plan(pop, x)
    assert (pop, x) == before
    survivors = [c for c in pop if policy.filter(c, x) is None]
    assert [r.candidate for r in plan.rejected] == [c for c in pop if policy.filter(c, x) is not None]
    assert all(isinstance(r.reason, str) and r.reason for r in plan.rejected)
    got = [id(r.candidate) for r in plan.ordered]
    assert len(set(got)) == len(got)
    assert set(got) <= {id(c) for c in survivors}
    selector = term[3]
    if not uses(selector, {"chain", "top_k"}):
        assert sorted(got) == sorted(id(c) for c in survivors)


@given(st.lists(st.floats(-10, 10), max_size=8), st.floats(0, 50),
       st.one_of(st.none(), st.integers(-(2 ** 40), 2 ** 40)))
def test_sample_returns_a_permutation(values, temp, seed) -> None:
    items = ranked(*values)
    x = ctx() if seed is None else ctx(seed=seed)
    out = select(["sample", temp], items, x)
    assert sorted(map(id, out)) == sorted(map(id, items))
    assert out == select(["sample", temp], items, x)


@given(st.lists(st.floats(-10, 10), max_size=8), st.one_of(st.none(), st.integers(-(2 ** 40), 2 ** 40)))
def test_sample_at_temp_zero_is_argmax(values, seed) -> None:
    items = ranked(*values)
    x = ctx() if seed is None else ctx(seed=seed)
    assert select(["sample", 0], items, x) == select(["argmax"], items, x)


@given(S.xform(), S.requests, S.population(max_size=1), S.context())
def test_xforms_never_mutate_the_request(term, req, pop, x) -> None:
    c = pop[0] if pop else cand()
    before = copy.deepcopy(req)
    out = COMPILER.compile(term).carrier(req, c, x)
    assert req == before
    assert isinstance(out, dict)
