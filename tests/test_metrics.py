"""GET /metrics: Prometheus' text format, read back with prometheus_client's own parser."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from unhardcoded.testing.upstreams import Fail, ReplyToolCall

from .harness import policy, start_stack

MSG = [{"role": "user", "content": "Hello there"}]


async def scrape(stack, headers=None) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.base_url.removesuffix("/v1") + "/metrics", headers=headers or {}) as r:
            text = (await r.read()).decode()
            if r.status != 200:
                return r.status, text, {}
            assert r.headers["content-type"].startswith("text/plain; version=")
    samples: dict = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            samples[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return 200, text, samples


async def test_the_counts_are_what_the_router_did(stack) -> None:
    r1 = await stack.client.chat.completions.create(model="", messages=MSG)
    r2 = await stack.client.chat.completions.create(model="family:gpt-5.4-mini", messages=MSG)
    status, _ = await stack.post("/v1/chat/completions", {"messages": []})  # refused before routing
    assert status == 400
    stack.gemini.script("gemini-3-flash-preview", Fail(500), Fail(500), Fail(500))
    pol = policy(["family_eq", "gemini-3-flash-preview"],
                 failplan=["always", {"action": "next_candidate", "open_breaker_ms": 60_000}])
    status, _ = await stack.post("/v1/chat/completions", {"messages": MSG, "policy_ir": pol})
    assert status >= 500
    stack.store.flush()
    _, text, m = await scrape(stack)
    assert m[("llm_router_requests_total", (("provider", "ge"), ("status", "ok"), ("stream", "false")))] == 1
    assert m[("llm_router_requests_total", (("provider", "oa"), ("status", "ok"), ("stream", "false")))] == 1
    assert m[("llm_router_requests_total", (("provider", ""), ("status", "error"), ("stream", "false")))] == 1
    assert m[("llm_router_rejections_total", (("code", "bad_messages"), ("http_status", "400")))] == 1
    assert m[("llm_router_request_duration_seconds_count", ())] == 3
    assert m[("llm_router_request_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert m[("llm_router_inflight_requests", ())] == 0
    assert m[("llm_router_tokens_total", (("kind", "input"),))] == r1.usage.prompt_tokens + r2.usage.prompt_tokens
    assert m[("llm_router_tokens_total", (("kind", "output"),))] == \
        r1.usage.completion_tokens + r2.usage.completion_tokens
    cost = float(r1.model_extra["x_router"]["cost_usd"]) + float(r2.model_extra["x_router"]["cost_usd"])
    assert m[("llm_router_cost_usd_total", ())] == pytest.approx(cost)
    assert m[("llm_router_breaker_open", (("provider", "ge"),))] == 1
    assert m[("llm_router_breaker_open", (("provider", "oa"),))] == 0
    assert m[("llm_router_traces_written_total", ())] == 3 and m[("llm_router_traces_pending", ())] == 0
    assert m[("llm_router_traces_failing", ())] == 0
    assert m[("llm_router_catalog_routes", ())] == len(stack.router.catalog)
    assert "caller-key" not in text and "SECRET" not in text  # no key ever appears


async def test_a_flow_counts_once_as_a_flow_and_its_nodes_as_calls(stack) -> None:
    import json
    from pathlib import Path

    import unhardcoded.flows as flows_pkg
    flow = json.loads((Path(flows_pkg.__file__).parent / "examples" / "two-drafts.json").read_text())["flow_ir"]
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    nodes = [n for n in r.model_extra["x_router"]["flow_nodes"] if n.get("provider")]
    _, _, m = await scrape(stack)
    assert m[("llm_router_flows_total", (("status", "ok"),))] == 1
    calls = sum(v for (name, _labels), v in m.items() if name == "llm_router_requests_total")
    assert calls == len(nodes) == 3


async def test_a_stream_read_to_its_end_and_one_never_read_are_both_finished(stack) -> None:
    stream = await stack.client.chat.completions.create(model="", messages=MSG, stream=True)
    async for _ in stream:
        pass
    opened = await stack.router.open_stream({"messages": MSG}, wire=True)  # the caller goes away unread
    _, _, before = await scrape(stack)
    assert before[("llm_router_inflight_requests", ())] == 1
    await opened.abandon()
    await opened.abandon()  # once only
    _, _, after = await scrape(stack)
    assert after[("llm_router_inflight_requests", ())] == 0
    assert after[("llm_router_requests_total", (("provider", "ge"), ("status", "ok"), ("stream", "true")))] == 1
    stack.store.flush()
    rec = stack.store.get(opened.run.trace_id)
    assert rec is not None and rec["status"] != "ok"


async def test_metrics_are_behind_the_caller_keys_when_set(tmp_path) -> None:
    s = await start_stack(tmp_path, caller_keys_sha256=frozenset({hashlib.sha256(b"good").hexdigest()}),
                          server="granian")
    try:
        status, _, _ = await scrape(s)
        assert status == 401
        status, _, m = await scrape(s, {"authorization": "Bearer good"})
        assert status == 200 and m[("llm_router_inflight_requests", ())] == 0
        async with aiohttp.ClientSession() as c:
            async with c.get(s.base_url.removesuffix("/v1") + "/healthz") as r:
                assert r.status == 200  # a health check needs no key
    finally:
        await s.close()
