"""``unhardcoded demo``: the whole product on loopback, with no keys and no network.

It starts strict mock providers (OpenAI-compatible, Anthropic Messages,
Gemini — each refusing what the real API refuses), serves the router over real
HTTP with the shipped catalog pointed at those mocks, and makes real calls:
a policy sent as data, a failover, a flow. Then it prints one receipt from the
trace store and replays it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

DEMO_KEY = "demo-key-not-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _get(base: str, path: str, key: str = "caller-key") -> tuple[int, dict[str, Any]]:
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}{path}", headers={"authorization": f"Bearer {key}"}) as r:
            return r.status, await r.json()


async def _post(base: str, body: dict[str, Any], path: str = "/chat/completions", key: str = "caller-key",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST as the caller holding ``key``; the answer's headers go into ``headers`` if given."""
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}{path}", json=body, headers={"authorization": f"Bearer {key}"}) as r:
            if headers is not None:
                headers.update(r.headers)
            return r.status, await r.json()


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(data_dir: str | None = None) -> int:
    import uvicorn

    from .catalog import load_catalog
    from .catalog.loader import DEFAULT_CATALOG, build_catalog, read_document
    from .catalog.prices import default_price_source
    from .config import Keys, Settings
    from .router.engine import Router
    from .runtime.limits import CallerSpec
    from .server import build_app
    from .testing.upstreams import Fail, Upstream
    from .traces.replay import replay_record
    from .traces.sqlite import SQLiteStore
    from .traces.views import receipt, replay_text

    shipped = load_catalog()
    served_ids: dict[str, set[str]] = {"openai": set(), "anthropic": set(), "gemini": set()}
    for c in shipped.candidates():
        served_ids[shipped.providers[c["provider_id"]].wire].add(c["served_model_id"])
    ups = {w: Upstream(w, key=DEMO_KEY, models=ids) for w, ids in served_ids.items()}
    urls = {w: await u.start() for w, u in ups.items()}

    doc = read_document(DEFAULT_CATALOG)
    for p in doc["providers"].values():
        p["base_url"] = urls[p["wire"]]
    catalog = build_catalog(doc, base_dir=DEFAULT_CATALOG.parent, prices=default_price_source(), source="default.toml (demo: mock providers)")
    keys = {p.key_env: DEMO_KEY for p in catalog.providers.values() if p.key_env}
    data = Path(data_dir or tempfile.mkdtemp(prefix="unhardcoded-demo-"))
    # the operator's key (anonymous, unlimited) and one named caller held to an envelope and a rate
    intern = CallerSpec("intern-tools", frozenset({hashlib.sha256(b"intern-key").hexdigest()}),
                        requests_per_minute=1, envelope=["cmp", "price_out", "le", 2])
    settings = Settings(keys=Keys(keys, {}), data_dir=str(data), callers={intern.name: intern},
                        caller_keys_sha256=frozenset({hashlib.sha256(b"caller-key").hexdigest()}))
    store = SQLiteStore(data / "traces.sqlite3", flush_ms=20)
    router = Router(catalog, settings, sink=store)
    app = build_app(settings, router=router)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}/v1"
    failures = 0
    try:
        _say("unhardcoded demo: everything on loopback, no keys, no network")
        _say(f"  providers  strict mocks of OpenAI, Anthropic and Gemini ({', '.join(urls.values())})")
        _say(f"  router     {base}  (catalog: {len(catalog)} routes; traces: {data / 'traces.sqlite3'})")
        _say()

        pred = ["cmp", "bench_intelligence", "ge", 0.5]
        _say(f"1. A policy sent as data with the call: {json.dumps(pred)}")
        status, body = await _post(base, {"model": "", "messages": [{"role": "user", "content": "Say hello."}],
                                          "policy_ir": pred})
        failures += status != 200
        x = body.get("x_router", {})
        _say(f"   answered by {x.get('provider')}/{x.get('model_family')} "
             f"(policy {x.get('policy_id')}, ranked {len(x.get('decision_trace', {}).get('ranked', []))}, "
             f"rejected {len(x.get('decision_trace', {}).get('rejected', []))}, cost ${x.get('cost_usd') or 0:.6f})")
        _say(f"   answer: {body.get('choices', [{}])[0].get('message', {}).get('content', '')!r}")
        _say()

        pick = x.get("served_model_id")
        wire = catalog.providers[x["provider"]].wire if x.get("provider") in catalog.providers else "openai"
        if pick:
            ups[wire].script(pick, Fail(429, "rate limited (scripted by the demo)"))
        _say("2. The same call, but the first pick answers 429: the policy's FailPlan moves on")
        status, body = await _post(base, {"model": "", "messages": [{"role": "user", "content": "Say hello again."}],
                                          "policy_ir": pred})
        failures += status != 200
        x2 = body.get("x_router", {})
        for e in x2.get("decision_trace", {}).get("decision_path", []):
            if e.get("event") == "attempted":
                what = f"{e['error_kind']} ({e.get('http_status')})" if e.get("error_kind") else "answered"
                _say(f"   attempt {e['provider_id']}/{e['model_family']}: {what}")
        _say()

        _say("3. The same router over OpenAI's Responses API (POST /v1/responses)")
        status, body = await _post(base, {"model": "", "input": "Say hello in one word.", "instructions": "Be brief.",
                                          "policy_ir": pred}, "/responses")
        failures += status != 200 or body.get("object") != "response"
        xr = body.get("x_router", {})
        text = "".join(c.get("text", "") for o in body.get("output", []) if o.get("type") == "message"
                       for c in o.get("content", []))
        _say(f"   {body.get('id')} {body.get('status')}: {text!r} from {xr.get('provider')}/{xr.get('model_family')}, "
             f"{body.get('usage', {}).get('total_tokens')} tokens")
        _say()

        _say("4. A flow: two drafts in parallel, then a synthesis (model: flow:two-drafts)")
        status, body = await _post(base, {"model": "flow:two-drafts",
                                          "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
        failures += status != 200
        fx = body.get("x_router", {})
        for n in fx.get("flow_nodes", []):
            _say(f"   node {n['node']:<10} {n.get('provider')}/{n.get('model_family')}  "
                 f"started {n['started_ms']:.0f} ms, took {n['latency_ms']:.0f} ms")
        _say(f"   {fx.get('runs')} billable run(s); flow {fx.get('flow_id')}")
        _say()

        _say("5. A named caller, intern-tools: its envelope keeps it on models with price_out <= 2 USD/Mtok,")
        _say("   whatever policy it sends, and it may make 1 call a minute")
        hello = {"model": "", "messages": [{"role": "user", "content": "Say hello."}],
                 "policy_ir": ["cmp", "context", "ge", 100000]}
        status, body = await _post(base, hello)
        failures += status != 200
        xo = body.get("x_router", {})
        status, body = await _post(base, hello, key="intern-key")
        failures += status != 200
        xi = body.get("x_router", {})
        _say(f"   the same call, {json.dumps(hello['policy_ir'])}: the operator's key gets "
             f"{xo.get('provider')}/{xo.get('model_family')} (price_out {xo.get('price_out')}),")
        _say(f"   intern-tools gets {xi.get('provider')}/{xi.get('model_family')} (price_out {xi.get('price_out')})")
        seen: dict[str, str] = {}
        status, body = await _post(base, hello, key="intern-key", headers=seen)
        failures += status != 429
        _say(f"   its second call: {status} {body.get('error', {}).get('code')}, "
             f"Retry-After {seen.get('Retry-After')} s (GET /x/caller shows its use)")
        _say()

        store.flush()
        rec = store.get(x2.get("trace_id", ""))
        if rec is not None:
            _say(f"6. The receipt of call 2 (unhardcoded trace {rec['trace_id']} --data-dir {data}):")
            _say("   " + receipt(rec).replace("\n", "\n   "))
            _say()
            out = replay_record(rec, store.catalog_snapshot(rec["catalog"]["digest"]))
            _say(f"7. Replayed from the stored record alone (unhardcoded replay {rec['trace_id']} --data-dir {data}):")
            _say("   " + replay_text(out).replace("\n", "\n   "))
            failures += not out["identical"]
            _say()
        else:
            failures += 1

        smart = ["policy", ["meets_req"], ["field", "bench_intelligence"], ["argmax"], ["id"],
                 ["always", {"action": "next_candidate"}]]
        status, body = await _post(base.removesuffix("/v1"), {"policy_ir": smart}, "/x/backtest")
        failures += status != 200
        t = body.get("totals", {})
        _say("8. Before shipping a policy, backtest it over the calls above (POST /x/backtest,")
        _say(f"   unhardcoded backtest '{json.dumps(smart, separators=(',', ':'))}' --data-dir {data}):")
        _say(f"   the highest bench_intelligence first would change {t.get('changed_pick')} of {t.get('decided')} "
             f"pick(s); cost {t.get('actual_cost_usd')} -> {t.get('backtest_cost_usd')} USD for the same tokens")
        _say()

        status, body = await _get(base.removesuffix("/v1"), "/v1/usage?window=1h")
        failures += status != 200
        u = body.get("totals", {})
        _say(f"9. What it all cost (GET /v1/usage?window=1h, unhardcoded usage --window 1h --data-dir {data}):")
        _say(f"   {u.get('requests')} calls, {u.get('errors')} failed; {u.get('cost_usd')} USD over "
             f"{u.get('priced')} priced call(s), {u.get('unpriced')} answered without a price; by provider "
             "(a flow's steps each count at the provider that answered them):")
        for provider, p in list(body.get("by_provider", {}).items())[:4]:
            _say(f"   {provider:<12} {p['requests']:>3} call(s)  {p['tokens_in']:>6} tokens in  {p['tokens_out']:>5} out  "
                 f"{p['cost_usd'] or '-'} USD")
    finally:
        server.should_exit = True
        await task
        for u in ups.values():
            await u.stop()
        store.close()
    _say()
    _say("Next: point the official OpenAI SDK at `unhardcoded serve` with your own keys "
         "(OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ...).")
    return 1 if failures else 0


def main(data_dir: str | None = None) -> int:
    return asyncio.run(run_demo(data_dir))
