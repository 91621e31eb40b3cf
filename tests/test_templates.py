"""Policy templates: intents compiled to ordinary sigma-pol/v2 terms, as a library and over HTTP."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from unhardcoded.catalog import load_catalog, templates
from unhardcoded.lang.compiler import compile_policy
from unhardcoded.lang.errors import LangError
from unhardcoded.router.decision import decide

from unhardcoded.testing.upstreams import Fail

from .harness import KEYS, start_stack

CATALOG = load_catalog()
GROUPS = templates.tier_groups({p: v.tier for p, v in CATALOG.providers.items()}, CATALOG.tier_order)


def build(tid, options=None):
    term, intent = templates.build(tid, options, GROUPS, tuple(CATALOG.providers))
    return compile_policy(term, CATALOG.schema), intent


def ranked(compiled) -> list[tuple[str, str]]:
    plan = decide(compiled.policy, CATALOG.candidates(), {"request": {}, "state": {"breakers": {}, "disabled": {},
                                                                                "credits": {}, "ema": {}}}, None)
    return [(r.candidate["provider_id"], r.candidate["model_family"]) for r in plan.ordered]


def test_the_four_templates_are_listed_with_their_requirements_and_defaults() -> None:
    listed = templates.describe(GROUPS)
    assert [t["id"] for t in listed] == ["cheapest-family", "smart-value", "agent", "default"]
    by_id = {t["id"]: t for t in listed}
    assert by_id["cheapest-family"]["required"] == ["family"]
    assert by_id["cheapest-family"]["defaults"]["provider_order"] == GROUPS
    assert by_id["smart-value"]["defaults"]["top_n"] == 5
    assert by_id["agent"]["defaults"]["min_context"] == 128_000


@pytest.mark.parametrize("tid", ["default", "agent"])
def test_default_and_agent_compile_to_the_shipped_profiles(tid) -> None:
    compiled, intent = build(tid)
    profile = compile_policy(CATALOG.profiles[tid].policy, CATALOG.schema)
    assert compiled.identity == profile.identity
    assert compiled.encoding == profile.encoding
    assert intent["template"] == tid


def test_tier_groups_put_the_best_tier_first() -> None:
    groups = templates.tier_groups({"a": "fallback", "b": "partner", "c": "partner", "d": "odd"},
                                   ("fallback", "marketplace", "partner"))
    assert groups == [["b", "c"], ["a"], ["d"]]


def test_cheapest_family_keeps_to_the_family_and_orders_by_cost() -> None:
    family = next(f for f, m in CATALOG.models.items() if len(m.routes) >= 2
                  and all(r.price.input is not None and r.price.input <= 5 and r.price.output is not None
                          and r.price.output <= 25 for r in m.routes))
    compiled, intent = build("cheapest-family", {"family": family})
    got = ranked(compiled)
    assert got and {fam for _, fam in got} == {family}
    prices = [CATALOG.route(p, f).price for p, f in got]
    costs = [0.8 * pr.input + 0.2 * pr.output for pr in prices]
    assert costs == sorted(costs)
    assert intent["provider_strategy"] == "cost" and intent["family"] == family


def test_cheapest_family_ordered_puts_the_precedence_before_cost() -> None:
    family = next(f for f, m in CATALOG.models.items() if len(m.routes) >= 2
                  and len({CATALOG.providers[r.provider].tier for r in m.routes}) >= 2
                  and all(r.price.input is not None and r.price.input <= 5 and r.price.output is not None
                          and r.price.output <= 25 for r in m.routes))
    routes = CATALOG.models[family].routes
    # the most expensive route first, whatever the cost says
    dearest = max(routes, key=lambda r: 0.8 * r.price.input + 0.2 * r.price.output).provider
    order = [[dearest], [r.provider for r in routes if r.provider != dearest]]
    compiled, intent = build("cheapest-family", {"family": family, "provider_strategy": "ordered",
                                                 "provider_order": order})
    assert ranked(compiled)[0] == (dearest, family)
    assert intent["provider_order"] == order
    default_order, _ = build("cheapest-family", {"family": family, "provider_strategy": "ordered"})
    first = ranked(default_order)[0][0]
    assert CATALOG.providers[first].tier == max((CATALOG.providers[r.provider].tier for r in routes),
                                                key=CATALOG.tier_order.index)


def test_smart_value_stays_within_the_top_n() -> None:
    compiled, intent = build("smart-value", {"top_n": 3})
    got = ranked(compiled)
    assert got and intent["top_n"] == 3
    rank = {c["model_family"]: c.get("bench_intelligence_rank") for c in CATALOG.candidates()}
    assert all(rank[fam] is not None and rank[fam] <= 3 for _, fam in got)
    wider = {fam for _, fam in ranked(build("smart-value", {"top_n": 20})[0])}
    assert {fam for _, fam in got} < wider


@pytest.mark.parametrize("tid, options, code, path", [
    ("no-such", None, "unknown_template", "$"),
    ("default", {"top_n": 3}, "unknown_option", "$.top_n"),
    ("smart-value", {"top_n": 0}, "invalid_option", "$.top_n"),
    ("smart-value", {"top_n": 1.5}, "invalid_option", "$.top_n"),
    ("smart-value", {"top_n": True}, "invalid_option", "$.top_n"),
    ("smart-value", {"top_n": "3"}, "invalid_option", "$.top_n"),
    ("smart-value", {"reliability_floor": 2}, "invalid_option", "$.reliability_floor"),
    ("smart-value", {"max_price_in": -1}, "invalid_option", "$.max_price_in"),
    ("smart-value", [], "invalid_option", "$"),
    ("cheapest-family", {}, "missing_option", "$.family"),
    ("cheapest-family", {"family": "  "}, "missing_option", "$.family"),
    ("cheapest-family", {"family": "x", "provider_strategy": "fastest"}, "invalid_option", "$.provider_strategy"),
    ("cheapest-family", {"family": "x", "provider_order": [["openai"]]}, "invalid_option", "$.provider_order"),
    ("cheapest-family", {"family": "x", "provider_strategy": "ordered", "provider_order": [["openai", "nope"]]},
     "unknown_provider", "$.provider_order[0][1]"),
    ("cheapest-family", {"family": "x", "provider_strategy": "ordered", "provider_order": ["openai", ["openai"]]},
     "invalid_option", "$.provider_order[1][0]"),
    ("cheapest-family", {"family": "x", "provider_strategy": "ordered", "provider_order": []},
     "invalid_option", "$.provider_order"),
])
def test_bad_options_are_refused_with_a_code_and_the_path(tid, options, code, path) -> None:
    with pytest.raises(templates.TemplateError) as e:
        templates.build(tid, options, GROUPS, tuple(CATALOG.providers))
    assert (e.value.code, e.value.path) == (code, path)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                     max_size=3), max_leaves=8)
option_names = st.sampled_from(["family", "provider_strategy", "provider_order", "top_n", "expected_input_share",
                                "reliability_floor", "max_price_in", "max_price_out", "other"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(templates.TEMPLATE_IDS),
       st.dictionaries(option_names, json_values | st.sampled_from(["cost", "ordered", "gpt-5.4-mini"]), max_size=4))
def test_any_options_give_an_admissible_policy_or_a_typed_refusal(tid, options) -> None:
    try:
        term, _ = templates.build(tid, options, GROUPS, tuple(CATALOG.providers))
    except templates.TemplateError as exc:
        assert exc.code and exc.path.startswith("$")
        return
    try:
        compile_policy(term, CATALOG.schema)
    except LangError as exc:  # pragma: no cover - a template must never build an inadmissible term
        pytest.fail(f"{tid} {options!r} built an inadmissible term: {exc}")


# ---------------------------------------------------------------- over HTTP
@pytest.fixture
async def stack(tmp_path):
    s = await start_stack(tmp_path)
    yield s
    await s.close()


async def test_templates_over_http_and_the_result_runs_as_a_policy(stack) -> None:
    status, listed = await stack.get("/x/policy/templates")
    assert status == 200
    by_id = {t["id"]: t for t in listed["templates"]}
    assert by_id["cheapest-family"]["defaults"]["provider_order"] == [["an", "ge", "oa"], ["or2"]]

    status, built = await stack.post("/x/policy/templates/default", raw=b"")  # no body: no options
    assert status == 200 and built["intent"]["template"] == "default" and built["version"] == "sigma-pol/v2"

    status, built = await stack.post("/x/policy/templates/cheapest-family",
                                     {"family": "gpt-5.4-mini", "provider_strategy": "ordered",
                                      "provider_order": [["or2"], ["oa"]]})
    assert status == 200, built
    assert built["policy_ir"][0] == "policy" and built["fingerprint"] and built["identity"]
    status, normal = await stack.post("/x/policy/normalize", {"policy_ir": built["policy_ir"]})
    assert normal["identity"] == built["identity"]
    status, rank = await stack.post("/x/rank", {"policy_ir": built["policy_ir"]})
    assert [(r["provider"], r["model_family"]) for r in rank["ranked"]] == [("or2", "gpt-5.4-mini"),
                                                                            ("oa", "gpt-5.4-mini")]
    # the template's FailPlan runs too: or2 answers 500 twice (retry_same once), then oa
    stack.openai.script("gpt-5.4-mini", Fail(500), Fail(500))
    r = await stack.client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body={"policy_ir": built["policy_ir"]})
    x = r.model_extra["x_router"]
    assert (x["provider"], x["model_family"]) == ("oa", "gpt-5.4-mini")
    assert x["policy_sent"]["fingerprint"] == built["fingerprint"]  # the effective one adds the envelope
    path = [(e["event"], e.get("provider_id"), e.get("error_kind")) for e in x["decision_trace"]["decision_path"]
            if e["event"] in ("attempted", "retry_scheduled")]
    assert path == [("attempted", "or2", "server_error"), ("retry_scheduled", "or2", None),
                    ("attempted", "or2", "server_error"), ("attempted", "oa", None)]


@pytest.mark.parametrize("path, body, status, code, param", [
    ("/x/policy/templates/nope", {}, 404, "unknown_template", None),
    ("/x/policy/templates/smart-value", {"top_n": -2}, 400, "invalid_policy_template", "$.top_n"),
    ("/x/policy/templates/cheapest-family", {}, 400, "invalid_policy_template", "$.family"),
    ("/x/policy/templates/agent", {"speed": 1}, 400, "invalid_policy_template", "$.speed"),
    ("/x/policy/templates/smart-value", "[1, 2]", 400, "invalid_policy_template", "$"),
    ("/x/policy/templates/smart-value", '{"top_n": 1, "top_n": 2}', 400, "json_duplicate_key", "$.top_n"),
])
async def test_template_errors_are_openai_shaped_with_the_path(stack, path, body, status, code, param) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    got, err = await stack.post(path, raw=raw)
    assert got == status, err
    assert err["error"]["code"] == code and err["error"]["param"] == param
    assert "SECRET" not in json.dumps(err) and KEYS
