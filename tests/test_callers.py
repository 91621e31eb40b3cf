"""Named callers: their keys, their limits (requests and tokens per minute, a spending
budget), what their receipts say, and what each may read of the trace history."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from decimal import Decimal

import openai
import pytest
from hypothesis import given, settings, strategies as st

from unhardcoded.config import ConfigError, load_settings
from unhardcoded.runtime.limits import CallerLimits, CallerSpec, LimitExceeded, window_end_ms, window_start_ms
from unhardcoded.traces.sqlite import SQLiteStore

from .harness import start_stack

MSG = [{"role": "user", "content": "Hello there"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ---- config ---------------------------------------------------------------------------

def _load(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_settings(p, environ={})


def test_callers_are_read_with_their_limits(tmp_path) -> None:
    s = _load(tmp_path, f"""
[callers.billing-backend]
keys_sha256 = ["{sha('k1')}", "{sha('k1-next')}"]
requests_per_minute = 600
tokens_per_minute = 200000
budget_usd = 12.5
budget_window = "day"

[callers.batch]
keys_sha256 = ["{sha('k2')}"]
""")
    a, b = s.callers["billing-backend"], s.callers["batch"]
    assert (a.requests_per_minute, a.tokens_per_minute, a.budget_usd, a.budget_window) == (600, 200000,
                                                                                           Decimal("12.5"), "day")
    assert (b.requests_per_minute, b.tokens_per_minute, b.budget_usd, b.budget_window) == (None, None, None, "month")
    assert s.keys_required
    assert s.caller_of("k1") == (True, "billing-backend") == s.caller_of("k1-next")
    assert s.caller_of("k2") == (True, "batch")
    assert s.caller_of("other") == (False, None) and s.caller_of(None) == (False, None)


@pytest.mark.parametrize("text, path", [
    ('[callers."bad name"]\nkeys_sha256 = ["%s"]' % sha("k"), '$.callers["bad name"]'),
    ("[callers.a]\nrequests_per_minute = 5", "$.callers.a.keys_sha256"),
    ("[callers.a]\nkeys_sha256 = []", "$.callers.a.keys_sha256"),
    ('[callers.a]\nkeys_sha256 = ["k1"]', "$.callers.a.keys_sha256[0]"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\nrequests_per_minute = 0' % sha("k"), "$.callers.a.requests_per_minute"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\ntokens_per_minute = "9"' % sha("k"), "$.callers.a.tokens_per_minute"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\nbudget_usd = -1' % sha("k"), "$.callers.a.budget_usd"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\nbudget_usd = nan' % sha("k"), "$.callers.a.budget_usd"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\nbudget_window = "week"' % sha("k"), "$.callers.a.budget_window"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\nrpm = 3' % sha("k"), "$.callers.a.rpm"),
    ('[callers.a]\nkeys_sha256 = ["%s"]\n[callers.b]\nkeys_sha256 = ["%s"]' % (sha("k"), sha("k")),
     "$.callers.b.keys_sha256[0]"),
    ("[callers]\na = 3", "$.callers.a"),
])
def test_a_wrong_caller_is_refused_at_its_path(tmp_path, text, path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert e.value.path == path


# ---- limits, on a clock of our own ---------------------------------------------------------

class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


T0 = 1_764_547_200_000 + 3_600_000  # 2025-12-01T01:00:00Z


def limits(clock: Clock, **spec) -> CallerLimits:
    return CallerLimits({"a": CallerSpec("a", frozenset({"x"}), **spec)}, clock_ms=clock)


def test_requests_per_minute_is_a_sliding_window() -> None:
    clock = Clock(T0)
    lim = limits(clock, requests_per_minute=3)
    for step in (0, 10_000, 20_000):
        clock.ms = T0 + step
        lim.admit("a")
    clock.ms = T0 + 30_000
    with pytest.raises(LimitExceeded) as e:
        lim.admit("a")
    # counted by the second: the first call, in the second ending at T0 + 1 s, leaves at T0 + 61 s
    assert e.value.code == "rate_limit_exceeded" and e.value.retry_after_s == 31.0
    assert e.value.headers["x-ratelimit-reset-requests"] == "31s"
    assert lim.usage("a")["requests_per_minute"] == {"limit": 3, "used": 3}  # the refusal is not counted
    clock.ms = T0 + 60_999
    with pytest.raises(LimitExceeded):
        lim.admit("a")
    clock.ms = T0 + 61_000  # the first call has left the minute: one more fits, not two
    lim.admit("a")
    with pytest.raises(LimitExceeded):
        lim.admit("a")
    lim.admit("someone-unnamed")  # a caller without limits is never refused
    lim.admit(None)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 5), steps=st.lists(st.integers(0, 30_000), min_size=1, max_size=60))
def test_no_minute_ever_holds_more_than_the_limit_and_a_refusal_says_when_to_come_back(rpm, steps) -> None:
    clock = Clock(T0 + 123)
    lim = limits(clock, requests_per_minute=rpm)
    admitted: list[int] = []
    for step in steps:
        clock.ms += step
        try:
            lim.admit("a")
            admitted.append(clock.ms)
        except LimitExceeded as e:
            assert e.retry_after_s > 0
            later = copy.deepcopy(lim)
            later._clock = Clock(clock.ms + math.ceil(e.retry_after_s * 1000))
            later.admit("a")  # when it said, it is admitted
    for t in admitted:
        assert sum(1 for u in admitted if t - 60_000 < u <= t) <= rpm


def test_tokens_per_minute_counts_what_finished_calls_used() -> None:
    clock = Clock(T0)
    lim = limits(clock, tokens_per_minute=100)
    lim.admit("a")
    lim.settle("a", 60, None)
    clock.ms += 5_000
    lim.admit("a")  # 60 < 100
    lim.settle("a", 50, None)
    with pytest.raises(LimitExceeded) as e:
        lim.admit("a")
    # under the limit again once the first 60 tokens have left the minute
    assert e.value.retry_after_s == 56.0 and e.value.headers["x-ratelimit-limit-tokens"] == "100"
    clock.ms = T0 + 61_000
    lim.admit("a")
    assert lim.usage("a")["tokens_per_minute"] == {"limit": 100, "used": 50}


def test_a_budget_is_spent_per_window_and_renews() -> None:
    clock = Clock(T0)
    lim = limits(clock, budget_usd=Decimal("0.01"), budget_window="day")
    lim.admit("a")
    lim.settle("a", 10, Decimal("0.004"))
    lim.admit("a")
    lim.settle("a", 10, None)      # no price: counted apart, costs nothing here
    lim.settle("a", 0, None, answered=False)  # a failed call is not an unpriced answer
    lim.settle("a", 10, Decimal("0.006"))     # (a flow settles each step of its one call)
    with pytest.raises(LimitExceeded) as e:
        lim.admit("a")
    assert e.value.code == "insufficient_quota" and e.value.headers == {"x-should-retry": "false"}
    assert e.value.retry_after_s == 23 * 3600  # to midnight UTC
    u = lim.usage("a")["budget"]
    assert (u["spent_usd"], u["remaining_usd"], u["calls"], u["unpriced_calls"]) == ("0.01", "0", 2, 1)
    clock.ms = window_end_ms(window_start_ms(T0, "day"), "day")
    lim.admit("a")
    assert lim.usage("a")["budget"]["spent_usd"] == "0"


def test_budget_windows_are_utc_days_and_months() -> None:
    dec31 = 1_767_139_200_000 + 5_000  # 2025-12-31T00:00:05Z
    assert window_start_ms(dec31, "day") == 1_767_139_200_000
    assert window_start_ms(dec31, "month") == 1_764_547_200_000           # 2025-12-01
    assert window_end_ms(1_764_547_200_000, "month") == 1_767_225_600_000  # 2026-01-01
    assert window_end_ms(1_767_139_200_000, "day") == 1_767_225_600_000


# ---- served: the SDK against the router, both servers ---------------------------------------

@pytest.fixture(params=["uvicorn", "granian"])
def server(request) -> str:
    return request.param


@pytest.fixture
async def tenants(tmp_path, server):
    callers = {
        "a": CallerSpec("a", frozenset({sha("key-a")}), requests_per_minute=3),
        "b": CallerSpec("b", frozenset({sha("key-b")}), budget_usd=Decimal("0.000000001")),
        "c": CallerSpec("c", frozenset({sha("key-c")}), max_concurrent_requests=1),
        "d": CallerSpec("d", frozenset({sha("key-d")}), envelope=["family_eq", "gpt-5.4-mini"]),
    }
    s = await start_stack(tmp_path, server=server, callers=callers,
                          caller_keys_sha256=frozenset({sha("operator")}))
    clients = {name: openai.AsyncOpenAI(base_url=s.base_url, api_key=f"key-{name}", max_retries=0)
               for name in ("a", "b", "c", "d")}
    clients["op"] = openai.AsyncOpenAI(base_url=s.base_url, api_key="operator", max_retries=0)
    yield s, clients
    for c in clients.values():
        await c.close()
    await s.close()


def root(stack) -> str:
    """The router's own endpoints (/x/...) are beside /v1: the SDK is given them whole."""
    return stack.base_url.removesuffix("/v1")


def _sent(stack) -> int:
    return sum(len(up.requests) for up in stack.ups.values())


async def test_a_caller_over_its_requests_per_minute_gets_openais_429(tenants) -> None:
    s, c = tenants
    for _ in range(2):
        await c["a"].chat.completions.create(model="", messages=MSG)
    await c["a"].responses.create(model="", input="hi")  # the Responses API counts the same
    before = _sent(s)
    with pytest.raises(openai.RateLimitError) as e:
        await c["a"].chat.completions.create(model="", messages=MSG)
    assert _sent(s) == before  # refused before any provider was asked
    body, headers = e.value.body, e.value.response.headers
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "rate_limit_error"
    assert "'a'" in body["message"] and "key-a" not in e.value.response.text
    assert 1 <= int(headers["retry-after"]) <= 61 and headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    await c["b"].chat.completions.create(model="", messages=MSG)  # another caller is not held back
    await c["op"].chat.completions.create(model="", messages=MSG)  # nor the operator's key
    me = (await c["a"].get(root(s) + "/x/caller", cast_to=object))
    assert me["caller"] == "a" and me["requests_per_minute"] == {"limit": 3, "used": 3}


async def test_a_spent_budget_is_insufficient_quota_and_the_sdk_does_not_retry_it(tenants) -> None:
    s, c = tenants
    r = await c["b"].chat.completions.create(model="", messages=MSG)
    assert Decimal(r.model_extra["x_router"]["cost_usd"]) > 0  # a priced call: the tiny budget is spent
    retrying = openai.AsyncOpenAI(base_url=s.base_url, api_key="key-b", max_retries=2)
    refused_before = sum(n for (status, _), n in s.router.meter.refused.items() if status == 429)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            await retrying.chat.completions.create(model="", messages=MSG)
    finally:
        await retrying.close()
    assert e.value.body["code"] == "insufficient_quota" and e.value.body["type"] == "insufficient_quota"
    assert e.value.response.headers["x-should-retry"] == "false"
    refused = sum(n for (status, _), n in s.router.meter.refused.items() if status == 429)
    assert refused == refused_before + 1  # asked once: the SDK read x-should-retry
    budget = (await c["b"].get(root(s) + "/x/caller", cast_to=object))["budget"]
    assert budget["calls"] == 1 and Decimal(budget["spent_usd"]) == Decimal(str(r.model_extra["x_router"]["cost_usd"]))
    with pytest.raises(openai.NotFoundError) as nf:  # the operator's key names no caller
        await c["op"].get(root(s) + "/x/caller", cast_to=object)
    assert nf.value.body["code"] == "no_caller"

    # a restart: the budget spent is read back from the trace store
    s.store.flush()
    fresh = CallerLimits(s.settings.callers)
    fresh.load(s.store.caller_usage)
    assert fresh.usage("b")["budget"]["spent_usd"] == budget["spent_usd"]
    with pytest.raises(LimitExceeded):
        fresh.admit("b")


async def test_receipts_name_the_caller_and_each_caller_reads_only_its_own(tenants) -> None:
    s, c = tenants
    ra = await c["a"].chat.completions.create(model="", messages=MSG)
    rb = await c["b"].chat.completions.create(model="", messages=MSG)
    ro = await c["op"].chat.completions.create(model="", messages=MSG)
    ids = {k: r.model_extra["x_router"]["trace_id"] for k, r in (("a", ra), ("b", rb), ("op", ro))}
    s.store.flush()
    rec_a = await c["op"].get(root(s) + f"/x/traces/{ids['a']}", cast_to=object)
    assert rec_a["caller"] == "a"
    assert "caller" not in (await c["op"].get(root(s) + f"/x/traces/{ids['op']}", cast_to=object))  # no name: as before

    mine = await c["a"].get(root(s) + "/x/traces", cast_to=object)
    assert [row["trace_id"] for row in mine["data"]] == [ids["a"]] and mine["data"][0]["caller"] == "a"
    with pytest.raises(openai.NotFoundError):  # b's receipt does not exist for a
        await c["a"].get(root(s) + f"/x/traces/{ids['b']}", cast_to=object)
    with pytest.raises(openai.PermissionDeniedError):
        await c["a"].get(root(s) + "/x/traces", cast_to=object, options={"params": {"caller": "b"}})
    with pytest.raises(openai.NotFoundError):
        await c["a"].post(root(s) + "/x/replay", body={"trace_id": ids["b"]}, cast_to=object)
    replayed = await c["a"].post(root(s) + "/x/replay", body={"trace_id": ids["a"]}, cast_to=object)
    assert replayed["identical"] is True  # its own receipt replays: a caller's name changes no decision

    every = await c["op"].get(root(s) + "/x/traces", cast_to=object)
    assert {row["trace_id"] for row in every["data"]} == set(ids.values())
    only_b = await c["op"].get(root(s) + "/x/traces", cast_to=object, options={"params": {"caller": "b"}})
    assert [row["trace_id"] for row in only_b["data"]] == [ids["b"]]


async def test_an_old_store_gains_the_caller_column(tmp_path) -> None:
    import sqlite3
    path = tmp_path / "old.sqlite3"
    SQLiteStore(path)  # the current schema, then the column taken away as a store before callers had it
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX traces_caller")
    conn.execute("ALTER TABLE traces DROP COLUMN caller")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    assert store.caller_usage("a", 0, 0) == (0, 0, Decimal(0), [])
    conn = sqlite3.connect(path)
    assert "caller" in {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
    conn.close()


async def test_a_flow_is_one_request_and_its_nodes_tokens_all_count(tenants) -> None:
    from .harness import policy
    s, c = tenants
    node = {"kind": "llm", "policy": policy(["family_eq", "gpt-5.5"]), "inputs": ["u"]}
    flow = ["flow", {"u": {"kind": "input"}, "a": {**node, "system": "A."}, "b": {**node, "system": "B."},
                     "s": {**node, "system": "Join.", "inputs": ["a", "b"]},
                     "out": {"kind": "output", "inputs": ["s"]}}]
    r = await c["a"].chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    nodes = r.model_extra["x_router"]["flow_nodes"]
    tokens = sum(n["tokens_in"] + n["tokens_out"] for n in nodes if n["status"] == "ok")
    assert len([n for n in nodes if n["status"] == "ok"]) == 3 and tokens == r.usage.total_tokens
    me = await c["a"].get(root(s) + "/x/caller", cast_to=object)
    assert me["requests_per_minute"]["used"] == 1 and me["tokens_per_minute"]["used"] == tokens
    s.store.flush()
    rec = await c["a"].get(root(s) + f"/x/traces/{r.model_extra['x_router']['trace_id']}", cast_to=object)
    assert rec["kind"] == "flow" and rec["caller"] == "a"


async def test_metrics_count_each_callers_refusals_and_use_for_the_operator_only(tenants) -> None:
    s, c = tenants
    for _ in range(3):
        await c["a"].chat.completions.create(model="", messages=MSG)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            await c["a"].chat.completions.create(model="", messages=MSG)
    text = (await c["op"].get(root(s) + "/metrics", cast_to=str))
    assert 'llm_router_caller_refusals_total{caller="a",limit="requests_per_minute"} 2.0' in text
    assert 'llm_router_caller_refusals_total{caller="b"' not in text
    used = [line for line in text.splitlines() if line.startswith('llm_router_caller_tokens_last_minute{caller="a"}')]
    assert len(used) == 1 and float(used[0].split()[-1]) > 0
    with pytest.raises(openai.PermissionDeniedError):
        await c["a"].get(root(s) + "/metrics", cast_to=str)
    every = await c["op"].get(root(s) + "/x/callers", cast_to=object)
    assert [row["caller"] for row in every["data"]] == ["a", "b", "c", "d"]
    assert every["data"][0]["requests_per_minute"] == {"limit": 3, "used": 3}
    with pytest.raises(openai.PermissionDeniedError):
        await c["a"].get(root(s) + "/x/callers", cast_to=object)


async def test_a_limited_callers_answers_say_what_is_left(tenants) -> None:
    s, c = tenants
    raw = await c["a"].chat.completions.with_raw_response.create(model="", messages=MSG)
    h = raw.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert h["x-ratelimit-reset-requests"].endswith("s")
    async with c["a"].chat.completions.with_streaming_response.create(model="", messages=MSG, stream=True) as st:
        assert st.headers["x-ratelimit-remaining-requests"] == "1"
        assert st.headers["content-type"].startswith("text/event-stream")
        async for _line in st.iter_lines():
            pass
    raw = await c["a"].responses.with_raw_response.create(model="", input="hi")
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    raw = await c["b"].chat.completions.with_raw_response.create(model="", messages=MSG)
    assert "x-ratelimit-limit-requests" not in raw.headers  # b has a budget, no per-minute limits
    raw = await c["op"].chat.completions.with_raw_response.create(model="", messages=MSG)
    assert "x-ratelimit-limit-requests" not in raw.headers


async def test_concurrent_requests_are_limited_and_every_ending_frees_its_place(tenants) -> None:
    import asyncio

    from unhardcoded.testing.upstreams import Delay, Fail, Reply
    s, c = tenants
    s.openai.script("gpt-5.5", Delay(500), Reply("slow"))
    first = asyncio.create_task(c["c"].chat.completions.create(model="family:gpt-5.5", messages=MSG))
    for _ in range(200):
        if (await c["c"].get(root(s) + "/x/caller", cast_to=object))["concurrent_requests"]["in_flight"]:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as e:
        await c["c"].chat.completions.create(model="", messages=MSG)
    assert "in flight" in e.value.body["message"]
    await c["a"].chat.completions.create(model="", messages=MSG)  # another caller is not held back
    assert (await first).choices[0].message.content == "slow"
    async for _chunk in await c["c"].chat.completions.create(model="", messages=MSG, stream=True):
        pass  # its place is free again
    s.openai.script("gpt-5.5", Fail(500), Fail(500), Fail(500), Fail(500))
    with pytest.raises(openai.APIStatusError):  # every route failed: the place is freed all the same
        await c["c"].chat.completions.create(model="family:gpt-5.5", messages=MSG)
    await c["c"].responses.create(model="", input="hi")
    me = await c["c"].get(root(s) + "/x/caller", cast_to=object)
    assert me["concurrent_requests"] == {"limit": 1, "in_flight": 0}


async def test_the_callers_command_reads_limits_and_use_from_the_store(tenants, tmp_path, capsys) -> None:
    import json

    from unhardcoded.cli import main
    s, c = tenants
    r = await c["b"].chat.completions.create(model="", messages=MSG)
    await c["a"].chat.completions.create(model="", messages=MSG)
    s.store.flush()
    cfg = tmp_path / "router.toml"
    cfg.write_text(f"""[traces]
data_dir = "{s.settings.data_dir}"
[callers.a]
keys_sha256 = ["{sha('key-a')}"]
requests_per_minute = 3
[callers.b]
keys_sha256 = ["{sha('key-b')}"]
budget_usd = 0.000000001
""")
    assert main(["callers", "--config", str(cfg), "--json"]) == 0
    rows = {row["caller"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["b"]["budget"]["calls"] == 1 and rows["a"]["budget"]["calls"] == 1
    assert Decimal(rows["b"]["budget"]["spent_usd"]) == Decimal(str(r.model_extra["x_router"]["cost_usd"]))
    assert rows["b"]["budget"]["remaining_usd"] == "0" and rows["a"]["requests_per_minute"]["limit"] == 3
    assert rows["a"]["tokens_per_minute"]["used"] > 0
    assert main(["callers", "--config", str(cfg)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["caller", "window"] and table[1].split()[0] == "a" and len(table) == 3


def test_a_monthly_budget_over_a_shorter_retention_is_warned_of_at_start(tmp_path, caplog) -> None:
    import logging

    from unhardcoded.config import Settings
    from unhardcoded.server import build_router
    callers = {"m": CallerSpec("m", frozenset({sha("k")}), budget_usd=Decimal(5))}
    with caplog.at_level(logging.WARNING, logger="unhardcoded.server"):
        router = build_router(Settings(data_dir=str(tmp_path), callers=callers, retention_days=30))
        router.sink.close()
    assert any("monthly budget of m" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unhardcoded.server"):
        router = build_router(Settings(data_dir=str(tmp_path), callers=callers, retention_days=31))
        router.sink.close()
    assert not caplog.records


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        # JSON's escapes are TOML's too; TOML also wants DEL escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    return "[" + ", ".join(_toml(x) for x in v) + "]"


_caller_values = st.one_of(st.booleans(), st.integers(-3, 10 ** 6), st.floats(),
                           st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                           st.sampled_from([sha("k1"), sha("k2"), "day", "month", "week"]),
                           st.lists(st.sampled_from([sha("k1"), sha("k2"), "nothex", 3]), max_size=3))
_caller_tables = st.dictionaries(
    st.sampled_from(["a", "b.c", "-x", "z" * 65, "ok_1"]),
    st.dictionaries(st.sampled_from(["keys_sha256", "requests_per_minute", "tokens_per_minute",
                                     "max_concurrent_requests", "budget_usd", "budget_window", "rpm"]),
                    _caller_values, max_size=5),
    max_size=3)


@settings(max_examples=200, deadline=None)
@given(tables=_caller_tables)
def test_any_callers_table_is_read_or_refused_at_a_path_inside_it(tmp_path_factory, tables) -> None:
    text = "".join(f'[callers."{name}"]\n' + "".join(f"{k} = {_toml(v)}\n" for k, v in spec.items())
                   for name, spec in tables.items())
    try:
        s = _load(tmp_path_factory.mktemp("c"), text)
    except ConfigError as e:
        assert e.path.startswith("$.callers"), e.path
        parts = list(e.parts)
        assert parts[0] == "callers" and parts[1] in tables
        node = tables[parts[1]]
        for p in parts[2:]:
            assert (isinstance(node, dict) and (p in node or p == "keys_sha256")) or \
                (isinstance(node, list) and isinstance(p, int) and p < len(node)), (e.path, tables)
            node = node.get(p) if isinstance(node, dict) else node[p]
        return
    assert set(s.callers) == set(tables)
    for name, spec in s.callers.items():
        assert spec.keys_sha256 and spec.budget_window in ("day", "month")
        assert spec.budget_usd is None or spec.budget_usd > 0


async def test_a_callers_envelope_bounds_every_policy_it_runs_and_replays(tenants) -> None:
    from .harness import policy
    s, c = tenants
    for _ in range(2):  # twice: the second from the remembered choices, which must not mix callers
        for who, family in (("d", "gpt-5.4-mini"), ("op", "gemini-3-flash-preview")):
            r = await c[who].chat.completions.create(model="", messages=MSG)
            assert r.model_extra["x_router"]["model_family"] == family, who
            r = await c[who].chat.completions.create(model="", messages=MSG,
                                                     extra_body={"policy_ir": ["cmp", "bench_intelligence", "ge", 0]})
            assert r.model_extra["x_router"]["model_family"] == family, who
    with pytest.raises(openai.APIStatusError) as e:  # a policy for a model outside its envelope finds none
        await c["d"].chat.completions.create(model="", messages=MSG,
                                             extra_body={"policy_ir": policy(["family_eq", "claude-haiku-4-5"])})
    assert e.value.body["code"] == "no_candidates"
    r = await c["d"].chat.completions.create(model="", messages=MSG)
    s.store.flush()
    trace_id = r.model_extra["x_router"]["trace_id"]
    rec = await c["d"].get(root(s) + f"/x/traces/{trace_id}", cast_to=object)
    assert rec["caller"] == "d" and ["family_eq", "gpt-5.4-mini"] in rec["policy"]["effective"]["term"][1]
    assert rec["policy"]["caller_envelope"] == ["family_eq", "gpt-5.4-mini"]
    replayed = await c["d"].post(root(s) + "/x/replay", body={"trace_id": trace_id}, cast_to=object)
    assert replayed["identical"] is True
    ranked = await c["d"].post(root(s) + "/x/rank", body={}, cast_to=object)
    assert {row["model_family"] for row in ranked["ranked"]} == {"gpt-5.4-mini"}
    assert ranked["policy"]["caller_envelope"] == ["family_eq", "gpt-5.4-mini"]
    # the operator sees a caller's view when it asks for it, and its own otherwise
    as_d = await c["op"].post(root(s) + "/x/rank", body={"as_caller": "d"}, cast_to=object)
    assert as_d["ranked"] == ranked["ranked"]
    as_d = await c["op"].get(root(s) + "/x/rank", cast_to=object, options={"params": {"as_caller": "d"}})
    assert as_d["ranked"] == ranked["ranked"]
    own = await c["op"].post(root(s) + "/x/rank", body={}, cast_to=object)
    assert len({row["model_family"] for row in own["ranked"]}) > 1 and "caller_envelope" not in own["policy"]
    with pytest.raises(openai.PermissionDeniedError):
        await c["d"].post(root(s) + "/x/rank", body={"as_caller": "a"}, cast_to=object)
    with pytest.raises(openai.NotFoundError) as nf:
        await c["op"].post(root(s) + "/x/rank", body={"as_caller": "nobody"}, cast_to=object)
    assert nf.value.body["param"] == "$.as_caller"


@pytest.mark.parametrize("envelope, code, path", [
    ('["nope", 1]', "unknown_op", "$.callers.d.envelope"),
    ('["policy", ["top"], ["zero"], ["ordered"], ["id"], ["always", {"action": "abort"}]]', "sort_mismatch",
     "$.callers.d.envelope"),
    ('["cmp", "undeclared_field", "ge", 1]', None, "$.callers.d.envelope"),
])
def test_a_callers_envelope_is_admitted_at_start_against_the_catalog(tmp_path, envelope, code, path) -> None:
    from unhardcoded.config import Settings
    from unhardcoded.server import build_router
    callers = {"d": CallerSpec("d", frozenset({sha("k")}), envelope=json.loads(envelope))}
    with pytest.raises(ConfigError) as e:
        build_router(Settings(data_dir=str(tmp_path), callers=callers))
    assert e.value.path.startswith(path) and (code is None or e.value.code == code), (e.value.code, e.value.path)


def test_a_callers_envelope_in_the_config_is_json(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, '[callers.d]\nkeys_sha256 = ["%s"]\nenvelope = "[nope"' % sha("k"))
    assert e.value.path == "$.callers.d.envelope"
    s = _load(tmp_path, '[callers.d]\nkeys_sha256 = ["%s"]\nenvelope = \'["family_eq", "x"]\'' % sha("k"))
    assert s.callers["d"].envelope == ["family_eq", "x"]


def test_a_shared_stores_spend_is_merged_with_what_was_counted_since_the_reading_began() -> None:
    clock = Clock(T0)
    lim = limits(clock, budget_usd=Decimal("1"), budget_window="day")
    lim.settle("a", 10, Decimal("0.3"))
    at_read = lim.counted("a")
    assert at_read == (window_start_ms(T0, "day"), 0, 0, Decimal("0.3"))
    lim.settle("a", 10, Decimal("0.1"))  # this router's call while the store is read
    lim.merge("a", at_read, 4, 1, Decimal("0.5"))  # the store: this router's 0.3 and others' 0.2
    u = lim.usage("a")["budget"]
    assert (u["spent_usd"], u["calls"], u["unpriced_calls"]) == ("0.6", 4, 1)
    lim.merge("a", lim.counted("a"), 0, 0, Decimal("0.1"))  # a reading that lags this router's own
    assert lim.usage("a")["budget"]["spent_usd"] == "0.6"  # lowers nothing
    old = lim.counted("a")
    clock.ms += 86_400_000  # the window turned after the reading began: it is not applied
    lim.merge("a", old, 9, 0, Decimal("5"))
    assert lim.usage("a")["budget"]["spent_usd"] == "0"
    assert lim.counted("nobody") is None
