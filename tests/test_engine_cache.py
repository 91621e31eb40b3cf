"""The decision cache never changes a decision: cached plans equal freshly computed ones."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from unhardcoded.catalog import build_catalog
from unhardcoded.config import Keys, Settings
from unhardcoded.router.decision import decide
from unhardcoded.router.engine import Router
from unhardcoded.runtime.state import RuntimeState
from unhardcoded.traces.record import decision_bytes, decision_view

from . import strategies as S
from .test_replay import PROVIDERS, bodies, catalogs


def fresh(router: Router, prep) -> bytes:
    plan = decide(prep.choice.effective.policy, prep.pool, prep.ctx, prep.contract.pin)
    return decision_bytes(decision_view(plan.ordered, plan.rejected))


def keyed_router(doc: dict) -> tuple[list[int], RuntimeState, Router]:
    """A router over ``doc`` holding every provider's key, with a settable clock."""
    now = [1_700_000_000_000]
    rt = RuntimeState(clock=lambda: now[0])
    return now, rt, Router(build_catalog(doc), Settings(keys=Keys({f"{p.upper()}_KEY": "k" for p in PROVIDERS}, {})),
                           runtime=rt, clock=rt.clock)


def decides_as_fresh(router: Router, bodies_: list) -> None:
    for body in bodies_:
        prep = router.prepare(body)
        assert decision_bytes(decision_view(prep.plan.ordered, prep.plan.rejected)) == fresh(router, prep)


@settings(max_examples=150)
@given(catalogs(), st.lists(bodies(), min_size=1, max_size=4), st.lists(st.sampled_from(PROVIDERS), max_size=3))
def test_cached_plans_equal_fresh_ones_across_state_changes(doc, bodies_, breaking) -> None:
    now, rt, router = keyed_router(doc)
    for step in range(len(breaking) + 1):
        decides_as_fresh(router, bodies_ * 2)  # the second pass hits the cache
        if step < len(breaking):
            rt.record_failure(breaking[step], "m1", "server_error", 10.0, open_breaker_ms=60_000)
            now[0] += 1


@settings(max_examples=150)
@given(catalogs(), st.lists(bodies(), min_size=1, max_size=4),
       st.lists(st.tuples(st.sampled_from(PROVIDERS), st.sampled_from(S.FAMILIES), st.booleans(),
                          st.floats(1, 5000)), max_size=6))
def test_plans_after_a_restamp_equal_fresh_ones(doc, bodies_, served) -> None:
    # light traffic: every call comes after the last stamp expired, and one route served in
    # between (succeeded or failed, with its own latency); the router re-plans from its last
    # reasons (Policy.plan_and_reasons' prior), which must decide as a plan made afresh
    now, rt, router = keyed_router(doc)
    for step in range(len(served) + 1):
        decides_as_fresh(router, bodies_)
        if step < len(served):
            provider, family, ok, ms = served[step]
            if ok:
                rt.record_success(provider, family, ms)
            else:
                rt.record_failure(provider, family, "server_error", ms)
            now[0] += rt.config.stamp_refresh_ms


def test_a_restamp_replans_a_policy_from_its_last_reasons() -> None:
    names = "abcdefgh"
    doc = {"providers": {p: {"wire": "openai", "base_url": "http://127.0.0.1:9/v1"} for p in names},
           "models": {"m": {"routes": [{"provider": p, "price_in": 1, "price_out": 1} for p in names]}}}
    now = [1_700_000_000_000]
    rt = RuntimeState(clock=lambda: now[0])
    router = Router(build_catalog(doc), Settings(), runtime=rt, clock=rt.clock)
    body = {"messages": [{"role": "user", "content": "x"}],
            "policy_ir": ["policy", ["cmp", "latency_ms", "le", 100], ["zero"], ["argmax"], ["id"],
                          ["always", {"action": "next_candidate"}]]}
    first = router.prepare(body)
    assert [r.candidate["provider_id"] for r in first.plan.ordered] == []  # no latency seen: +inf
    rt.record_success("a", "m", 40.0)
    now[0] += rt.config.stamp_refresh_ms
    asked = []
    policy = first.choice.effective.policy
    keep = policy.filter
    policy.filter = lambda c, x: asked.append(c["provider_id"]) or keep(c, x)
    try:
        second = router.prepare(body)
    finally:
        policy.filter = keep
    assert second.pool is not first.pool and all(x is y for x, y in zip(second.pool[1:], first.pool[1:]))
    assert asked == ["a"]  # only the route that served since is asked again
    assert [r.candidate["provider_id"] for r in second.plan.ordered] == ["a"]
    assert [(x.provider, x.reason) for x in second.plan.rejected] == [(p, "cmp:latency_ms:le") for p in names[1:]]


def two_routes() -> tuple[list[int], RuntimeState, Router]:
    """One model on providers a (cheaper) and b, the default profile skipping open breakers; a settable clock."""
    doc = {"providers": {"a": {"wire": "openai", "base_url": "http://127.0.0.1:9/v1"},
                         "b": {"wire": "openai", "base_url": "http://127.0.0.1:9/v1"}},
           "models": {"m": {"routes": [{"provider": "a", "price_in": 1, "price_out": 1},
                                       {"provider": "b", "price_in": 2, "price_out": 2}]}},
           "profiles": {"default": {"policy": '["policy", ["not", ["is", "breaker_open"]], ["zero"], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]'}}}
    now = [1_700_000_000_000]
    rt = RuntimeState(clock=lambda: now[0])
    return now, rt, Router(build_catalog(doc), Settings(), runtime=rt, clock=rt.clock)


def test_a_repeated_request_reuses_its_plan_and_a_breaker_change_does_not() -> None:
    now, rt, router = two_routes()
    body = {"messages": [{"role": "user", "content": "x"}]}
    p1, p2 = router.prepare(body), router.prepare(body)
    assert p1.plan is p2.plan
    rt.record_failure("a", "m", "server_error", 1.0, open_breaker_ms=1000)
    p3 = router.prepare(body)
    assert p3.plan is not p1.plan
    assert [r.candidate["provider_id"] for r in p3.plan.ordered] == ["b"]
    now[0] += 2000  # the breaker closes by itself
    p4 = router.prepare(body)
    assert [r.candidate["provider_id"] for r in p4.plan.ordered] == ["a", "b"]


def test_failures_are_seen_within_the_refresh_window_and_breakers_at_once() -> None:
    # a provider that keeps failing must not make every request re-plan over the whole pool:
    # its observations reach decisions at most stamp_refresh_ms late, its breaker at once
    now, rt, router = two_routes()
    body = {"messages": [{"role": "user", "content": "x"}]}
    p1 = router.prepare(body)
    rt.record_failure("a", "m", "rate_limit", 1.0)  # below the breaker threshold
    p2 = router.prepare(body)
    assert p2.plan is p1.plan and p2.pool is p1.pool
    now[0] += rt.config.stamp_refresh_ms
    p3 = router.prepare(body)
    stamped = {c["provider_id"]: c for c in p3.pool}
    assert stamped["a"]["success_rate"] == 0 and "success_rate" not in p1.pool[0]
    for _ in range(rt.config.breaker_threshold - 1):
        rt.record_failure("a", "m", "rate_limit", 1.0)
    p4 = router.prepare(body)  # same refresh window, but the breaker opened: decided anew at once
    assert [r.candidate["provider_id"] for r in p4.plan.ordered] == ["b"]


@settings(max_examples=100)
@given(catalogs(), st.lists(bodies(), min_size=1, max_size=3))
def test_the_wire_x_router_is_the_same_json_as_the_plain_one(doc, bodies_) -> None:
    """The HTTP answer writes the per-plan parts of x_router once (orjson fragments): the bytes
    must parse to exactly what the plain x_router serialises to, run after run of the same plan."""
    import orjson

    from unhardcoded.router.engine import Run
    from unhardcoded.server.app import dumps

    router = Router(build_catalog(doc), Settings(keys=Keys({f"{p.upper()}_KEY": "k" for p in PROVIDERS}, {})))
    for body in bodies_ * 2:  # the second pass reuses the plans, and so the fragments
        run = Run("tr_test", router.prepare(body))
        run.events.append({"event": "attempted", "provider_id": "p", "model_family": "m", "attempt": 1})
        assert orjson.loads(dumps(run.x_router(wire=True))) == orjson.loads(dumps(run.x_router()))


def _shape(prep) -> tuple:
    """Everything a prepared decision hands on to the call and its trace, comparable."""
    c = prep.contract
    ch = prep.choice
    return ((c.route, c.profile, c.policy_name, c.flow_name, c.requirements, c.pin, c.seed,
             json.dumps(c.policy_ir)),
            (ch.source, ch.profile, ch.effective.identity, None if ch.sent is None else ch.sent.identity),
            json.dumps(prep.ctx, sort_keys=True, default=repr), prep.pool, [r.reason for r in prep.pre_rejected],
            decision_bytes(decision_view(prep.plan.ordered, prep.plan.rejected)))


def _general(router: Router) -> Router:
    router._route_of = lambda body, path_profile: None  # type: ignore[method-assign]
    return router


def _variant(body: dict, extra: str) -> dict:
    out = dict(body)
    if extra == "image":
        out["messages"] = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    elif extra == "response_format":
        out["response_format"] = {"type": "json_object"}
    elif extra == "model":
        out.setdefault("model", "profile:default")
    elif extra.startswith("plain"):  # what most calls look like: a model string, maybe a policy
        for k in ("seed", "tools", "requirements"):
            out.pop(k, None)
        if extra == "plain-model":
            out.setdefault("model", "gpt-4o")
    return out


@settings(max_examples=150)
@given(catalogs(), st.lists(st.tuples(bodies(), st.sampled_from(["", "image", "response_format", "model", "plain", "plain-model",
                                                               "plain-model"])),
                            min_size=1, max_size=5),
       st.lists(st.sampled_from(PROVIDERS), max_size=2))
def test_a_remembered_route_prepares_exactly_what_the_general_path_does(doc, drawn, breaking) -> None:
    """Plain requests skip parsing the contract and choosing the policy once their model string
    and policy text were seen (``Router._route_of``): the prepared decision must be the same,
    part for part, as the general path's, on a first sight, on a repeat, and across state changes."""
    keys = Settings(keys=Keys({f"{p.upper()}_KEY": "k" for p in PROVIDERS}, {}))
    now = [1_700_000_000_000]
    rts = [RuntimeState(clock=lambda: now[0]) for _ in range(2)]
    hot = Router(build_catalog(doc), keys, runtime=rts[0], clock=rts[0].clock)
    ref = _general(Router(build_catalog(doc), keys, runtime=rts[1], clock=rts[1].clock))
    bodies_ = [_variant(b, extra) for b, extra in drawn]
    for step in range(len(breaking) + 1):
        for body in bodies_ * 2:
            outcomes = []
            for router in (hot, ref):
                try:
                    outcomes.append(_shape(router.prepare(json.loads(json.dumps(body)))))
                except Exception as exc:  # the same refusal, with the same code and path
                    outcomes.append((type(exc).__name__, getattr(exc, "code", None), getattr(exc, "path", None)))
            assert outcomes[0] == outcomes[1]
        if step < len(breaking):
            for rt in rts:
                rt.record_failure(breaking[step], "m1", "server_error", 10.0, open_breaker_ms=60_000)
            now[0] += 1


def test_a_plain_repeat_takes_the_remembered_route_and_others_do_not() -> None:
    _now, _rt, router = two_routes()
    plain = {"messages": [{"role": "user", "content": "x"}], "model": "profile:default"}
    p1, p2 = router.prepare(plain), router.prepare(dict(plain))
    assert p1.contract is p2.contract and p1.choice is p2.choice and p1.plan is p2.plan
    assert len(router._routes) == 1
    for extra in ({"seed": 1}, {"requirements": {}}, {"tools": [{"type": "function"}]},
                  {"response_format": {"type": "json_object"}},
                  {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}):
        p = router.prepare({**plain, **extra})
        assert p.contract is not p1.contract
    assert len(router._routes) == 1
    router.set_catalog(router.catalog)  # a new catalog forgets every route
    assert len(router._routes) == 0 and router.prepare(plain).contract is not p1.contract


def test_policies_sent_once_are_not_kept_and_a_policy_that_comes_back_is() -> None:
    """A backend that builds its policy per request sends texts never seen again: they must not
    fill the remembered routes, choices and compiled terms (each holds compiled closures), nor
    push out a policy that does come back, even one that comes back only every few hundred
    requests."""
    _now, _rt, router = two_routes()
    msgs = [{"role": "user", "content": "x"}]
    hot = {"messages": msgs, "model": "profile:default", "policy_ir": ["cmp", "price_in", "le", 10]}
    first = router.prepare(hot)
    for i in range(3000):
        router.prepare({"messages": msgs, "model": "profile:default", "policy_ir": ["cmp", "price_in", "le", 100 + i]})
        if i % 500 == 499:  # the hot policy again: from its second sight on it is kept
            assert router.prepare(dict(hot)).choice.sent.identity == first.choice.sent.identity
    for memo in (router._routes, router._choices):
        assert len(memo.probation) <= memo.probation_size
        assert len(memo.main) == 1  # the hot policy's, none of the 3,000 sent once
    compiled = router.compiler._by_text
    assert len(compiled.probation) <= compiled.probation_size and len(compiled.data) <= 2
    again = router.prepare(dict(hot))
    assert again.contract is router.prepare(dict(hot)).contract  # remembered: the same objects
    assert again.choice is router.prepare(dict(hot)).choice


def test_remembered_routes_let_an_older_stamped_pool_go() -> None:
    # a route keeps its last plan, and a plan holds its pool: once the pool is re-stamped, no
    # route may keep the old one alive (many rarely used policies would hold one pool each)
    now, rt, router = two_routes()
    plain = {"messages": [{"role": "user", "content": "x"}], "model": "profile:default"}
    other = {**plain, "policy_ir": ["cmp", "price_in", "le", 10]}
    p1 = router.prepare(plain)
    router.prepare(other)
    rt.record_success("a", "m", 5.0)
    now[0] += rt.config.stamp_refresh_ms
    p2 = router.prepare(plain)
    assert p2.pool is not p1.pool
    held = [r.pool for r in router._routes.values()]
    assert all(pool is None or pool is p2.pool for pool in held)
    assert router.prepare(other).pool is p2.pool


def test_policies_that_decide_alike_share_one_plan_and_others_do_not() -> None:
    # a backend that builds a policy per request sends a new policy every time; where two of them
    # decide alike over the same pool, the second gets the first's plan (so its trace section and
    # x_router lists are made once), and only then
    _now, _rt, router = two_routes()

    def body(pred: list, scorer: list | None = None) -> dict:
        return {"messages": [{"role": "user", "content": "x"}], "model": "",
                "policy_ir": ["policy", pred, scorer or ["neg", ["field", "price_in"]], ["argmax"], ["id"],
                              ["always", {"action": "next_candidate"}]]}

    first = router.prepare(body(["cmp", "price_in", "le", 10]))
    alike = router.prepare(body(["cmp", "price_in", "le", 11]))            # a threshold no route is near
    assert alike.choice.effective.identity != first.choice.effective.identity
    assert alike.plan is first.plan
    tools = router.prepare({**body(["cmp", "price_in", "le", 12]), "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert tools.plan is not first.plan  # decides alike, but from another request view (the trace records it)
    fewer = router.prepare(body(["cmp", "price_in", "le", 1.5]))           # b (price 2) is rejected now
    assert fewer.plan is not first.plan and [r.reason for r in fewer.plan.rejected] == ["cmp:price_in:le"]
    # the same order and rejections, scores that differ only in the sign of zero: not alike
    plus = router.prepare(body(["top"], ["lit", 0.0])).plan
    minus = router.prepare(body(["top"], ["scale", -1, ["lit", 0.0]])).plan
    assert [repr(r.score) for r in plus.ordered] == ["0.0", "0.0"]
    assert [repr(r.score) for r in minus.ordered] == ["-0.0", "-0.0"]
    assert minus is not plus
    assert router.prepare(body(["cmp", "price_in", "le", 12], ["lit", 0.0])).plan is plus
