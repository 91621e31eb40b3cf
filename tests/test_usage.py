"""Usage reports: what the stored calls of a window add up to (``GET /v1/usage``, ``/x/usage``,
``/api/usage``; ``unhardcoded usage``), scoped to a named caller's own calls."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import urllib.parse
from decimal import Decimal

import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unhardcoded.runtime.limits import CallerSpec
from unhardcoded.server.usage import read_query
from unhardcoded.server.app import HTTPError
from unhardcoded.testing.upstreams import Fail, Reply, Usage as Tokens
from unhardcoded.traces.usage import Usage, instant_ms, window_ms

from .harness import policy, start_stack

MSG = [{"role": "user", "content": "hi"}]
TOKENS = Tokens(prompt_tokens=1200, completion_tokens=300)


def usd(price_in: str, price_out: str, n: int = 1) -> Decimal:
    return n * (Decimal(price_in) * TOKENS.prompt_tokens + Decimal(price_out) * TOKENS.completion_tokens) \
        / Decimal(1_000_000)


def fixed_replies(stack) -> None:
    """Every model answers with the same known token counts, so each cost is an exact figure."""
    for up, ids in ((stack.gemini, ["gemini-3-flash-preview"]), (stack.openai, ["gpt-5.4-mini", "gpt-5.5"]),
                    (stack.anthropic, ["claude-haiku-4-5"])):
        for model_id in ids:
            up.script(model_id, default=Reply(text="ok", usage=TOKENS))


async def traffic(stack) -> dict:
    """3 calls on the default route (gemini flash), 2 pinned to gpt-5.5, 1 that fails, 1 flow."""
    fixed_replies(stack)
    ids = {"default": [], "gpt": [], "flow": None, "failed": None}
    for _ in range(3):
        r = await stack.client.chat.completions.create(model="", messages=MSG)
        ids["default"].append(r.model_extra["x_router"]["trace_id"])
    for _ in range(2):
        r = await stack.client.chat.completions.create(model="family:gpt-5.5", messages=MSG)
        ids["gpt"].append(r.model_extra["x_router"]["trace_id"])
    stack.openai.script("gpt-5.5", Fail(500))
    with pytest.raises(openai.APIStatusError):
        await stack.client.chat.completions.create(model="", messages=MSG,
                                                   extra_body={"policy_ir": policy(["family_eq", "gpt-5.5"])})
    stack.openai.script("gpt-5.5", default=Reply(text="ok", usage=TOKENS))
    flow = await stack.client.chat.completions.create(model="flow:two-drafts", messages=MSG)
    ids["flow"] = flow.model_extra["x_router"]["trace_id"]
    assert stack.store.flush()
    return ids


async def test_a_report_adds_up_every_stored_call_exactly_and_splits_flows_by_the_models_that_answered(stack) -> None:
    ids = await traffic(stack)
    status, u = await stack.get("/v1/usage")
    assert status == 200, u
    recs = [stack.store.get(r["trace_id"]) for r in stack.store.list(limit=100)[0]]
    assert len(recs) == 7
    t = u["totals"]
    assert (t["requests"], t["errors"], t["priced"], t["unpriced"]) == (7, 1, 6, 0)
    assert t["error_rate"] == pytest.approx(1 / 7, abs=1e-6)
    assert Decimal(t["cost_usd"]) == sum(Decimal(r["cost"]["cost_usd"]) for r in recs if r["cost"]["cost_usd"])
    assert t["tokens_in"] == sum(r["usage"]["tokens_in"] for r in recs)
    assert t["tokens_total"] == t["tokens_in"] + t["tokens_out"]
    assert t["latency_ms"]["answered"] == 6 and t["latency_ms"]["p50"] <= t["latency_ms"]["p99"] <= t["latency_ms"]["max"]
    assert u["by_status"]["ok"]["requests"] == 6 and u["by_status"]["error"]["requests"] == 1
    assert u["by_kind"]["flow"]["requests"] == 1 and u["by_kind"]["chat"]["requests"] == 6
    assert u["by_route"]["family:gpt-5.5"]["requests"] == 2
    assert Decimal(u["by_route"]["family:gpt-5.5"]["cost_usd"]) == usd("5", "30", 2)  # gpt-5.5's catalog prices
    # a flow counts once in totals and by route, but by provider it is the steps that answered
    flow_rec = stack.store.get(ids["flow"])
    steps = [n for n in flow_rec["flow"]["nodes"] if n.get("trace_id")]
    assert len(steps) >= 2
    assert "flow" not in u["by_provider"]
    assert sum(p["requests"] for p in u["by_provider"].values()) == 6 + len(steps)
    assert u["by_provider"]["-"] == {**u["by_provider"]["-"], "requests": 1, "errors": 1, "cost_usd": None}
    ge = [r for r in recs if (r.get("answer") or {}).get("provider_id") == "ge"]
    ge_steps = [n for n in steps if n["provider"] == "ge"]
    assert u["by_provider"]["ge"]["requests"] == len(ge) + len(ge_steps)
    assert Decimal(u["by_provider"]["ge"]["cost_usd"]) == \
        sum(Decimal(r["cost"]["cost_usd"]) for r in ge) + sum(Decimal(n["record"]["cost"]["cost_usd"]) for n in ge_steps)
    assert sum(Decimal(p["cost_usd"] or 0) for p in u["by_provider"].values()) == Decimal(t["cost_usd"])
    assert sum(Decimal(m["cost_usd"] or 0) for m in u["by_model_family"].values()) == Decimal(t["cost_usd"])
    # the most expensive first
    costs = [Decimal(v["cost_usd"] or 0) for v in u["by_model_family"].values()]
    assert costs == sorted(costs, reverse=True)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [d["date"] for d in u["daily"]] == [today] and u["daily"][0]["requests"] == 7
    assert u["monthly"][0]["month"] == today[:7]
    assert "by_caller" in u and u["by_caller"]["-"]["requests"] == 7  # the operator's view; no named caller
    # recent: newest first, the summary rows of /x/traces
    assert u["window"]["recent_total"] == 7 and u["window"]["recent_returned"] == 7
    assert u["recent"][0]["trace_id"] == ids["flow"]
    status, listed = await stack.get("/x/traces?limit=100")
    assert [r["trace_id"] for r in u["recent"]] == [r["trace_id"] for r in listed["data"]]
    assert u["recent"][0] == listed["data"][0]


async def test_recent_pages_and_filters_narrow_the_report(stack) -> None:
    ids = await traffic(stack)
    status, page = await stack.get("/x/usage?limit=2&offset=1")
    assert status == 200 and page["totals"]["requests"] == 7  # the page is of recent rows, not of the sums
    status, listed = await stack.get("/x/traces?limit=100")
    assert [r["trace_id"] for r in page["recent"]] == [r["trace_id"] for r in listed["data"][1:3]]
    status, none = await stack.get("/v1/usage?limit=0")
    assert none["recent"] == [] and none["window"]["recent_total"] == 7
    status, gpt = await stack.get("/api/usage?route=family:gpt-5.5")
    assert gpt["totals"]["requests"] == 2 and {r["trace_id"] for r in gpt["recent"]} == set(ids["gpt"])
    assert gpt["window"]["filters"] == {"route": "family:gpt-5.5"}
    status, flows = await stack.get("/v1/usage?kind=flow")
    assert flows["totals"]["requests"] == 1 and flows["recent"][0]["trace_id"] == ids["flow"]
    status, failed = await stack.get("/v1/usage?status=error")
    assert failed["totals"] == {**failed["totals"], "requests": 1, "errors": 1, "cost_usd": None, "priced": 0}
    assert failed["totals"]["latency_ms"]["p50"] is None  # a failed call's latency is not an answer's


async def test_the_window_selects_calls_by_when_they_started(stack) -> None:
    await traffic(stack)
    rows = stack.store.list(limit=100)[0]
    first, last = min(r["started_at_ms"] for r in rows), max(r["started_at_ms"] for r in rows)
    status, day = await stack.get("/v1/usage?window=24h")
    assert status == 200 and day["totals"]["requests"] == 7 and day["window"]["window"] == "24h"
    assert day["window"]["since_ms"] == pytest.approx(day["generated_at_ms"] - 86_400_000, abs=5)
    status, later = await stack.get(f"/v1/usage?since={last + 1}")
    assert later["totals"]["requests"] == 0 and later["by_provider"] == {} and later["daily"] == []
    assert later["totals"]["cost_usd"] is None and later["totals"]["error_rate"] is None
    status, before = await stack.get(f"/v1/usage?until={last}")
    assert before["totals"]["requests"] == sum(1 for r in rows if r["started_at_ms"] < last)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first / 1000 - 1)) + "Z"
    status, since_iso = await stack.get("/v1/usage?since=" + urllib.parse.quote(iso))
    assert status == 200 and since_iso["totals"]["requests"] == 7
    assert since_iso["window"]["since_ms"] == (first // 1000 - 1) * 1000


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


async def test_a_named_caller_reads_its_own_usage_and_the_operator_everyone_s(tmp_path) -> None:
    callers = {"a": CallerSpec("a", frozenset({sha("key-a")})), "d": CallerSpec("d", frozenset({sha("key-d")}))}
    s = await start_stack(tmp_path, callers=callers, caller_keys_sha256=frozenset({sha("operator")}))
    try:
        fixed_replies(s)
        for key in ("key-a", "key-a", "key-d"):
            c = openai.AsyncOpenAI(base_url=s.base_url, api_key=key, max_retries=0)
            await c.chat.completions.create(model="", messages=MSG, extra_body={"session": "shared"})
            await c.close()
        assert s.store.flush()

        async def as_(key: str, query: str = "", path: str = "/v1/usage") -> tuple[int, dict]:
            return await s.get(path + query, headers={"authorization": f"Bearer {key}"})

        status, mine = await as_("key-a", path="/x/sessions")
        assert status == 200 and [(r["session"], r["calls"]) for r in mine["data"]] == [("shared", 2)]
        status, everyone = await as_("operator", path="/x/sessions")
        assert [(r["session"], r["calls"]) for r in everyone["data"]] == [("shared", 3)]
        status, refused = await as_("key-d", "?caller=a", path="/x/sessions")
        assert status == 403 and refused["error"]["code"] == "caller_scope"

        status, a = await as_("key-a")
        assert status == 200 and a["caller"] == "a" and a["totals"]["requests"] == 2
        assert "by_caller" not in a and {r["caller"] for r in a["recent"]} == {"a"}
        assert a["window"]["filters"] == {"caller": "a"}
        status, same = await as_("key-a", "?caller=a")
        assert same["totals"]["requests"] == 2
        status, refused = await as_("key-a", "?caller=d")
        assert status == 403 and refused["error"]["code"] == "caller_scope" and refused["error"]["param"] == "$.caller"
        status, op = await as_("operator")
        assert op["caller"] is None and op["totals"]["requests"] == 3
        assert {k: v["requests"] for k, v in op["by_caller"].items()} == {"a": 2, "d": 1}
        status, op_d = await as_("operator", "?caller=d")
        assert op_d["totals"]["requests"] == 1
        status, nobody = await s.get("/v1/usage")
        assert status == 401
        status, wrong = await as_("key-x")
        assert status == 401 and "key-x" not in json.dumps(wrong)
    finally:
        await s.close()


@pytest.mark.parametrize("query, param", [
    ("windw=24h", "$.windw"),
    ("window=24", "$.window"), ("window=0h", "$.window"), ("window=1y", "$.window"), ("window=", "$.window"),
    ("window=24h&since=1764547200000", "$.window"),
    ("since=1764547200", "$.since"),            # seconds, not milliseconds
    ("since=yesterday", "$.since"), ("until=2026-13-01", "$.until"),
    ("since=1764547200000&until=1764547100000", "$.until"),
    ("limit=501", "$.limit"), ("limit=-1", "$.limit"), ("limit=ten", "$.limit"), ("offset=1.5", "$.offset"),
    ("limit=1&limit=2", "$.limit"), ("route=", "$.route"),
    ("until=" + "9" * 30, "$.until"),
])
async def test_a_bad_query_is_a_400_at_its_parameter(stack, query, param) -> None:
    status, out = await stack.get("/v1/usage?" + query)
    assert status == 400, out
    assert out["error"]["param"] == param and out["error"]["type"] == "invalid_request_error"
    assert out["error"]["code"] in ("bad_parameter", "unknown_parameter")


async def test_seconds_are_refused_with_the_milliseconds_to_send(stack) -> None:
    status, out = await stack.get("/v1/usage?since=1764547200")
    assert status == 400 and "1764547200000" in out["error"]["message"]


async def test_the_cli_prints_the_report(stack) -> None:
    await traffic(stack)
    out = io.StringIO()
    from unhardcoded.cli import main
    with contextlib.redirect_stdout(out):
        assert main(["usage", "--data-dir", stack.settings.data_dir, "--json"]) == 0
    report = json.loads(out.getvalue())
    status, served = await stack.get("/v1/usage?limit=0")
    for key in ("totals", "by_provider", "by_route", "daily"):
        assert report[key] == served[key], key
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["usage", "--data-dir", stack.settings.data_dir, "--window", "7d"]) == 0
    lines = text.getvalue()
    assert "7 calls" in lines and "1 error" in lines and served["totals"]["cost_usd"] in lines
    assert "by provider" in lines and "family:gpt-5.5" in lines
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        main(["usage", "--data-dir", stack.settings.data_dir, "--window", "24"])
    assert "window" in err.getvalue()


# ---- the pure part: no store, no server -------------------------------------------------------

def row(**kw) -> dict:
    base = {"trace_id": "t", "started_at_ms": 1_764_547_200_000, "finished_at_ms": 1_764_547_200_050,
            "status": "ok", "kind": "chat", "route": "", "policy_identity": "ab" * 32, "provider": "oa",
            "model_family": "gpt-5.5", "served_model_id": "gpt-5.5", "tokens_in": 10, "tokens_out": 5,
            "tokens_cached": 0, "cost_usd": "0.001", "total_ms": 50.0, "caller": None}
    return {**base, **kw}


def test_an_answer_without_a_price_is_counted_unpriced_never_guessed() -> None:
    u = Usage()
    for r in (row(), row(cost_usd=None), row(status="error", cost_usd=None, provider=None, total_ms=1.0)):
        u.add(r)
    t = u.report()["totals"]
    assert (t["requests"], t["priced"], t["unpriced"], t["errors"], t["cost_usd"]) == (3, 1, 1, 1, "0.001")
    assert t["latency_ms"]["answered"] == 2 and t["latency_ms"]["p50"] == 50.0


def test_percentiles_are_latencies_some_call_had() -> None:
    u = Usage()
    for ms in range(1, 101):
        u.add(row(total_ms=float(ms)))
    lat = u.report()["totals"]["latency_ms"]
    assert (lat["p50"], lat["p95"], lat["p99"], lat["max"], lat["avg"]) == (50.0, 95.0, 99.0, 100.0, 50.5)


def test_a_flow_step_that_called_no_model_is_not_a_provider_s_call() -> None:
    nodes = [{"trace_id": "n1", "provider": "an", "model_family": "claude-haiku-4-5", "served_model_id": "h",
              "tokens_in": 4, "tokens_out": 2, "tokens_cached": 0, "cost_usd": 0.5,
              "record": {"cost": {"cost_usd": "0.0004"}}},
             {"trace_id": "n2", "provider": None, "tokens_in": 0, "tokens_out": 0, "cost_usd": None},
             {"node": "passed-through", "status": "passed"}]
    u = Usage()
    u.add(row(kind="flow", provider="flow", model_family="flow:x", served_model_id="flow:x", cost_usd="0.0004",
              nodes=nodes))
    out = u.report()
    assert out["by_provider"] == {
        "an": {**out["by_provider"]["an"], "requests": 1, "errors": 0, "cost_usd": "0.0004"},  # the exact text
        "-": {**out["by_provider"]["-"], "requests": 1, "errors": 1}}
    assert out["by_kind"]["flow"]["requests"] == 1 and out["totals"]["requests"] == 1


def test_only_the_page_asked_for_is_kept() -> None:
    u = Usage(limit=2, offset=3)
    for i in range(10):
        u.add(row(trace_id=f"t{i}"))
    out = u.report()
    assert [r["trace_id"] for r in out["recent"]] == ["t3", "t4"] and out["recent_total"] == 10


def test_windows_and_instants() -> None:
    assert window_ms("15m") == 900_000 and window_ms("4w") == 4 * 604_800_000 and window_ms("90s") == 90_000
    assert instant_ms("since", "2026-12-01") == 1_796_083_200_000
    assert instant_ms("since", "2026-12-01T00:00:00Z") == instant_ms("since", "2026-12-01T01:00:00+01:00")
    assert instant_ms("since", "1796083200000") == 1_796_083_200_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_any_query_string_is_read_or_refused_at_a_parameter(query: str) -> None:
    try:
        out = read_query(query.encode("utf-8", "surrogatepass"), now_ms=1_796_083_200_000)
    except HTTPError as exc:
        assert exc.status == 400 and exc.param and exc.param.startswith("$")
        return
    assert 0 <= out["limit"] <= 500 and out["offset"] >= 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["window", "since", "until", "limit", "offset", "route", "caller", "x"]),
                       st.text(max_size=20), max_size=4))
def test_any_parameters_are_read_or_refused_at_a_parameter(params: dict) -> None:
    try:
        read_query(urllib.parse.urlencode(params), now_ms=1_796_083_200_000)
    except HTTPError as exc:
        assert exc.status == 400 and exc.param in {f"$.{k}" for k in params}


def test_days_and_months_are_utc_and_roll_up() -> None:
    u = Usage()
    nov_30_late = 1_796_083_200_000 - 1  # 2026-11-30T23:59:59.999Z
    for ms, cost in ((nov_30_late, "0.1"), (nov_30_late + 1, "0.2"), (nov_30_late + 86_400_000, "0.3")):
        u.add(row(started_at_ms=ms, cost_usd=cost))
    out = u.report()
    assert [(d["date"], d["requests"], d["cost_usd"]) for d in out["daily"]] == [
        ("2026-11-30", 1, "0.1"), ("2026-12-01", 2, "0.5")]
    assert [(m["month"], m["requests"], m["cost_usd"]) for m in out["monthly"]] == [("2026-11", 1, "0.1"),
                                                                                     ("2026-12", 2, "0.5")]


async def test_sessions_are_listed_most_recently_active_first_with_their_totals(stack) -> None:
    fixed_replies(stack)
    for session in ("s1", "s2", "s1", "s3"):
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"session": session})
    await stack.client.chat.completions.create(model="", messages=MSG)  # in no session
    assert stack.store.flush()
    status, out = await stack.get("/x/sessions")
    assert status == 200 and out["object"] == "list" and out["total"] == 3
    assert [r["session"] for r in out["data"]] == ["s3", "s1", "s2"]
    for r in out["data"]:
        status, one = await stack.get(f"/x/sessions/{r['session']}")
        assert {k: r[k] for k in ("calls", "tokens_in", "tokens_out", "tokens_cached", "cost_usd",
                                  "first_started_at_ms", "last_finished_at_ms")} == \
            {k: one[k] for k in ("calls", "tokens_in", "tokens_out", "tokens_cached", "cost_usd",
                                 "first_started_at_ms", "last_finished_at_ms")}
    s1 = out["data"][1]
    assert s1["calls"] == 2 and s1["errors"] == 0 and Decimal(s1["cost_usd"]) == usd("0.5", "3", 2)
    status, page = await stack.get("/x/sessions?limit=1&offset=1")
    assert [r["session"] for r in page["data"]] == ["s1"] and page["total"] == 3
    status, later = await stack.get(f"/x/sessions?since={out['data'][0]['last_started_at_ms']}")
    assert [r["session"] for r in later["data"]] == ["s3"] and later["total"] == 1
    status, bad = await stack.get("/x/sessions?limit=1001")
    assert status == 400 and bad["error"]["param"] == "$.limit"
    status, bad = await stack.get("/x/sessions?sort=cost")
    assert status == 400 and bad["error"]["param"] == "$.sort"
