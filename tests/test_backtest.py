"""Backtest: a candidate policy run over the calls the router already served (``POST /x/backtest``,
``unhardcoded backtest``), over each call's own catalog and state or over today's."""

from __future__ import annotations

import asyncio
import hashlib
import json
from decimal import Decimal

import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unhardcoded.runtime.limits import CallerSpec
from unhardcoded.testing.upstreams import Fail, Reply, Usage
from unhardcoded.traces.backtest import Backtest

from .harness import policy, start_stack

MSG = [{"role": "user", "content": "hi"}]
SMART = policy(["meets_req"], ["field", "bench_intelligence"], ["argmax"])       # gpt-5.5 (0.6) first
CHEAP = policy(["meets_req"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"])  # the default's order
TOKENS = Usage(prompt_tokens=1200, completion_tokens=300)


def usd(price_in: float, price_out: float, usage: Usage = TOKENS) -> Decimal:
    return (Decimal(str(price_in)) * usage.prompt_tokens + Decimal(str(price_out)) * usage.completion_tokens) \
        / Decimal(1_000_000)


def text(d: Decimal) -> str:
    return format(d.normalize(), "f")  # the plain form every cost in the API has


async def calls(stack, n: int, **kw) -> None:
    # every model answers with the same known token counts, so costs are exact figures
    for up, ids in ((stack.gemini, ["gemini-3-flash-preview"]), (stack.openai, ["gpt-5.4-mini", "gpt-5.5"]),
                    (stack.anthropic, ["claude-haiku-4-5"])):
        for model_id in ids:
            up.script(model_id, default=Reply(text="ok", usage=TOKENS))
    for _ in range(n):
        await stack.client.chat.completions.create(model=kw.get("model", ""), messages=MSG)
    assert stack.store.flush()


async def backtest(stack, **body) -> dict:
    status, out = await stack.post("/x/backtest", body)
    assert status == 200, out
    return out


async def test_the_policy_that_ran_backtests_to_no_change_and_no_delta(stack) -> None:
    await calls(stack, 3)
    out = await backtest(stack, policy_ir=CHEAP)
    t = out["totals"]
    assert (t["traces"], t["decided"], t["same_pick"], t["changed_pick"], t["unroutable"]) == (3, 3, 3, 0, 0)
    assert Decimal(t["actual_cost_usd"]) == 3 * usd(0.5, 3) and t["delta_usd"] == "0"
    assert out["samples"] == []  # only changed picks are sampled
    assert out["transitions"] == [{"from": {"provider": "ge", "model_family": "gemini-3-flash-preview"},
                                   "to": {"provider": "ge", "model_family": "gemini-3-flash-preview"},
                                   "traces": 3, "priced": 3, "actual_cost_usd": t["actual_cost_usd"],
                                   "backtest_cost_usd": t["actual_cost_usd"]}]


async def test_a_smarter_policy_moves_the_traffic_and_prices_the_same_tokens_on_the_new_model(stack) -> None:
    await calls(stack, 4)
    for over in ("stored", "current"):
        out = await backtest(stack, policy_ir=SMART, over=over, samples=2)
        t = out["totals"]
        assert (t["same_pick"], t["changed_pick"], t["priced"]) == (0, 4, 4), over
        assert Decimal(t["actual_cost_usd"]) == 4 * usd(0.5, 3)
        assert Decimal(t["backtest_cost_usd"]) == 4 * usd(5, 30)  # gpt-5.5's catalog prices, the same tokens
        assert Decimal(t["delta_usd"]) == 4 * (usd(5, 30) - usd(0.5, 3))
        assert t["delta_pct"] == pytest.approx(float((usd(5, 30) - usd(0.5, 3)) / usd(0.5, 3) * 100))
        [g] = out["transitions"]
        assert g["to"] == {"provider": "oa", "model_family": "gpt-5.5"} and g["traces"] == 4
        assert len(out["samples"]) == 2
        s = out["samples"][0]
        assert s["before"]["model_family"] == "gemini-3-flash-preview"
        assert [a["model_family"] for a in s["after"]] == ["gpt-5.5", "gemini-3-flash-preview", "gpt-5.4-mini"]
        assert s["after"][0]["score"] == 0.6
    assert out["policy"]["sort"] == "Policy" and len(out["policy"]["identity"]) == 64


async def test_a_predicate_no_model_meets_leaves_the_traffic_unroutable(stack) -> None:
    await calls(stack, 2)
    out = await backtest(stack, policy_ir=["cmp", "bench_intelligence", "ge", 0.99])
    t = out["totals"]
    assert (t["unroutable"], t["changed_pick"], t["priced"], t["backtest_cost_usd"]) == (2, 0, 0, "0")
    assert out["transitions"][0]["to"] is None
    assert out["policy"]["sort"] == "Pred"
    # a predicate runs under the route's profile: all five routes fail the threshold
    assert out["samples"][0]["after"] == [] and sum(out["samples"][0]["rejected"].values()) == 5


async def test_stored_decides_in_each_calls_own_state_and_current_in_todays(stack) -> None:
    await calls(stack, 1)  # gemini answered
    stack.router.runtime.disable("ge", "auth_error", 400)  # for 0.4 s, these calls cannot go to gemini
    await calls(stack, 2)
    await asyncio.sleep(0.5)  # the disable has run out: today gemini is back
    stored = (await backtest(stack, policy_ir=CHEAP))["totals"]
    assert (stored["same_pick"], stored["changed_pick"]) == (3, 0)  # each call decided as it was then
    current = await backtest(stack, policy_ir=CHEAP, over="current")
    assert (current["totals"]["same_pick"], current["totals"]["changed_pick"]) == (1, 2)
    moved = [g for g in current["transitions"] if g["from"] != g["to"]]
    assert moved == [{"from": {"provider": "oa", "model_family": "gpt-5.4-mini"},
                      "to": {"provider": "ge", "model_family": "gemini-3-flash-preview"}, "traces": 2, "priced": 2,
                      "actual_cost_usd": text(2 * usd(0.75, 4.5)), "backtest_cost_usd": text(2 * usd(0.5, 3))}]
    # and the other way: disabled today, the current view moves every call off gemini
    stack.router.runtime.disable("ge", "auth_error", 60_000)
    now = (await backtest(stack, policy_ir=CHEAP, over="current"))["totals"]
    assert (now["same_pick"], now["changed_pick"]) == (2, 1)
    assert (await backtest(stack, policy_ir=CHEAP))["totals"]["changed_pick"] == 0


async def test_a_failed_call_is_decided_but_not_priced_and_a_pin_still_pins(stack) -> None:
    stack.gemini.script("gemini-3-flash-preview", Fail(status=400, message="bad"))
    with pytest.raises(openai.APIStatusError):
        await stack.client.chat.completions.create(model="pin:ge/gemini-3-flash-preview", messages=MSG)
    await calls(stack, 1, model="pin:an/claude-haiku-4-5")
    t = (await backtest(stack, policy_ir=SMART))["totals"]
    assert (t["traces"], t["decided"], t["pinned"], t["no_usage"], t["priced"]) == (2, 2, 2, 1, 1)
    assert (t["same_pick"], t["changed_pick"]) == (2, 0)  # the pin short-circuits the filter, as it did


async def test_flow_calls_are_not_read_their_nodes_run_their_own_policies(stack) -> None:
    from pathlib import Path

    import unhardcoded.flows as flows_pkg
    flow = json.loads((Path(flows_pkg.__file__).parent / "examples" / "two-drafts.json").read_text())["flow_ir"]
    await calls(stack, 1)
    await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    assert stack.store.flush()
    kinds = [r["kind"] for r in stack.store.list(limit=10)[0]]
    assert sorted(kinds) == ["chat", "flow"]
    t = (await backtest(stack, policy_ir=SMART))["totals"]
    assert (t["traces"], t["decided"], t["not_replayable"]) == (1, 1, 0)


async def test_pages_of_a_window_follow_next_cursor_and_filters_narrow_it(stack) -> None:
    await calls(stack, 3)
    await calls(stack, 2, model="family:claude-haiku-4-5")
    first = await backtest(stack, policy_ir=SMART, limit=3)
    assert first["totals"]["traces"] == 3 and first["window"]["next_cursor"]
    rest = await backtest(stack, policy_ir=SMART, limit=3, cursor=first["window"]["next_cursor"])
    assert rest["totals"]["traces"] == 2 and rest["window"]["next_cursor"] is None
    fam = await backtest(stack, policy_ir=SMART, route="family:claude-haiku-4-5")
    assert fam["totals"]["traces"] == 2 and fam["window"]["filters"] == {"route": "family:claude-haiku-4-5"}
    assert fam["totals"]["same_pick"] == 2  # the family's requirement holds under any policy
    future = await backtest(stack, policy_ir=SMART, since=2 ** 62)
    assert future["totals"]["traces"] == 0 and future["totals"]["delta_pct"] is None


async def test_the_sdk_reaches_it_as_a_client_would(stack) -> None:
    await calls(stack, 1)
    out = await stack.client.post(stack.base_url.removesuffix("/v1") + "/x/backtest",
                                  body={"policy_ir": SMART}, cast_to=object)
    assert out["totals"]["changed_pick"] == 1
    with pytest.raises(openai.BadRequestError) as e:
        await stack.client.post(stack.base_url.removesuffix("/v1") + "/x/backtest",
                                body={"policy_ir": ["nope"]}, cast_to=object)
    assert e.value.body["code"] == "invalid_policy" and e.value.body["param"].startswith("$.policy_ir")


BAD = [
    ([], "bad_request_body", "$"),
    ({}, "missing_parameter", "$.policy_ir"),
    ({"policy_ir": SMART, "overr": "stored"}, "unknown_parameter", "$.overr"),
    ({"policy_ir": SMART, "over": "yesterday"}, "bad_parameter", "$.over"),
    ({"policy_ir": SMART, "limit": 0}, "bad_parameter", "$.limit"),
    ({"policy_ir": SMART, "limit": 10_001}, "bad_parameter", "$.limit"),
    ({"policy_ir": SMART, "limit": True}, "bad_parameter", "$.limit"),
    ({"policy_ir": SMART, "samples": 101}, "bad_parameter", "$.samples"),
    ({"policy_ir": SMART, "since": "yesterday"}, "bad_parameter", "$.since"),
    ({"policy_ir": SMART, "until": -1}, "bad_parameter", "$.until"),
    ({"policy_ir": SMART, "route": 3}, "bad_parameter", "$.route"),
    ({"policy_ir": SMART, "cursor": 5}, "bad_parameter", "$.cursor"),
    ({"policy_ir": SMART, "cursor": "not-a-cursor"}, "bad_cursor", "$.cursor"),
    ({"policy_ir": ["flow", {}]}, "flow_backtest_unsupported", "$.policy_ir"),
    ({"policy_ir": ["cmp", "no_such_field", "ge", 1]}, "invalid_policy", "$.policy_ir"),
    ({"policy_ir": ["argmax"]}, "invalid_policy", "$.policy_ir"),  # admission names sort_mismatch
]


@pytest.mark.parametrize("body,code,param", BAD)
async def test_bad_requests_get_a_4xx_at_their_path(stack, body, code, param) -> None:
    status, out = await stack.post("/x/backtest", body)
    assert 400 <= status < 500, out
    assert out["error"]["code"] == code, out
    assert out["error"]["param"].startswith(param), out


async def test_hostile_bodies_never_reach_a_500(stack) -> None:
    await calls(stack, 1)
    for raw in (b"[" * 100_000, b"\xff\xfe", b'{"policy_ir": "\x00"}', b'{"policy_ir": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                json.dumps({"policy_ir": SMART, "caller": "x" * 100_000}).encode(),
                json.dumps({"policy_ir": SMART, "x" * 60_000: 1}).encode()):
        status, out = await stack.post("/x/backtest", raw=raw)
        assert 400 <= status < 500 or (status == 200 and out["totals"]["traces"] == 0), (raw[:40], status, out)
        if status >= 400:
            assert len(out["error"]["message"]) < 2000


@settings(max_examples=60)
@given(body=st.dictionaries(st.sampled_from(["policy_ir", "over", "since", "until", "limit", "cursor", "samples",
                                             "route", "model", "caller", "junk"]),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c,
                                                                                             max_size=3),
                                         max_leaves=12)))
def test_any_body_is_answered_or_refused_with_a_typed_4xx(body) -> None:
    out = _ONE_STACK.run(body)
    status, payload = out
    assert status == 200 or (400 <= status < 500 and {"code", "param", "message"} <= set(payload["error"])), out


class _Stack:
    """One served stack for the hypothesis test (a new server per example would be minutes)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stack = None

    def run(self, body):
        if self.loop is None:
            import tempfile
            from pathlib import Path
            self.loop = asyncio.new_event_loop()
            self.stack = self.loop.run_until_complete(start_stack(Path(tempfile.mkdtemp())))
            self.loop.run_until_complete(calls(self.stack, 1))
        return self.loop.run_until_complete(self.stack.post("/x/backtest", body))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.stack.close())
            self.loop.close()
            self.loop = None


_ONE_STACK = _Stack()


@pytest.fixture(scope="module", autouse=True)
def _close_one_stack():
    yield
    _ONE_STACK.close()


# ---- named callers ---------------------------------------------------------------------------

def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


@pytest.fixture
async def tenants(tmp_path):
    callers = {"a": CallerSpec("a", frozenset({sha("key-a")})),
               "d": CallerSpec("d", frozenset({sha("key-d")}), envelope=["family_eq", "gpt-5.4-mini"])}
    s = await start_stack(tmp_path, callers=callers, caller_keys_sha256=frozenset({sha("operator")}))
    yield s
    await s.close()


async def test_a_caller_backtests_its_own_calls_under_its_own_envelope(tenants) -> None:
    s = tenants
    for key in ("key-a", "key-a", "key-d"):
        c = openai.AsyncOpenAI(base_url=s.base_url, api_key=key, max_retries=0)
        await c.chat.completions.create(model="", messages=MSG)
        await c.close()
    assert s.store.flush()

    async def as_(key: str, body: dict) -> tuple[int, dict]:
        return await s.post("/x/backtest", body, headers={"authorization": f"Bearer {key}"})

    status, d = await as_("key-d", {"policy_ir": SMART})
    assert status == 200 and d["totals"]["traces"] == 1
    assert d["totals"]["same_pick"] == 1  # d's envelope keeps it on gpt-5.4-mini, whatever the policy prefers
    assert d["window"]["filters"] == {"caller": "d"} and d["totals"]["unknown_callers"] == 0
    status, a = await as_("key-a", {"policy_ir": SMART})
    assert a["totals"]["traces"] == 2 and a["totals"]["changed_pick"] == 2
    status, refused = await as_("key-a", {"policy_ir": SMART, "caller": "d"})
    assert status == 403 and refused["error"]["code"] == "caller_scope"
    status, op = await as_("operator", {"policy_ir": SMART})
    assert op["totals"]["traces"] == 3
    status, op_d = await as_("operator", {"policy_ir": SMART, "caller": "d"})
    assert op_d["totals"]["traces"] == 1


# ---- the pure part, without a server -----------------------------------------------------------

async def test_records_whose_catalog_or_decision_is_missing_are_counted_not_guessed(stack) -> None:
    await calls(stack, 2)
    records, _ = stack.store.records(limit=10)
    no_snap = Backtest(SMART, stack.router, snapshots=lambda digest: None).run(records).report()["totals"]
    assert (no_snap["catalog_missing"], no_snap["decided"]) == (2, 0)
    undecided = [{k: v for k, v in r.items() if k != "decision"} for r in records]
    t = Backtest(SMART, stack.router, snapshots=stack.store.catalog_snapshot).run(undecided).report()["totals"]
    assert (t["not_replayable"], t["decided"]) == (2, 0)


async def test_a_field_todays_catalog_has_and_the_calls_catalog_lacked_is_a_refusal_per_call(tmp_path) -> None:
    s = await start_stack(tmp_path)
    try:
        await calls(s, 2)
        records, _ = s.store.records(limit=10)
        snap = s.store.catalog_snapshot(records[0]["catalog"]["digest"])
        older = {**snap, "fields": [f for f in snap["fields"] if f["name"] != "bench_intelligence"]}
        bt = Backtest(SMART, s.router, snapshots=lambda digest: older).run(records)
        t = bt.report()["totals"]
        assert (t["refused"], t["decided"]) == (2, 0) and sum(t["refusals"].values()) == 2
        assert bt.report()["samples"][0]["note"].startswith("refused")
    finally:
        await s.close()
