"""Admission: every refusal code with the exact path of the first fault.

Paths follow the submitted value: ``$[i]`` is the i-th element of a term list
(``$[0]`` its op name), ``.key`` a key of a record parameter. The first fault
is found depth-first, left to right, arguments in signature order, as the
reference's ``term.check`` walks (SIGMA-POL §2, §7).
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import (
    MAX_DEPTH, MAX_NODES, OPS, AdmissionError, FieldDecl, LangError, Schema, check, check_sort, compile_term,
)
from unhardcoded.lang.compiler import Compiler

from . import strategies as S

NC = {"action": "next_candidate"}


def pol(pred=None, scorer=None, selector=None, xform=None, failplan=None) -> list:
    return ["policy", pred or ["top"], scorer or ["zero"], selector or ["argmax"], xform or ["id"],
            failplan or ["always", NC]]


def refused(term, schema=None, customs=()) -> AdmissionError:
    with pytest.raises(AdmissionError) as info:
        check(term, schema, customs=customs)
    err = info.value
    assert isinstance(err, LangError) and err.kind == "invalid_policy"
    return err


def assert_refused(term, code: str, path: str, schema=None, customs=()) -> None:
    err = refused(term, schema, customs)
    assert (err.code, err.path) == (code, path), err


# --------------------------------------------------------------------------
# accepted terms and their sorts
# --------------------------------------------------------------------------

@pytest.mark.parametrize("term, sort", [
    (["top"], "Pred"), (["meets_req"], "Pred"), (["cmp", "price_out", "le", 25], "Pred"),
    (["and", ["top"]], "Pred"), (["or", ["bot"], ["is", "has_tee"]], "Pred"),
    (["zero"], "Scorer"), (["add", ["lit", 1]], "Scorer"), (["clamp", 0, 1, ["field", "context"]], "Scorer"),
    (["argmax"], "Selector"), (["top_k", 2.0, ["argmax"]], "Selector"), (["chain", []], "Selector"),
    (["prefer", ["tier_eq", "partner"], ["ordered"]], "Selector"),
    (["id"], "Xform"), (["seq", ["id"]], "Xform"), (["set_param", "x", "from_ctx"], "Xform"),
    (["set_param", "x", False], "Xform"), (["filter_text", []], "Xform"), (["filter_image", ["NFKC", {}]], "Xform"),
    (["always", NC], "FailPlan"), (["override", ["always", NC], "auth_error", {"action": "abort"}], "FailPlan"),
    (pol(), "Policy"),
])
def test_admitted_with_its_sort(term, sort) -> None:
    assert check(term) == sort
    assert check_sort(term, sort) == sort


def test_reference_example_policy() -> None:
    term = ["policy",
            ["and", ["meets_req"], ["not", ["is", "breaker_open"]], ["cmp", "price_out", "le", 25]],
            ["add", ["scale", 0.7, ["neg", ["normalize", ["field", "price_in"]]]],
             ["scale", 0.3, ["normalize", ["field", "context"]]]],
            ["argmax"],
            ["seq", ["filter_text", ["NFKC"]], ["clamp_param", "temperature", 0, 1]],
            ["override", ["always", NC], "auth_error", {"action": "disable_provider"}]]
    assert check(term) == "Policy"


def test_check_does_not_touch_the_term() -> None:
    term = pol(["and", ["cmp", "price_in", "le", 5], ["top"]], ["add", ["zero"], ["lit", 2]])
    before = copy.deepcopy(term)
    check(term)
    assert term == before


def test_action_accepts_core_keys_and_numeric_knobs() -> None:
    action = {"action": "retry_same", "attempts": 2, "backoff_ms": [100, 200.5], "then_action": "abort",
              "open_breaker_ms": 0, "mark_unavailable_ms": 30000}
    assert check(["always", action]) == "FailPlan"
    assert check(["always", {"action": "retry_same", "backoff_ms": 250}]) == "FailPlan"
    assert check(["always", {"action": "retry_same", "backoff_ms": []}]) == "FailPlan"


def test_chain_accepts_either_key_spelling() -> None:
    chain = [{"provider": "p1", "model": "m1"}, {"provider_id": "p2", "model_family": "m2"},
             {"provider": "p3", "model_family": "m3"}]
    assert check(["chain", chain]) == "Selector"


# --------------------------------------------------------------------------
# term_shape / unknown_op / arity / sort_mismatch
# --------------------------------------------------------------------------

@pytest.mark.parametrize("term, path", [
    ([], "$"), ("top", "$"), (None, "$"), (5, "$"), ({"op": "top"}, "$"), ([5], "$"), ([["top"]], "$"),
    (("top",), "$"),                                    # a tuple is not a JSON array
    (["not", "top"], "$[1]"),
    (["and", ["top"], []], "$[2]"),
    (pol(scorer=["add", ["zero"], {"op": "zero"}]), "$[2][2]"),
    (["gate", None, ["zero"]], "$[1]"),
])
def test_term_shape(term, path: str) -> None:
    assert_refused(term, "term_shape", path)


@pytest.mark.parametrize("term, path", [
    (["frobnicate"], "$[0]"),
    (["quality"], "$[0]"),                               # a v1 composite scorer, removed in v2
    (["ev_zero"], "$[0]"),                               # the v1 Evidence sub-algebra, removed in v2
    (["Top"], "$[0]"),                                   # op names are case-sensitive
    (pol(["and", ["top"], ["nope"]]), "$[1][2][0]"),
])
def test_unknown_op(term, path: str) -> None:
    assert_refused(term, "unknown_op", path)


@pytest.mark.parametrize("term, path", [
    (["not"], "$"), (["top", ["top"]], "$"), (["cmp", "price_in", "le"], "$"),
    (["cmp", "price_in", "le", 5, 6], "$"), (["and"], "$"), (["or"], "$"), (["add"], "$"), (["seq"], "$"),
    (["top_k", 3], "$"), (["policy", ["top"]], "$"),
    (pol(selector=["top_k", 1, ["argmax"], ["argmax"]]), "$[3]"),
])
def test_arity(term, path: str) -> None:
    assert_refused(term, "arity", path)


@pytest.mark.parametrize("term, path", [
    (["and", ["meets_req"], ["zero"]], "$[2]"),          # a Scorer where a Pred belongs
    (["not", ["argmax"]], "$[1]"),
    (["add", ["lit", 1], ["top"]], "$[2]"),
    (["seq", ["id"], ["always", NC]], "$[2]"),
    (["gate", ["zero"], ["zero"]], "$[1]"),
    (pol(xform=["when", ["top"], ["zero"]]), "$[4][2]"),
    (["policy", ["zero"], ["zero"], ["argmax"], ["id"], ["always", NC]], "$[1]"),
    (["override", ["policy", ["top"], ["zero"], ["argmax"], ["id"], ["always", NC]], "x", NC], "$[1]"),
])
def test_sort_mismatch(term, path: str) -> None:
    assert_refused(term, "sort_mismatch", path)


def test_check_sort_refuses_the_wrong_sort_at_the_root() -> None:
    with pytest.raises(AdmissionError) as info:
        check_sort(["top"], "Policy", path=("policy_ir",))
    assert (info.value.code, info.value.path) == ("sort_mismatch", "$.policy_ir")


def test_a_path_prefix_is_kept() -> None:
    with pytest.raises(AdmissionError) as info:
        check(["not", ["frob"]], path=("body", "policy_ir"))
    assert info.value.path == "$.body.policy_ir[1][0]"


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------

@pytest.mark.parametrize("term, path", [
    (["cmp", "price_in", "le", "5"], "$[3]"),
    (["cmp", "price_in", "le", None], "$[3]"),            # null is not a number
    (["cmp", "price_in", "le", True], "$[3]"),            # booleans are not numbers
    (["cmp", "price_in", "le", float("inf")], "$[3]"),
    (["cmp", "price_in", "le", float("-inf")], "$[3]"),
    (["cmp", "price_in", "le", float("nan")], "$[3]"),
    (["cmp", "price_in", "le", 10 ** 400], "$[3]"),       # an integer no double can hold
    (["lit", False], "$[1]"), (["lit", [1]], "$[1]"),
    (["scale", True, ["zero"]], "$[1]"),
    (["clamp", 0, None, ["zero"]], "$[2]"),
    (["sample", "0.5"], "$[1]"),
    (["clamp_param", "t", 0, True], "$[3]"),
    (["jitter", "t", None], "$[2]"),
    (pol(scorer=["add", ["lit", 1], ["scale", "x", ["zero"]]]), "$[2][2][1]"),
])
def test_bad_number(term, path: str) -> None:
    assert_refused(term, "bad_number", path)


@pytest.mark.parametrize("k", [0, -1, 2.5, 0.5, True, None, "3", float("inf"), float("nan"), 10 ** 400])
def test_bad_count(k) -> None:
    assert_refused(["top_k", k, ["argmax"]], "bad_count", "$[1]")


@pytest.mark.parametrize("k", [1, 2, 2.0, 4096, 1e300, 2 ** 60])
def test_count_admits_positive_integers(k) -> None:
    assert check(["top_k", k, ["argmax"]]) == "Selector"


@pytest.mark.parametrize("rel", ["lte", "LE", "", None, 1, ["le"], "<="])
def test_bad_relation(rel) -> None:
    assert_refused(["cmp", "price_in", rel, 5], "bad_relation", "$[2]")


@pytest.mark.parametrize("term, path", [
    (["cmp", 5, "le", 5], "$[1]"), (["cmp", None, "le", 5], "$[1]"),
    (["is", ["has_tee"]], "$[1]"), (["field", True], "$[1]"),
])
def test_bad_field(term, path: str) -> None:
    assert_refused(term, "bad_field", path)


@pytest.mark.parametrize("term, path", [
    (["cmp", "wat", "le", 1], "$[1]"), (["is", "quality"], "$[1]"), (["field", "quality_hint"], "$[1]"),
    (["field", "bench_x"], "$[1]"),                      # declared by a host, not by the core
    (["is", "Has_tee"], "$[1]"),
])
def test_undeclared_field(term, path: str) -> None:
    assert_refused(term, "undeclared_field", path)


@pytest.mark.parametrize("term, path", [
    (["cmp", "has_tee", "le", 5], "$[1]"),               # a Bool field in a Num position
    (["field", "breaker_open"], "$[1]"),
    (["is", "price_in"], "$[1]"),                        # a Num field in a Bool position
])
def test_field_sort(term, path: str) -> None:
    assert_refused(term, "field_sort", path)


@pytest.mark.parametrize("term, path", [
    (["tier_eq", "platinum"], "$[1]"), (["min_tier", None], "$[1]"), (["min_tier", 1], "$[1]"),
    (["tier_eq", "Partner"], "$[1]"),
])
def test_unknown_tier(term, path: str) -> None:
    assert_refused(term, "unknown_tier", path)


@pytest.mark.parametrize("term, path", [
    (["family_eq", 5], "$[1]"), (["provider_eq", None], "$[1]"), (["served_by_eq", ["p"]], "$[1]"),
    (["has_cap", True], "$[1]"), (["set_param", 1, 2], "$[1]"), (["inject_seed", None], "$[1]"),
    (["clamp_param", {}, 0, 1], "$[1]"), (["jitter", 0, 1], "$[1]"), (["custom", 7], "$[1]"),
    (["override", ["always", NC], None, NC], "$[2]"),
])
def test_bad_string(term, path: str) -> None:
    assert_refused(term, "bad_string", path)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, float("nan"), float("inf"), 10 ** 400])
def test_bad_scalar(value) -> None:
    assert_refused(["set_param", "temperature", value], "bad_scalar", "$[2]")


@pytest.mark.parametrize("action, path", [
    ("next_candidate", "$[1]"), (["next_candidate"], "$[1]"), (None, "$[1]"),
    ({}, "$[1].action"), ({"action": "explode"}, "$[1].action"), ({"action": None}, "$[1].action"),
    ({"action": "abort", "then_action": "explode"}, "$[1].then_action"),
    ({"action": "abort", "then_action": None}, "$[1].then_action"),
    ({"action": "abort", "attempts": True}, "$[1].attempts"),          # a boolean is not a count
    ({"action": "abort", "attempts": None}, "$[1].attempts"),
    ({"action": "abort", "attempts": "2"}, "$[1].attempts"),
    ({"action": "abort", "open_breaker_ms": float("inf")}, "$[1].open_breaker_ms"),
    ({"action": "abort", "backoff_ms": "100"}, "$[1].backoff_ms"),
    ({"action": "abort", "backoff_ms": {"a": 1}}, "$[1].backoff_ms"),
    ({"action": "abort", "backoff_ms": None}, "$[1].backoff_ms"),
    ({"action": "abort", "backoff_ms": [100, None]}, "$[1].backoff_ms[1]"),
    ({"action": "abort", "backoff_ms": [100, False]}, "$[1].backoff_ms[1]"),
    ({"action": "abort", "mark_unavailable_ms": "soon"}, "$[1].mark_unavailable_ms"),
    ({"action": "abort", "note": None}, "$[1].note"),
    ({"action": "abort", "flag": True}, "$[1].flag"),
    ({"action": "abort", "odd key": [1]}, '$[1]["odd key"]'),
])
def test_bad_action(action, path: str) -> None:
    assert_refused(["always", action], "bad_action", path)


def test_bad_action_inside_an_override_and_a_policy() -> None:
    assert_refused(["override", ["always", NC], "timeout", {"action": "retry"}], "bad_action", "$[3].action")
    assert_refused(pol(failplan=["override", ["always", {"action": "x"}], "timeout", NC]),
                   "bad_action", "$[5][1][1].action")


@pytest.mark.parametrize("recipe, path", [
    ("NFKC", "$[1]"), ({"NFKC": 1}, "$[1]"), (None, "$[1]"),
    (["NFKC", 5], "$[1][1]"), (["NFKC", None], "$[1][1]"), ([["NFKC"]], "$[1][0]"),
    ([{"p": "x"}], "$[1][0].p"), ([{"p": None}], "$[1][0].p"), ([{"p": True}], "$[1][0].p"),
    (["a", {"p": 1, "q": float("nan")}], "$[1][1].q"),
])
def test_bad_recipe(recipe, path: str) -> None:
    assert_refused(["filter_text", recipe], "bad_recipe", path)
    assert_refused(["filter_image", recipe], "bad_recipe", path)


@pytest.mark.parametrize("chain, path", [
    ({"provider": "p", "model": "m"}, "$[1]"), (None, "$[1]"), ("p/m", "$[1]"),
    (["p/m"], "$[1][0]"), ([["p", "m"]], "$[1][0]"),
    ([{"provider": "p"}], "$[1][0]"), ([{"model": "m"}], "$[1][0]"), ([{}], "$[1][0]"),
    ([{"provider": "p", "model": "m", "note": "x"}], "$[1][0].note"),     # closed record: identity stays injective
    ([{"provider": "p", "model": 5}], "$[1][0].model"),
    ([{"provider": None, "model": "m"}], "$[1][0].provider"),
    ([{"provider": "p", "model": "m"}, {"provider_id": "q", "model_family": None}], "$[1][1].model_family"),
])
def test_bad_chain(chain, path: str) -> None:
    assert_refused(["chain", chain], "bad_chain", path)


def test_unknown_custom() -> None:
    assert_refused(["custom", "mine"], "unknown_custom", "$[1]")
    assert_refused(["seq", ["id"], ["custom", "other"]], "unknown_custom", "$[2][1]", customs={"mine"})
    assert check(["custom", "mine"], customs={"mine"}) == "Xform"


# --------------------------------------------------------------------------
# the first fault wins
# --------------------------------------------------------------------------

def test_first_fault_depth_first_left_to_right() -> None:
    term = pol(["and", ["cmp", "price_in", "lt", "x"], ["frob"]], ["lit", None])
    assert_refused(term, "bad_number", "$[1][1][3]")
    term = pol(["and", ["top"], ["frob"]], ["lit", None])
    assert_refused(term, "unknown_op", "$[1][2][0]")


def test_arity_is_judged_before_the_arguments() -> None:
    assert_refused(["cmp", "nope", "bad", None, 1], "arity", "$")


def test_arguments_in_signature_order() -> None:
    assert_refused(["cmp", "nope", "bad", None], "undeclared_field", "$[1]")
    assert_refused(["cmp", "price_in", "bad", None], "bad_relation", "$[2]")
    assert_refused(["gate", ["frob"], ["zero", 1]], "unknown_op", "$[1][0]")


# --------------------------------------------------------------------------
# resource bounds
# --------------------------------------------------------------------------

def nested(levels: int) -> list:
    """A Scorer of exactly ``levels`` term levels: neg(neg(...field(context)))."""
    t: list = ["field", "context"]
    for _ in range(levels - 1):
        t = ["neg", t]
    return t


def test_limits_are_the_spec_values() -> None:
    assert (MAX_DEPTH, MAX_NODES) == (64, 4096)


def test_depth_64_admitted_65_refused() -> None:
    assert check(nested(64)) == "Scorer"
    assert_refused(nested(65), "too_deep", "$" + "[1]" * 64)


def test_depth_counts_from_the_root_of_a_policy() -> None:
    # policy(1) -> scorer chain: the scorer may be 63 levels deep.
    assert check(pol(scorer=nested(63))) == "Policy"
    assert_refused(pol(scorer=nested(64)), "too_deep", "$[2]" + "[1]" * 63)


def test_parameters_do_not_count_as_depth() -> None:
    # chain/recipe/action records sit inline; only subterms count.
    t: list = ["chain", [{"provider": "p", "model": "m"}]]
    for _ in range(62):
        t = ["top_k", 1, t]
    assert check(t) == "Selector"


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_very_deep_terms_refused_without_exhausting_the_stack(levels: int) -> None:
    err = refused(nested(levels))
    assert err.code == "too_deep" and err.parts == (1,) * 64


def test_4096_nodes_admitted_4097_refused() -> None:
    wide = ["and"] + [["top"]] * (MAX_NODES - 1)        # 1 + 4095 = 4096 nodes
    assert check(wide) == "Pred"
    assert_refused(wide + [["top"]], "too_large", f"$[{MAX_NODES}]")


def test_node_count_spans_the_whole_policy() -> None:
    # 1 (policy) + 1 (and) + 4090 (top) + scorer 1 + selector 1 + xform 1 + failplan 1 = 4096
    term = pol(["and"] + [["top"]] * 4090)
    assert check(term) == "Policy"
    term = pol(["and"] + [["top"]] * 4091)
    err = refused(term)
    assert (err.code, err.path) == ("too_large", "$[5]")   # the 4097th node is the FailPlan


def test_huge_width_refused_early() -> None:
    assert_refused(["or"] + [["bot"]] * 200_000, "too_large", "$[4096]")


def test_compiling_a_very_deep_term_is_a_refusal_not_a_crash() -> None:
    # CORE BUG (reported): Compiler.compile json.dumps the term for its text
    # cache before admission; a 100 000-level term raises RecursionError
    # instead of AdmissionError(too_deep).
    with pytest.raises(AdmissionError) as info:
        compile_term(nested(100_000))
    assert info.value.code == "too_deep"


def test_compiling_depth_64_and_65() -> None:
    assert compile_term(nested(64)).sort == "Scorer"
    with pytest.raises(AdmissionError) as info:
        compile_term(nested(65))
    assert info.value.code == "too_deep"


# --------------------------------------------------------------------------
# declared fields and tier orders
# --------------------------------------------------------------------------

def test_declared_host_fields() -> None:
    schema = Schema([FieldDecl("region_score", "Num", 0), FieldDecl("eu_hosted", "Bool", False)])
    assert check(["cmp", "region_score", "gt", 0.5], schema) == "Pred"
    assert check(["field", "region_score"], schema) == "Scorer"
    assert check(["is", "eu_hosted"], schema) == "Pred"
    assert check(["cmp", "price_in", "le", 1], schema) == "Pred"         # the core stays declared
    assert_refused(["cmp", "region_score", "gt", 0.5], "undeclared_field", "$[1]")   # default schema
    assert_refused(["is", "region_score"], "field_sort", "$[1]", schema)
    assert_refused(["cmp", "eu_hosted", "eq", 1], "field_sort", "$[1]", schema)


def test_schema_from_declarations() -> None:
    schema = Schema.from_declarations([{"name": "bench_a_rank", "sort": "Num", "default": 1e9}])
    assert check(["cmp", "bench_a_rank", "le", 5], schema) == "Pred"


@pytest.mark.parametrize("decls", [
    [FieldDecl("price_in", "Num", 0)],                                   # a core field cannot be redeclared
    [FieldDecl("x", "Num", 0), FieldDecl("x", "Num", 1)],
])
def test_schema_refuses_bad_declarations(decls) -> None:
    with pytest.raises(ValueError):
        Schema(decls)


@pytest.mark.parametrize("sort, default", [("Num", True), ("Num", "0"), ("Num", float("nan")), ("Bool", 0),
                                           ("Str", "x")])
def test_field_declaration_needs_a_matching_default(sort, default) -> None:
    with pytest.raises(ValueError):
        FieldDecl("x", sort, default)


def test_declared_tier_order() -> None:
    schema = Schema(tier_order=["bronze", "silver", "gold"])
    assert check(["min_tier", "silver"], schema) == "Pred"
    assert check(["tier_eq", "gold"], schema) == "Pred"
    assert_refused(["min_tier", "partner"], "unknown_tier", "$[1]", schema)
    assert_refused(["tier_eq", "fallback"], "unknown_tier", "$[1]", schema)
    assert_refused(["min_tier", "gold"], "unknown_tier", "$[1]")             # the default order


@pytest.mark.parametrize("order", [[], ["a", "a"], ["a", ""], ["a", 1]])
def test_tier_order_must_be_distinct_names(order) -> None:
    with pytest.raises(ValueError):
        Schema(tier_order=order)


# --------------------------------------------------------------------------
# the compiler refuses what admission refuses
# --------------------------------------------------------------------------

def test_compile_refuses_like_check() -> None:
    with pytest.raises(AdmissionError) as info:
        compile_term(["cmp", "price_in", "le", float("nan")])
    assert (info.value.code, info.value.path) == ("bad_number", "$[3]")
    with pytest.raises(AdmissionError) as info:
        compile_term(["top"], want="Policy")
    assert info.value.code == "sort_mismatch"


def test_compile_refusal_does_not_depend_on_the_cache() -> None:
    # CORE BUG (reported, minor): the text cache is keyed by json.dumps(term),
    # which cannot tell a tuple from a list; once ["top"] is cached, ("top",)
    # — refused by check() — compiles.
    c = Compiler()
    assert c.compile(["top"]).sort == "Pred"
    with pytest.raises(AdmissionError):
        c.compile(("top",))


def test_compile_refuses_an_unencodable_string() -> None:
    # CORE BUG (reported): a lone surrogate passes admission (it is a str) and
    # then identity = sha256(UTF-8 bytes) raises UnicodeEncodeError.
    with pytest.raises(AdmissionError):
        compile_term(["family_eq", "\ud800"])


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------

sorted_terms = st.one_of(
    S.pred().map(lambda t: (t, "Pred")),
    S.scorer().map(lambda t: (t, "Scorer")),
    S.selector().map(lambda t: (t, "Selector")),
    S.xform().map(lambda t: (t, "Xform")),
    S.failplan().map(lambda t: (t, "FailPlan")),
    S.policy().map(lambda t: (t, "Policy")),
)


@given(sorted_terms)
def test_generated_terms_are_admitted_with_their_sort(pair) -> None:
    term, sort = pair
    assert check(term, S.SCHEMA) == sort


@given(S.any_term())
def test_any_generated_term_is_admitted(term) -> None:
    assert check(term, S.SCHEMA) in {"Pred", "Scorer", "Selector", "Xform", "FailPlan", "Policy"}


OP_NAMES = sorted(OPS)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 64), 2 ** 64), st.floats(), st.text(max_size=6),
    st.sampled_from(OP_NAMES + S.NUM_FIELDS + S.BOOL_FIELDS + S.TIERS + list(S.RELATIONS) + ["from_ctx"]),
)
json_like = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.builds(lambda op, rest: [op, *rest], st.sampled_from(OP_NAMES), st.lists(inner, max_size=5)),
        st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["action", "provider", "model", "then_action",
                                                                          "backoff_ms", "attempts"])),
                        inner, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(json_like)
def test_arbitrary_json_like_values_only_raise_admission_errors(value) -> None:
    try:
        sort = check(value, S.SCHEMA)
    except AdmissionError as err:
        assert err.code and err.path.startswith("$")
        return
    assert sort in {"Pred", "Scorer", "Selector", "Xform", "FailPlan", "Policy"}


# ---- refusals of the effective policy point into the term the caller sent ---------------------

def _router_with_envelope():
    from unhardcoded.catalog import build_catalog
    from unhardcoded.config import Settings
    from unhardcoded.router.engine import Router
    doc = {"envelope": '["and", ["meets_req"], ["not", ["is", "disabled"]]]',
           "providers": {"a": {"wire": "openai", "base_url": "http://127.0.0.1:9/v1"}},
           "models": {"m": {"routes": [{"provider": "a", "price_in": 1, "price_out": 1}]}},
           "profiles": {"default": {"policy": '["policy", ["top"], ["zero"], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]'}}}
    return Router(build_catalog(doc), Settings())


def _nested_not(inner, n):
    for _ in range(n):
        inner = ["not", inner]
    return inner


def test_a_policy_too_deep_only_under_the_envelope_is_refused_at_a_path_in_the_sent_term() -> None:
    """Alone the policy fits the depth bound; under the envelope's 'and' its filter is one level
    deeper and does not. The refusal must name a place in what the caller sent: the deepest node
    of its filter ($.policy_ir[1] then [1] x 62), not the effective term's $.policy_ir[1][2]..."""
    from unhardcoded.lang.admission import MAX_DEPTH
    filt = _nested_not(["cmp", "price_in", "le", 5], MAX_DEPTH - 2)
    term = ["policy", filt, ["zero"], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]
    check(term)  # admissible as sent
    router = _router_with_envelope()
    with pytest.raises(AdmissionError) as info:
        router.prepare({"model": "", "messages": [{"role": "user", "content": "x"}], "policy_ir": term})
    err = info.value
    assert err.code == "too_deep"
    assert err.parts == ("policy_ir", 1, *([1] * (MAX_DEPTH - 2)))
    node = term
    for p in err.parts[1:]:
        node = node[p]
    assert node == ["cmp", "price_in", "le", 5]       # the path is a real place in the sent term
    assert "envelope" in err.message


def test_a_predicate_too_deep_only_under_the_profile_and_envelope_is_refused_at_a_path_in_it() -> None:
    from unhardcoded.lang.admission import MAX_DEPTH
    pred = _nested_not(["cmp", "price_in", "le", 5], MAX_DEPTH - 2)
    check(pred)
    router = _router_with_envelope()
    with pytest.raises(AdmissionError) as info:
        router.prepare({"model": "", "messages": [{"role": "user", "content": "x"}], "policy_ir": pred})
    err = info.value
    assert err.code == "too_deep"
    # the predicate sits three levels down in the effective policy (policy, envelope's and,
    # profile's and): the first node past the bound is the predicate's 62nd level
    assert err.parts == ("policy_ir", *([1] * (MAX_DEPTH - 3)))
    node = pred
    for p in err.parts[1:]:
        node = node[p]
    assert node[0] == "not" and "profile" in err.message and "envelope" in err.message


# --------------------------------------------------------------------------
# an empty object where a Recipe or Chain belongs (the reference's one Lua table)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("term, normal", [
    (["filter_text", {}], ["filter_text", []]),
    (["filter_image", {}], ["filter_image", []]),
    (["chain", {}], ["chain", []]),
    (["when", ["top"], ["filter_text", {}]], ["when", ["top"], ["filter_text", []]]),
])
def test_empty_object_is_the_empty_list(term, normal) -> None:
    from unhardcoded.lang import normalize_and_encode
    check(term)
    assert Compiler().compile(term).term == normal  # the compiler's memoised pass too
    nf, encoding = normalize_and_encode(term)
    assert nf == normal  # ({} != [] in Python: the list is really there)
    assert encoding == normalize_and_encode(normal)[1]


@pytest.mark.parametrize("term, code", [
    (["filter_text", {"NFKC": 1}], "bad_recipe"), (["filter_image", {"q": 80}], "bad_recipe"),
    (["chain", {"provider": "p", "model": "m"}], "bad_chain"),
])
def test_a_non_empty_object_is_still_refused(term, code) -> None:
    assert_refused(term, code, "$[1]")
