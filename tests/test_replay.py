"""Replay identity: a stored record alone reproduces the decision byte for byte."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from unhardcoded.catalog import build_catalog
from unhardcoded.config import Keys, Settings
from unhardcoded.router.engine import Router, Run
from unhardcoded.runtime.state import RuntimeState
from unhardcoded.traces.record import build_record
from unhardcoded.traces.replay import against_current, replay_record

from . import strategies as S

PROVIDERS = ["p1", "p2", "p3"]


@st.composite
def catalogs(draw: st.DrawFn) -> dict:
    providers = {p: {"wire": "openai", "base_url": f"http://127.0.0.1:9/{p}", "key_env": f"{p.upper()}_KEY",
                     "tier": draw(st.sampled_from(S.TIERS)), "no_log": draw(st.booleans())} for p in PROVIDERS}
    models = {}
    for fam in draw(st.lists(st.sampled_from(S.FAMILIES), min_size=1, max_size=4, unique=True)):
        routes = []
        for p in draw(st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=3, unique=True)):
            r = {"provider": p, "id": f"{p}-{fam}"}
            if draw(st.booleans()):
                r["price_in"] = draw(st.floats(0, 30))
                r["price_out"] = draw(st.floats(0, 60))
            routes.append(r)
        m = {"routes": routes, "supports_tools": draw(st.booleans()), "fields": {}}
        if draw(st.booleans()):
            m["context"] = draw(st.sampled_from([8000, 128000, 200000]))
        if draw(st.booleans()):
            m["fields"]["bench_x"] = draw(S.probability)
        if draw(st.booleans()):
            m["fields"]["cap_x"] = draw(st.booleans())
        models[fam] = m
    return {"providers": providers, "models": models,
            "fields": {"bench_x": {"sort": "Num", "default": 0}, "bench_x_rank": {"sort": "Num", "default": 1e9},
                       "cap_x": {"sort": "Bool", "default": False}},
            "profiles": {"default": {"policy": json.dumps(
                ["policy", ["meets_req"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"], ["id"],
                 ["always", {"action": "next_candidate"}]])}}}


@st.composite
def runtime_states(draw: st.DrawFn) -> RuntimeState:
    now = [1_700_000_000_000]
    rt = RuntimeState(clock=lambda: now[0])
    for _ in range(draw(st.integers(0, 6))):
        p, fam = draw(st.sampled_from(PROVIDERS)), draw(st.sampled_from(S.FAMILIES))
        if draw(st.booleans()):
            rt.record_success(p, fam, draw(st.floats(1, 3000)), draw(st.one_of(st.none(), st.floats(1, 200))))
        else:
            rt.record_failure(p, fam, draw(st.sampled_from(["rate_limit", "server_error", "timeout"])),
                              draw(st.floats(1, 3000)), draw(st.one_of(st.none(), st.just(30000))))
    if draw(st.booleans()):
        rt.disable(draw(st.sampled_from(PROVIDERS)), "auth_error")
    return rt


@st.composite
def bodies(draw: st.DrawFn) -> dict:
    body: dict = {"messages": [{"role": "user", "content": "hi"}]}
    kind = draw(st.sampled_from(["policy", "predicate", "profile", "family", "pin"]))
    if kind == "policy":
        body["policy_ir"] = draw(S.policy())
    elif kind == "predicate":
        body["policy_ir"] = draw(S.pred())
    elif kind == "family":
        body["model"] = "family:" + draw(st.sampled_from(S.FAMILIES))
    elif kind == "pin":
        body["model"] = f"pin:{draw(st.sampled_from(PROVIDERS))}/{draw(st.sampled_from(S.FAMILIES))}"
    if draw(st.booleans()):
        body["seed"] = draw(st.integers(-(2 ** 40), 2 ** 40))
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    if draw(st.booleans()):
        body["requirements"] = {"min_context": draw(st.sampled_from([4000, 100000]))}
    return body


def roundtrip(v: object) -> object:
    return json.loads(json.dumps(v, allow_nan=False))


@settings(max_examples=300)
@given(catalogs(), runtime_states(), bodies(), st.sets(st.sampled_from(PROVIDERS)))
def test_stored_record_replays_to_the_same_decision(doc: dict, rt: RuntimeState, body: dict, keyless: set) -> None:
    catalog = build_catalog(doc)
    keys = Keys({f"{p.upper()}_KEY": "k" for p in PROVIDERS if p not in keyless}, {})
    router = Router(catalog, Settings(keys=keys), runtime=rt, clock=rt.clock)
    prep = router.prepare(body)
    run = Run("tr_test", prep, status="ok")
    record = roundtrip(build_record(run, catalog))
    snapshot = roundtrip(catalog.snapshot())
    out = replay_record(record, snapshot)
    assert out["identical"], out.get("differences")
    assert out["policy_identity_matches"]
    assert out["decision_digest"]["stored"] == record["decision"]["digest"]


@settings(max_examples=100)
@given(catalogs(), bodies())
def test_a_tampered_record_does_not_replay_identical(doc: dict, body: dict) -> None:
    catalog = build_catalog(doc)
    keys = Keys({f"{p.upper()}_KEY": "k" for p in PROVIDERS}, {})
    router = Router(catalog, Settings(keys=keys))
    prep = router.prepare(body)
    record = roundtrip(build_record(Run("tr_t", prep, status="ok"), catalog))
    view = record["decision"]["view"]
    if view["ordered"]:
        p, f, s = view["ordered"][0]
        bumped = s + 1 if isinstance(s, (int, float)) and not isinstance(s, bool) else 0
        if bumped == s or bumped != bumped:  # 1e100 + 1 is 1e100; inf and NaN stay themselves
            bumped = 0 if s != 0 else 1
        view["ordered"][0] = [p, f, bumped]
    else:
        view["ordered"].append(["nobody", "nothing", 1])
    out = replay_record(record, roundtrip(catalog.snapshot()))
    assert not out["identical"]
    assert out["differences"]


def test_against_current_reports_the_changes_and_the_cost_difference() -> None:
    doc = {
        "providers": {"a": {"wire": "openai", "base_url": "http://127.0.0.1:9/a", "key_env": "A_KEY"}},
        "models": {"cheap": {"routes": [{"provider": "a", "price_in": 1, "price_out": 2}]},
                   "dear": {"routes": [{"provider": "a", "price_in": 5, "price_out": 10}]}},
        "profiles": {"default": {"policy": json.dumps(
            ["policy", ["top"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"], ["id"],
             ["always", {"action": "next_candidate"}]])}},
    }
    old = build_catalog(doc)
    keys = Keys({"A_KEY": "k"}, {})
    router = Router(old, Settings(keys=keys))
    prep = router.prepare({"messages": [{"role": "user", "content": "x"}]})
    run = Run("tr_old", prep, status="ok")
    from unhardcoded.costs import Usage
    run.usage = Usage(1_000_000, 1_000_000)
    run.answered_by = router._answered(prep.plan.ordered[0].candidate)
    run.cost = router._cost(prep.plan.ordered[0].candidate, run.usage)
    record = roundtrip(build_record(run, old))
    assert record["cost"]["cost_usd"] == "3"

    doc["models"]["cheap"]["routes"][0]["price_in"] = 20  # the cheap model got expensive
    new = build_catalog(doc)
    out = against_current(record, Router(new, Settings(keys=keys)))
    assert out["pick_before"]["model_family"] == "cheap"
    assert out["pick_after"]["model_family"] == "dear"
    assert out["cost_after_usd"] == "15"
    assert out["cost_delta_usd"] == "12"
    changed = {(c["provider"], c["model"]) for c in out["changes"]}
    assert changed == {("a", "cheap"), ("a", "dear")}
