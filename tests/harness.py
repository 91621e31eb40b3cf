"""A whole stack on loopback: strict mock providers, the router served over real HTTP
(by uvicorn, or by granian's RSGI interface as ``unhardcoded serve`` ships it), and the
official OpenAI SDK as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import uvicorn

from unhardcoded.catalog import build_catalog
from unhardcoded.config import Keys, Settings
from unhardcoded.router.engine import Router
from unhardcoded.server import build_app
from unhardcoded.testing.upstreams import Upstream
from unhardcoded.traces.sqlite import SQLiteStore

KEYS = {"OA_KEY": "sk-oa-SECRET-0001", "AN_KEY": "sk-ant-SECRET-0002", "GE_KEY": "ge-SECRET-0003"}

NEXT = {"action": "next_candidate"}


def policy(pred: Any = ("meets_req",), scorer: Any = ("zero",), selector: Any = ("ordered",), xform: Any = ("id",),
           failplan: Any = None) -> list:
    j = lambda x: list(x) if isinstance(x, tuple) else x  # noqa: E731
    return ["policy", j(pred), j(scorer), j(selector), j(xform), failplan or ["always", NEXT]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalog_doc(urls: dict[str, str]) -> dict[str, Any]:
    """oa and or2 speak OpenAI's wire (one mock behind both), an Anthropic, ge Gemini."""
    return {
        "fields": {"bench_intelligence": {"sort": "Num", "default": 0},
                   "bench_intelligence_rank": {"sort": "Num", "default": 1e9}},
        "envelope": json.dumps(["and", ["meets_req"], ["not", ["is", "disabled"]]]),
        "providers": {
            "oa": {"wire": "openai", "base_url": urls["openai"], "key_env": "OA_KEY", "tier": "partner"},
            "or2": {"wire": "openai", "base_url": urls["openai"], "key_env": "OR_KEY", "tier": "fallback"},
            "an": {"wire": "anthropic", "base_url": urls["anthropic"], "key_env": "AN_KEY", "tier": "partner"},
            "ge": {"wire": "gemini", "base_url": urls["gemini"], "key_env": "GE_KEY", "tier": "partner"},
        },
        "models": {
            "gpt-5.4-mini": {"supports_tools": True, "supports_json_mode": True, "context": 400000,
                             "fields": {"bench_intelligence": 0.5, "bench_intelligence_rank": 3},
                             "routes": [{"provider": "oa", "id": "gpt-5.4-mini", "price_in": 0.75, "price_out": 4.5},
                                        {"provider": "or2", "id": "gpt-5.4-mini", "price_in": 0.8, "price_out": 4.6}]},
            "gpt-5.5": {"supports_tools": True, "supports_json_mode": True, "context": 400000,
                        "fields": {"bench_intelligence": 0.6, "bench_intelligence_rank": 1},
                        "routes": [{"provider": "oa", "id": "gpt-5.5", "price_in": 5, "price_out": 30}]},
            "claude-haiku-4-5": {"supports_tools": True, "context": 200000,
                                 "fields": {"bench_intelligence": 0.45, "bench_intelligence_rank": 4},
                                 "routes": [{"provider": "an", "id": "claude-haiku-4-5", "price_in": 1, "price_out": 5,
                                             "price_cached_in": 0.1}]},
            "gemini-3-flash-preview": {"supports_tools": True, "supports_json_mode": True, "context": 1000000,
                                       "fields": {"bench_intelligence": 0.55, "bench_intelligence_rank": 2},
                                       "routes": [{"provider": "ge", "id": "gemini-3-flash-preview",
                                                   "price_in": 0.5, "price_out": 3}]},
        },
        "profiles": {"default": {"policy": json.dumps(policy(
            ["and", ["meets_req"], ["not", ["is", "disabled"]]],
            ["neg", ["normalize", ["field", "price_in"]]], ["argmax"]))}},
    }


@dataclass
class Stack:
    ups: dict[str, Upstream]
    router: Router
    store: SQLiteStore
    base_url: str
    client: openai.AsyncOpenAI
    server: Any                        # uvicorn.Server or ShippedServer (granian, embedded)
    task: asyncio.Task
    settings: Settings
    app: Any

    @property
    def openai(self) -> Upstream:
        return self.ups["openai"]

    @property
    def anthropic(self) -> Upstream:
        return self.ups["anthropic"]

    @property
    def gemini(self) -> Upstream:
        return self.ups["gemini"]

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        import aiohttp
        async with aiohttp.ClientSession() as s:
            data = raw if raw is not None else json.dumps(body).encode()
            async with s.post(self.base_url.removesuffix("/v1") + path, data=data,
                              headers={"content-type": "application/json", **(headers or {})}) as r:
                text = await r.read()
                try:
                    return r.status, json.loads(text)
                except ValueError:
                    return r.status, text

    async def get(self, path: str, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        import aiohttp
        async with aiohttp.ClientSession() as s:
            async with s.get(self.base_url.removesuffix("/v1") + path, headers=headers or {}) as r:
                return r.status, json.loads(await r.read())

    async def close(self) -> None:
        await self.client.close()
        if isinstance(self.server, uvicorn.Server):
            self.server.should_exit = True
        else:  # granian, as `unhardcoded serve` runs it: stop, then drain the router
            self.server.stop()
        try:
            # bounded: a server that does not stop fails the test with what it was waiting on,
            # instead of hanging the whole run
            await asyncio.wait_for(asyncio.shield(self.task), 60)
            if getattr(self.server, "cut", 0):
                warnings.warn(f"{self.server.cut} call(s) still in flight were cut off after "
                              f"{self.settings.shutdown_grace_s} s of shutdown grace", stacklevel=1)
        except asyncio.TimeoutError:
            waiting = "\n".join(f"{t.get_name()}: {t.get_coro()!r} at {t.get_stack(limit=3)!r}"
                                 for t in asyncio.all_tasks() if not t.done())
            self.task.cancel()
            raise AssertionError(f"the {type(self.server).__name__} server did not stop in 60 s; "
                                 f"tasks still running:\n{waiting}") from None
        finally:
            if not isinstance(self.server, uvicorn.Server):
                await self.router.close()
            for up in self.ups.values():
                await up.stop()


async def start_stack(tmp_path: Path, *, edit: Any = None, keys: dict[str, str] | None = None,
                      server: str = "uvicorn", store: Any = None, **settings_kw: Any) -> Stack:
    """``store``: the trace store to serve with (default: a new SQLite store in ``tmp_path``)."""
    ups = {kind: Upstream(kind, key=(keys or KEYS)[env] if env in (keys or KEYS) else None)
           for kind, env in (("openai", "OA_KEY"), ("anthropic", "AN_KEY"), ("gemini", "GE_KEY"))}
    urls = {kind: await up.start() for kind, up in ups.items()}
    # or2 shares the openai mock, which accepts one key: or2 presents the same one.
    doc = catalog_doc(urls)
    if edit is not None:
        edit(doc)
    catalog = build_catalog(doc)
    key_values = dict(keys or KEYS)
    key_values.setdefault("OR_KEY", key_values.get("OA_KEY", ""))
    settings_kw.setdefault("shutdown_grace_s", 10)
    settings = Settings(keys=Keys(key_values, {}), data_dir=str(tmp_path), **settings_kw)
    if store is None:
        store = SQLiteStore(tmp_path / "traces.sqlite3", capture_content=settings.capture_content, flush_ms=20)
    router = Router(catalog, settings, sink=store)
    app = build_app(settings, router=router)
    port = free_port()
    if server == "granian":
        from unhardcoded.server import ShippedServer
        from unhardcoded.server.rsgi import RSGIApp
        srv: Any = ShippedServer(RSGIApp(app), settings, port=port)
        task = asyncio.create_task(srv.serve())
        for _ in range(500):
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.01)
    else:
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on",
                                                 timeout_graceful_shutdown=settings.shutdown_grace_s))
        task = asyncio.create_task(srv.serve())
        for _ in range(200):
            if srv.started:
                break
            await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.AsyncOpenAI(base_url=base, api_key="caller-key", max_retries=0, timeout=30)
    return Stack(ups, router, store, base, client, srv, task, settings, app)
