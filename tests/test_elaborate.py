"""The declarative policy surface (``lang/elaborate.py``) and ``POST /x/policy/build``.

``conformance/declarative/sigma_pol_v2_build.json`` holds specs with the encoding and fingerprint of the
term each lowers to; every one was checked against the reference's own elaborate, normalise
and fingerprint (run locally, not committed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from unhardcoded.lang import LangError, compile_policy, lane_fingerprint, normalize_and_encode
from unhardcoded.lang.elaborate import SpecError, build_policy

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "conformance" / "declarative" / "sigma_pol_v2_build.json")
                     .read_text(encoding="utf-8"))["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_a_spec_lowers_to_the_references_term(vector) -> None:
    _, enc = normalize_and_encode(build_policy(vector["spec"]))
    assert enc == vector["encoding"] and lane_fingerprint(enc) == vector["fingerprint"]
    compile_policy(build_policy(vector["spec"]))  # and it is admitted as it is


def test_the_lowering_states_what_each_part_becomes() -> None:
    term = build_policy({"filter": {"tier_in": ["partner"]}, "selector": "chain", "chain": ["oa/gpt-5.4-mini"],
                         "retry_table": {"timeout": {"action": "retry_same", "max": 1}, "unknown": {"action": "abort"}}})
    assert term == ["policy", ["tier_eq", "partner"], ["gate", ["not", ["is", "breaker_open"]], ["zero"]],
                    ["chain", ["oa/gpt-5.4-mini"]], ["id"],
                    ["override", ["always", {"action": "abort"}], "timeout", {"action": "retry_same", "max": 1}]]
    assert build_policy({"filter": {"provider_not_in": ["a"]}})[1] == ["not", ["provider_eq", "a"]]
    assert build_policy({"filter": {"price_max": {}}})[1] == ["top"]
    assert build_policy({"mutate": {"jitter": {"top_p": 0.1, "temperature": 0.2}}})[4] == [
        "seq", ["jitter", "temperature", 0.2], ["jitter", "top_p", 0.1]]


@pytest.mark.parametrize("spec, path, words", [
    ([], "$", "JSON object"),
    ({"weights": {"quality": 1}}, "$.weights", "scorer term"),
    ({"filters": []}, "$.filters", "unknown key"),
    ({"filter": ["requirements", "not_a_thing"]}, "$.filter[1]", "unknown filter atom"),
    ({"filter": {"tier_in": ["a"], "family_in": ["b"]}}, "$.filter", "exactly one key"),
    ({"filter": {"tier_in": "partner"}}, "$.filter.tier_in", "is a list"),
    ({"filter": {"family_in": ["a", 3]}}, "$.filter.family_in[1]", "names"),
    ({"filter": {"all_of": [{"frobnicate": 1}]}}, "$.filter.all_of[0].frobnicate", "unknown filter directive"),
    ({"filter": {"price_max": {"cached": 1}}}, "$.filter.price_max.cached", "input and output"),
    ({"filter": []}, "$.filter", "at least one"),
    ({"filter": 3}, "$.filter", "atom name"),
    ({"selector": "fastest"}, "$.selector", "one of"),
    ({"selector": "top_k", "selector_opts": {"n": 2}}, "$.selector_opts.n", "temp and k"),
    ({"selector": "chain"}, "$.chain", "is a list"),
    ({"mutate": "lowercase"}, "$.mutate", "identity"),
    ({"mutate": {"jitter": {}}}, "$.mutate.jitter", "non-empty"),
    ({"mutate": [{"pipe": [{"rewrite": 1}]}]}, "$.mutate[0].pipe[0].rewrite", "unknown mutate directive"),
    ({"retry_table": ["next_candidate"]}, "$.retry_table", "error kind"),
])
def test_a_spec_that_cannot_be_lowered_is_refused_at_its_path(spec, path, words) -> None:
    with pytest.raises(SpecError) as e:
        build_policy(spec)
    assert e.value.code == "invalid_policy_spec" and e.value.path == path and words in e.value.message


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) |
                           st.sampled_from(["requirements", "argmax", "top_k", "chain", "identity", "from_ctx", "x"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["filter", "scorer", "selector", "selector_opts", "mutate", "chain",
                                                "retry_table", "tier_in", "all_of", "price_max", "input", "jitter",
                                                "pipe", "k", "temp", "unknown", "timeout"]), inner, max_size=3),
                           max_leaves=12)


@settings(max_examples=400)
@given(spec=json_values)
def test_any_json_lowers_or_is_a_typed_refusal(spec) -> None:
    try:
        term = build_policy(spec)
    except SpecError as exc:
        assert exc.path.startswith("$")
        return
    try:
        compile_policy(term)
    except LangError as exc:  # lowered, and refused where it would be used: never another exception
        assert exc.code and exc.path.startswith("$")


# ---- served ---------------------------------------------------------------------------------

async def test_a_built_policy_is_the_normalised_term_and_routes_a_call(stack) -> None:
    spec = {"filter": ["requirements", "not_disabled", {"family_in": ["gpt-5.4-mini"]}],
            "scorer": ["neg", ["normalize", ["field", "price_in"]]]}
    status, built = await stack.post("/x/policy/build", spec)
    assert status == 200, built
    assert built["version"] == "sigma-pol/v2" and built["policy_ir"][0] == "policy"
    status, normal = await stack.post("/x/policy/normalize", {"policy_ir": build_policy(spec)})
    assert (built["fingerprint"], built["identity"], built["encoding"]) == \
        (normal["fingerprint"], normal["identity"], normal["encoding"])
    status, rank = await stack.post("/x/rank", {"policy_ir": built["policy_ir"]})
    assert status == 200 and {r["model_family"] for r in rank["ranked"]} == {"gpt-5.4-mini"}
    r = await stack.client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body={"policy_ir": built["policy_ir"]})
    assert r.model_extra["x_router"]["model_family"] == "gpt-5.4-mini"
    assert r.model_extra["x_router"]["policy_sent"]["fingerprint"] == built["fingerprint"]


async def test_a_bad_spec_is_a_400_at_its_path(stack) -> None:
    status, out = await stack.post("/x/policy/build", {"filter": {"tier_in": ["partner"], "family_in": ["x"]}})
    assert status == 400 and out["error"]["code"] == "invalid_policy_spec" and out["error"]["param"] == "$.filter"
    # lowered, but not admissible here (a price ceiling that is not a number): the admission's
    # refusal, at its path in the lowered term, which the error carries
    status, out = await stack.post("/x/policy/build", {"filter": {"price_max": {"input": "cheap"}}})
    assert status == 400 and out["error"]["code"] == "invalid_policy", out
    assert out["error"]["param"].startswith("$.policy_ir[1]") and out["policy_ir"][1] == ["cmp", "price_in", "le", "cheap"]


@pytest.mark.parametrize("kind, wrap", [("filter", lambda x: {"all_of": [x]}), ("mutate", lambda x: {"pipe": [x]}),
                                        ("filter", lambda x: [x])])
def test_a_spec_nested_past_any_terms_depth_is_refused_not_a_crash(kind, wrap) -> None:
    spec: object = "requirements" if kind == "filter" else "identity"
    for _ in range(5000):
        spec = wrap(spec)
    with pytest.raises(SpecError) as e:
        build_policy({kind: spec})
    assert "no deeper" in e.value.message and e.value.path.startswith(f"$.{kind}")


async def test_hostile_specs_over_http_are_4xx(stack) -> None:
    deep = b'{"filter": ' + b'{"all_of": [' * 900 + b'"requirements"' + b"]}" * 900 + b"}"
    for raw in (deep, b"[" * 100_000, b'{"filter": "\\u0000"}', b"\xff\xfe",
                json.dumps({"filter": {"family_in": ["x" * 10] * 50_000}}).encode()):
        status, out = await stack.post("/x/policy/build", raw=raw)
        assert 400 <= status < 500 or status == 200, (status, str(out)[:200])
        assert status != 200 or out["policy_ir"][0] == "policy"
