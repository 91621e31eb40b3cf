"""Traces: a record for every router path, what is (never) stored, history, retention, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import aiohttp
import openai
import pytest

from unhardcoded.testing.upstreams import Delay, Fail, Reply, Stall, Upstream, run_in_thread
from unhardcoded.traces.replay import replay_record
from unhardcoded.traces.sqlite import SQLiteStore

from .harness import KEYS, NEXT, free_port, policy, start_stack

MSG = [{"role": "user", "content": "The secret plan is ZEBRA-7."}]


def record(stack, trace_id: str) -> dict:
    stack.store.flush()
    rec = stack.store.get(trace_id)
    assert rec is not None
    assert rec["schema"] == "unhardcoded.trace/v1"
    return rec


def latest(stack) -> dict:
    stack.store.flush()
    rows, _ = stack.store.list(limit=1)
    return stack.store.get(rows[0]["trace_id"])


def events(rec: dict) -> list[tuple]:
    return [(e["event"], e.get("provider_id"), e.get("error_kind")) for e in rec["path"]]


async def test_success(stack) -> None:
    r = await stack.client.chat.completions.create(model="", messages=MSG)
    rec = record(stack, r.model_extra["x_router"]["trace_id"])
    assert rec["status"] == "ok" and rec["kind"] == "chat" and rec["stream"] is False
    assert rec["answer"]["provider_id"] == "ge"
    assert rec["usage"]["tokens_in"] == r.usage.prompt_tokens and rec["usage"]["tokens_out"] == r.usage.completion_tokens
    assert rec["cost"]["cost_basis"] == "computed" and float(rec["cost"]["cost_usd"]) > 0
    assert rec["latency"]["total_ms"] > 0
    assert rec["policy"]["effective"]["identity"] == r.model_extra["x_router"]["policy_identity"]
    assert rec["decision"]["ranked"][0]["provider_id"] == "ge"
    assert rec["inputs"]["state"] == {"breakers": {}, "disabled": {}, "credits": {}, "ema": {}}
    assert rec["catalog"]["digest"] == stack.router.catalog.digest
    assert stack.store.catalog_snapshot(rec["catalog"]["digest"]) is not None


async def test_retry_and_failover(stack) -> None:
    fp = ["override", ["always", NEXT], "server_error", {"action": "retry_same", "attempts": 1}]
    pol = policy(["top"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"], failplan=fp)
    stack.gemini.script("gemini-3-flash-preview", Fail(500), Fail(500))
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": pol})
    rec = record(stack, r.model_extra["x_router"]["trace_id"])
    assert events(rec) == [("attempted", "ge", "server_error"), ("retry_scheduled", "ge", None),
                           ("attempted", "ge", "server_error"), ("attempted", "oa", None)]
    assert rec["path"][0]["http_status"] == 500
    assert rec["answer"]["provider_id"] == "oa"


async def test_all_failed(stack) -> None:
    stack.openai.script("gpt-5.5", Fail(500))
    with pytest.raises(openai.APIStatusError):
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": policy(["family_eq", "gpt-5.5"])})
    rec = latest(stack)
    assert rec["status"] == "error" and rec["answer"] is None
    assert rec["error"]["kind"] == "exhausted: server_error" and rec["error"]["status"] == 502
    assert rec["cost"]["cost_usd"] is None


async def test_abort(stack) -> None:
    fp = ["override", ["always", NEXT], "rate_limit", {"action": "abort"}]
    stack.openai.script("gpt-5.5", Fail(429))
    with pytest.raises(openai.RateLimitError):
        await stack.client.chat.completions.create(
            model="", messages=MSG, extra_body={"policy_ir": policy(["top"], ["field", "bench_intelligence"], ["argmax"], failplan=fp)})
    rec = latest(stack)
    assert rec["status"] == "aborted" and events(rec) == [("attempted", "oa", "rate_limit")]


async def test_no_candidates(stack) -> None:
    with pytest.raises(openai.APIStatusError):
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": ["bot"]})
    rec = latest(stack)
    assert rec["status"] == "error" and rec["error"]["kind"] == "no_candidates" and rec["path"] == []
    assert all(x["reason"] == "bot" for x in rec["decision"]["rejected"])


async def test_streaming(stack) -> None:
    stream = await stack.client.chat.completions.create(model="", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    rec = record(stack, chunks[-1].model_extra["x_router"]["trace_id"])
    assert rec["status"] == "ok" and rec["stream"] is True
    assert rec["latency"]["ttft_ms"] is not None and rec["latency"]["ttft_ms"] <= rec["latency"]["total_ms"]
    assert rec["usage"]["tokens_out"] == chunks[-1].usage.completion_tokens


async def until_received(upstream, task, seen: int) -> None:
    """Wait until the upstream holds the request, so the client leaves mid-call (not before the call)."""
    for _ in range(1000):
        if len(upstream.requests) > seen or task.done():
            break
        await asyncio.sleep(0.01)
    assert len(upstream.requests) > seen, "the request never reached the upstream"


async def test_client_disconnect_mid_stream(stack) -> None:
    stack.gemini.script("gemini-3-flash-preview", Delay(0))
    async with aiohttp.ClientSession() as s:
        stack.gemini.script("gemini-3-flash-preview", Stall())
        seen = len(stack.gemini.requests)
        task = asyncio.ensure_future(s.post(stack.base_url + "/chat/completions",
                                            json={"model": "", "messages": MSG, "stream": True,
                                                  "policy_ir": policy(["family_eq", "gemini-3-flash-preview"])}))
        await until_received(stack.gemini, task, seen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        stack.store.flush()
        rows, _ = stack.store.list(status="client_disconnected")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows, "a client that went away still leaves a trace"
    rec = stack.store.get(rows[0]["trace_id"])
    assert rec["path"][0]["provider_id"] == "ge"


async def test_client_disconnect_non_stream(stack) -> None:
    stack.openai.script("gpt-5.5", Stall())
    seen = len(stack.openai.requests)
    async with aiohttp.ClientSession() as s:
        task = asyncio.ensure_future(s.post(stack.base_url + "/chat/completions",
                                            json={"model": "", "messages": MSG,
                                                  "policy_ir": policy(["family_eq", "gpt-5.5"])}))
        await until_received(stack.openai, task, seen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        stack.store.flush()
        rows, _ = stack.store.list(status="client_disconnected")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows and rows[0]["route"] == ""


async def test_no_message_content_is_stored_while_capture_is_off(stack) -> None:
    r = await stack.client.chat.completions.create(model="", messages=MSG)
    stack.store.flush()
    blob = sqlite3.connect(stack.store.path).execute("SELECT group_concat(record, '') FROM traces").fetchone()[0]
    assert "ZEBRA-7" not in blob
    assert r.choices[0].message.content not in blob
    assert "content" not in record(stack, r.model_extra["x_router"]["trace_id"])


async def test_content_is_stored_when_the_operator_turns_capture_on(tmp_path) -> None:
    s = await start_stack(tmp_path, capture_content=True)
    try:
        r = await s.client.chat.completions.create(model="", messages=MSG)
        rec = record(s, r.model_extra["x_router"]["trace_id"])
        assert rec["content"]["messages"] == MSG
        assert rec["content"]["response"][0]["content"] == r.choices[0].message.content
    finally:
        await s.close()


async def test_history_filters_and_cursor_pagination(stack) -> None:
    for i in range(5):
        await stack.client.chat.completions.create(model="", messages=[{"role": "user", "content": f"n{i}"}])
    await stack.client.chat.completions.create(model="family:claude-haiku-4-5", messages=MSG)
    stack.store.flush()
    status, page1 = await stack.get("/x/traces?limit=4")
    assert status == 200 and len(page1["data"]) == 4 and page1["next_cursor"]
    status, page2 = await stack.get(f"/x/traces?limit=4&cursor={page1['next_cursor']}")
    ids = [r["trace_id"] for r in page1["data"] + page2["data"]]
    assert len(ids) == len(set(ids)) == 6
    starts = [r["started_at_ms"] for r in page1["data"] + page2["data"]]
    assert starts == sorted(starts, reverse=True)
    _, by_model = await stack.get("/x/traces?model=claude-haiku-4-5")
    assert [r["model_family"] for r in by_model["data"]] == ["claude-haiku-4-5"]
    _, by_route = await stack.get("/x/traces?route=family:claude-haiku-4-5")
    assert len(by_route["data"]) == 1
    _, by_provider = await stack.get("/x/traces?provider=ge")
    assert len(by_provider["data"]) == 5
    pol = page1["data"][0]["policy_identity"]
    _, by_policy = await stack.get(f"/x/traces?policy=pol_{pol[:6]}")
    assert len(by_policy["data"]) >= 1 and all(r["policy_identity"] == pol for r in by_policy["data"])
    now = int(time.time() * 1000)
    _, future = await stack.get(f"/x/traces?since={now + 60000}")
    assert future["data"] == []
    status, bad = await stack.get("/x/traces?cursor=@@@")
    assert status == 400 and bad["error"]["code"] == "bad_cursor"
    status, one = await stack.get(f"/x/traces/{ids[0]}")
    assert status == 200 and one["trace_id"] == ids[0]
    status, missing = await stack.get("/x/traces/tr_nope")
    assert status == 404 and missing["error"]["code"] == "trace_not_found"


async def test_replay_endpoint_and_against_current(stack) -> None:
    r = await stack.client.chat.completions.create(model="", messages=MSG)
    tid = r.model_extra["x_router"]["trace_id"]
    stack.store.flush()
    status, same = await stack.post("/x/replay", {"trace_id": tid})
    assert status == 200 and same["identical"] is True
    # today ge is disabled: the stored policy now picks something else
    stack.router.runtime.disable("ge", "auth_error")
    status, now = await stack.post("/x/replay", {"trace_id": tid, "against": "current"})
    assert status == 200
    assert now["pick_before"]["provider"] == "ge" and now["pick_after"]["provider"] == "oa"
    assert any(c["provider"] == "ge" for c in now["changes"])
    assert now["cost_after_usd"] is not None and now["cost_delta_usd"] is not None


async def test_calls_apart_record_their_own_observations_and_replay_to_their_decision(stack) -> None:
    # light traffic: each call comes after the stamp window, so the route that served the call
    # before is re-stamped with its new latency; a policy that scores by price keeps its plan
    # (it reads no observation), and each record must still carry the observations its call saw
    price = ["policy", ["top"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"], ["id"],
             ["always", {"action": "next_candidate"}]]
    wait = stack.router.runtime.config.stamp_refresh_ms / 1000 + 0.02
    ids, picks = [], []
    for _ in range(3):
        r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": price})
        ids.append(r.model_extra["x_router"]["trace_id"])
        picks.append((r.model_extra["x_router"]["provider"], r.model_extra["x_router"]["model_family"]))
        await asyncio.sleep(wait)
    recs = [record(stack, t) for t in ids]
    served = "|".join(picks[0])
    stamps = [rec["inputs"]["pool"]["stamps"] for rec in recs]
    assert served not in stamps[0]  # nothing observed before the first call
    assert stamps[1][served]["success_rate"] == 1.0 and stamps[2][served]["success_rate"] == 1.0
    assert stamps[1][served]["latency_ms"] != stamps[2][served]["latency_ms"]  # a mean of one, then of two
    assert len({rec["decision"]["digest"] for rec in recs}) == 1 and len(set(picks)) == 1
    for t in ids:
        status, same = await stack.post("/x/replay", {"trace_id": t})
        assert status == 200 and same["identical"] is True


def test_retention_purges_old_records_in_batches(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3", retention_days=None)
    conn = sqlite3.connect(store.path)
    now = int(time.time() * 1000)
    rows = [(f"tr_{i:04d}", now - (40 if i % 2 else 1) * 86_400_000, "ok", "{}") for i in range(2500)]
    conn.executemany("INSERT INTO traces (trace_id, started_at_ms, status, record) VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    assert store.purge(older_than_ms=now - 30 * 86_400_000, batch=300) == 1250
    assert store.count() == 1250


@pytest.mark.parametrize("days, kept", [(0, 2), (30, 1)])
def test_a_retention_of_zero_days_keeps_every_record(tmp_path, days: int, kept: int) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3", retention_days=days)
    conn = sqlite3.connect(store.path)
    now = int(time.time() * 1000)
    conn.executemany("INSERT INTO traces (trace_id, started_at_ms, status, record) VALUES (?, ?, ?, ?)",
                     [("tr_old", now - 400 * 86_400_000, "ok", "{}"), ("tr_new", now, "ok", "{}")])
    conn.commit()
    store._maybe_purge(conn)  # what the writer runs between batches
    conn.commit()
    assert store.count() == kept and store.get("tr_new") is not None


def _writer_gives_up_after(monkeypatch, busy_ms: int) -> None:
    """The store's connections wait ``busy_ms`` for a lock instead of 30 s (so a test can see a
    commit fail on a database another process holds)."""
    import unhardcoded.traces.sqlite as mod
    real = mod._connect

    def connect(path: str) -> sqlite3.Connection:
        conn = real(path)
        conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        return conn
    monkeypatch.setattr(mod, "_connect", connect)


def _rec(i: int) -> dict:
    return {"schema": "unhardcoded.trace/v1", "trace_id": f"tr_{i:04d}", "kind": "chat",
            "started_at_ms": int(time.time() * 1000), "status": "ok"}


def _locked_store(tmp_path, monkeypatch, **kw) -> tuple[SQLiteStore, sqlite3.Connection]:
    """A store whose database another connection holds the write lock of (COMMIT on it lets go)."""
    _writer_gives_up_after(monkeypatch, 20)
    store = SQLiteStore(tmp_path / "t.sqlite3", **kw)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return store, other


def test_a_store_that_cannot_commit_keeps_the_runs_and_writes_them_once_it_can(tmp_path, monkeypatch) -> None:
    """Another process holds the database's write lock (a backup, the sqlite3 shell): commits
    fail. The runs are kept, the failure is visible, and once the lock is gone every run is
    written, none twice. (Before: each failed batch was dropped, counted and never logged.)"""
    store, other = _locked_store(tmp_path, monkeypatch, flush_ms=10)
    for i in range(10):
        store.submit_record(_rec(i))
    assert store.flush(timeout=1.0) is False  # nothing can be committed while the lock is held
    assert store.failing_since_ms is not None and "locked" in store.last_error
    assert store.pending == 10 and store.dropped == 0 and store.errors >= 1
    store.submit_record(_rec(10))
    other.execute("COMMIT")
    assert store.flush(timeout=30)
    assert store.failing_since_ms is None and store.pending == 0 and store.dropped == 0
    assert store.count() == 11 and store.written == 11
    assert [r["trace_id"] for r in store.list(limit=20)[0]] == sorted((f"tr_{i:04d}" for i in range(11)), reverse=True)
    store.close()


def test_while_the_store_cannot_commit_the_oldest_runs_are_shed_and_no_submit_waits(tmp_path, monkeypatch) -> None:
    """A store that cannot write keeps at most max_pending runs: a submit past that drops the
    oldest kept batch instead of waiting for room that is not coming."""
    store, other = _locked_store(tmp_path, monkeypatch, flush_ms=10, batch_max=4, max_pending=8)
    for i in range(40):
        store.submit_record(_rec(i))
    assert store.failing_since_ms is not None
    assert store.dropped >= 32 - 4 and store.pending <= 8 + 4
    other.execute("COMMIT")
    assert store.flush(timeout=30)
    kept = {r["trace_id"] for r in store.list(limit=100)[0]}
    assert len(kept) + store.dropped == 40 and store.pending == 0
    assert "tr_0039" in kept and "tr_0000" not in kept  # the newest kept, the oldest shed
    store.close()


def test_closing_a_store_that_cannot_commit_ends_and_counts_what_is_lost(tmp_path, monkeypatch) -> None:
    store, other = _locked_store(tmp_path, monkeypatch, flush_ms=10)
    for i in range(5):
        store.submit_record(_rec(i))
    store.flush(timeout=0.5)
    store.close()
    assert store.dropped == 5 and store.pending == 0
    other.execute("COMMIT")
    assert store.count() == 0


async def test_healthz_says_when_the_trace_store_cannot_commit(tmp_path, monkeypatch) -> None:
    _writer_gives_up_after(monkeypatch, 20)
    s = await start_stack(tmp_path, server="granian")
    other = sqlite3.connect(s.store.path, isolation_level=None)
    try:
        _, healthy = await s.get("/healthz")
        assert healthy["traces_failing_since_ms"] is None and healthy["traces_dropped"] == 0
        other.execute("BEGIN IMMEDIATE")
        r = await s.client.chat.completions.create(model="", messages=MSG)  # routing goes on
        for _ in range(200):
            _, h = await s.get("/healthz")
            if h["traces_failing_since_ms"] is not None:
                break
            await asyncio.sleep(0.02)
        assert h["traces_pending"] == 1 and "locked" in h["traces_error"]
        other.execute("COMMIT")
        await asyncio.to_thread(s.store.flush, 30)
        _, h = await s.get("/healthz")
        assert h["traces_failing_since_ms"] is None and "traces_error" not in h
        assert s.store.get(r.model_extra["x_router"]["trace_id"]) is not None
    finally:
        other.close()
        await s.close()


def test_the_cli_lists_and_prints_a_receipt(tmp_path) -> None:
    from unhardcoded.cli import main
    import contextlib
    import io

    async def make() -> str:
        s = await start_stack(tmp_path)
        try:
            s.gemini.script("gemini-3-flash-preview", Fail(429))
            r = await s.client.chat.completions.create(model="", messages=MSG)
            s.store.flush()
            return r.model_extra["x_router"]["trace_id"]
        finally:
            await s.close()
    tid = asyncio.run(make())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["traces", "--data-dir", str(tmp_path)]) == 0
        assert main(["trace", tid, "--data-dir", str(tmp_path)]) == 0
        assert main(["replay", tid, "--data-dir", str(tmp_path)]) == 0
    text = out.getvalue()
    assert tid in text
    assert "answered   oa / gpt-5.4-mini" in text
    assert "1. ge/gemini-3-flash-preview attempt 1: rate_limit (429)" in text
    assert f"replay {tid}: identical" in text


CRASH_CATALOG = """
version = 1
[providers.oa]
wire = "openai"
base_url = "{url}"
key_env = "OA_KEY"
[models."gpt-5.5"]
routes = [{{ provider = "oa", id = "gpt-5.5", price_in = 1, price_out = 2 }}]
[profiles.default]
policy = '["policy", ["meets_req"], ["zero"], ["argmax"], ["id"], ["always", {{"action": "next_candidate"}}]]'
"""


def _serve_under_load(tmp_path, seconds: float, stop_signal: int, extra: tuple[str, ...] = ()) -> int:
    """Run `unhardcoded serve` in its own process group, load it, stop it with a signal; return the answers."""
    with run_in_thread(Upstream("openai", key=KEYS["OA_KEY"])) as ups:
        cat = tmp_path / "catalog.toml"
        cat.write_text(CRASH_CATALOG.format(url=ups["openai"].base_url))
        port = free_port()
        env = {**os.environ, "OA_KEY": KEYS["OA_KEY"]}
        proc = subprocess.Popen([sys.executable, "-m", "unhardcoded.cli", "serve", "--catalog", str(cat),
                                 "--port", str(port), "--data-dir", str(tmp_path / "data"), *extra],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            done = asyncio.run(_load(f"http://127.0.0.1:{port}", seconds=seconds))
            if stop_signal == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)  # the server and its worker, at once
                proc.wait(timeout=10)
            else:
                proc.send_signal(stop_signal)
                # the server shuts down gracefully, then may re-raise the signal it caught
                assert proc.wait(timeout=30) in (0, -stop_signal)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return done


def test_kill_9_under_load_loses_at_most_max_pending(tmp_path) -> None:
    """A crash can lose only what the writer had not committed; never a torn record."""
    done = _serve_under_load(tmp_path, 2.0, signal.SIGKILL)
    conn = sqlite3.connect(tmp_path / "data" / "traces.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = conn.execute("SELECT record FROM traces").fetchall()
    for (raw,) in stored:
        rec = json.loads(raw)  # every stored record is whole
        # (a plan's first record holds its decision's digest; the records after it, their shared part's)
        assert rec["status"] == "ok" and (rec.get("decision") or rec["shared"])["digest"]
    lost = done - len(stored)
    assert done > 50
    # what a crash can lose is bounded by the writer's max_pending (2048 runs)
    assert 0 <= lost <= 2048, (done, len(stored))


async def _load(base: str, seconds: float) -> int:
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/healthz") as r:
                    if r.status == 200:
                        break
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    done = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with s.post(base + "/v1/chat/completions", json={"messages": MSG}) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1
        await asyncio.gather(*[worker() for _ in range(8)])
    return done


def test_a_clean_shutdown_loses_no_trace(tmp_path) -> None:
    done = _serve_under_load(tmp_path, 1.0, signal.SIGTERM)
    conn = sqlite3.connect(tmp_path / "data" / "traces.sqlite3")
    assert done > 20
    assert conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == done


_NOW_MS = int(time.time() * 1000)


def _bare_record(i: int) -> dict:  # recent: the retention purge must not take it
    return {"schema": "unhardcoded.trace/v1", "trace_id": f"tr_{i:032x}", "kind": "chat", "started_at_ms": _NOW_MS + i,
            "status": "ok", "path": [], "answer": None, "usage": {}, "cost": {}, "latency": {}, "error": None}


async def test_in_a_loop_a_record_is_built_after_the_step_that_finished_it(tmp_path) -> None:
    """submit() only appends: the record is built by a callback once the current step (which
    goes on to write the response) has yielded, and committed by the writer thread."""
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=10_000)  # the interval never elapses here
    try:
        store.submit_record(_bare_record(1))
        store.submit_record(_bare_record(2))
        assert len(store._inbox) == 2 and store._batch.items == 0   # nothing built on the request's step
        await asyncio.sleep(0)                                        # the loop turns once
        assert len(store._inbox) == 0 and store._batch.items == 2    # built together, not yet committed
        assert store.pending == 2 and store.written == 0
        assert store.flush(5)                                         # a flush does not wait for the interval
        assert store.written == 2 and store.pending == 0
        assert store.get(_bare_record(2)["trace_id"])["started_at_ms"] == _NOW_MS + 2
    finally:
        store.close()


def test_outside_a_loop_submit_builds_at_once(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=10_000)
    try:
        store.submit_record(_bare_record(7))
        assert len(store._inbox) == 0 and store._batch.items == 1
        assert store.flush(5) and store.written == 1
    finally:
        store.close()


async def test_backpressure_in_a_loop_that_never_yields_does_not_deadlock(tmp_path) -> None:
    """When max_pending runs wait, submit builds what is in the inbox itself and waits for the
    writer: a loop that submits without yielding (so the build callback cannot run) still gets
    every record stored, and never more than max_pending are exposed at once."""
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=10_000, max_pending=4)
    try:
        t0 = time.monotonic()
        seen = 0
        for i in range(30):
            store.submit_record(_bare_record(i))
            seen = max(seen, store.pending)
        assert time.monotonic() - t0 < 10  # never the 30 s backstop
        assert seen <= 4
        assert store.flush(5)
        assert store.written == 30
    finally:
        store.close()


def test_a_batch_commits_early_when_batch_max_records_are_built(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=60_000, batch_max=5)
    try:
        for i in range(5):
            store.submit_record(_bare_record(i))
        deadline = time.monotonic() + 5
        while store.written < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.written == 5  # long before the 60 s interval
    finally:
        store.close()


def _keep_runs(s) -> dict:
    """Every run the router hands to the store from now on, by trace id (and still stored)."""
    runs = {}
    submit = s.store.submit

    def keep(run):
        runs[run.trace_id] = run
        submit(run)

    s.router.sink.submit = keep  # type: ignore[method-assign]
    return runs


@pytest.mark.parametrize("capture", [False, True])
async def test_the_fast_stored_form_equals_the_record_built_whole(tmp_path, capture) -> None:
    """The store writes a routed call from its plan's shared part plus the run's own fields
    (traces/record.py ``stored_form``); read back, that is exactly ``build_record`` of the run,
    and its summary row is ``summary_row`` of that record. Many runs of one plan share the part:
    it must carry nothing of another run."""
    from unhardcoded.traces.record import build_record, summary_row
    from unhardcoded.traces.sqlite import _COLUMNS

    s = await start_stack(tmp_path, capture_content=capture)
    runs = _keep_runs(s)
    try:
        fp = ["override", ["always", NEXT], "server_error", {"action": "retry_same", "attempts": 1}]
        failover = policy(["top"], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"], failplan=fp)
        s.gemini.script("gemini-3-flash-preview", Fail(500), Fail(500))
        await s.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": failover})
        for _ in range(3):  # one plan, several runs
            await s.client.chat.completions.create(model="", messages=MSG)
        for _ in range(2):  # the same plan, runs in a session
            await s.client.chat.completions.create(model="", messages=MSG, extra_body={"session": "agent-7"})
        await s.client.chat.completions.create(model="profile:default", messages=MSG, seed=7,
                                               extra_body={"requirements": {"min_context": 1000}})
        await s.client.chat.completions.create(
            model="", messages=MSG, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        stream = await s.client.chat.completions.create(model="", messages=MSG, stream=True)
        async for _chunk in stream:
            pass
        with pytest.raises(openai.APIStatusError):
            await s.client.chat.completions.create(model="", messages=MSG,
                                                   extra_body={"policy_ir": ["cmp", "price_in", "lt", 0]})
        s.store.flush()
        assert len(runs) == 10
        rows = {r["trace_id"]: r for r in s.store.list(limit=50)[0]}
        for tid, run in runs.items():
            whole = json.loads(json.dumps(build_record(run, run.prepared.catalog, capture_content=capture)))
            assert s.store.get(tid) == whole, tid
            assert rows[tid] == {c: summary_row(whole)[c] for c in _COLUMNS}, tid
        assert any(rec["status"] == "error" for rec in (s.store.get(t) for t in runs))
    finally:
        await s.close()


async def test_a_session_groups_calls_across_endpoints_and_adds_them_up(stack) -> None:
    """A session names calls that belong together (an agent's run, a user's conversation): by
    the body's `session` or, for clients that cannot add a field, the X-Unhardcoded-Session
    header (the body wins). Stored calls are listed by it and added up by it."""
    import urllib.parse
    hdr = {"X-Unhardcoded-Session": "agent 7/b"}
    r1 = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"session": "agent 7/b"})
    r2 = await stack.client.chat.completions.create(model="", messages=MSG, extra_headers=hdr)
    stream = await stack.client.chat.completions.create(model="", messages=MSG, stream=True, extra_headers=hdr,
                                                        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    r4 = await stack.client.responses.create(model="", input="Hi", extra_headers=hdr)
    flow = await stack.client.chat.completions.create(model="flow:two-drafts", messages=MSG, extra_headers=hdr)
    other = await stack.client.chat.completions.create(model="", messages=MSG, extra_headers=hdr,
                                                       extra_body={"session": "other"})
    alone = await stack.client.chat.completions.create(model="", messages=MSG)  # no session
    # every answer tells the session's running totals, itself included (x_router.session_acc)
    accs = [x.model_extra["x_router"]["session_acc"] for x in (r1, r2, chunks[-1], r4, flow)]
    assert [a["calls"] for a in accs] == [1, 2, 3, 4, 5]
    assert accs[1]["tokens_in"] == accs[0]["tokens_in"] + r2.usage.prompt_tokens
    assert accs[2]["tokens_out"] == accs[1]["tokens_out"] + chunks[-1].usage.completion_tokens
    assert other.model_extra["x_router"]["session_acc"]["calls"] == 1
    assert "session_acc" not in alone.model_extra["x_router"]
    stack.store.flush()
    name = urllib.parse.quote("agent 7/b", safe="")
    status, listed = await stack.get(f"/x/traces?session={name}")
    assert status == 200 and len(listed["data"]) == 5 and {r["session"] for r in listed["data"]} == {"agent 7/b"}
    ids = {r["trace_id"] for r in listed["data"]}
    assert {r1.model_extra["x_router"]["trace_id"], r2.model_extra["x_router"]["trace_id"],
            r4.model_extra["x_router"]["trace_id"], flow.model_extra["x_router"]["trace_id"]} <= ids
    assert other.model_extra["x_router"]["trace_id"] not in ids  # the body's session won over the header
    status, flows = await stack.get(f"/x/traces?session={name}&kind=flow")
    assert status == 200 and [r["trace_id"] for r in flows["data"]] == [flow.model_extra["x_router"]["trace_id"]]
    assert stack.store.get(flow.model_extra["x_router"]["trace_id"])["session"] == "agent 7/b"
    status, totals = await stack.get(f"/x/sessions/{name}")
    assert status == 200 and totals["calls"] == 5 and totals["by_status"] == {"ok": 5}
    recs = [stack.store.get(t) for t in ids]
    assert totals["tokens_in"] == sum(r["usage"]["tokens_in"] for r in recs)
    assert float(totals["cost_usd"]) == pytest.approx(sum(float(r["cost"]["cost_usd"]) for r in recs))
    assert {k: totals[k] for k in ("calls", "tokens_in", "tokens_out", "tokens_cached")} == \
        {k: accs[-1][k] for k in ("calls", "tokens_in", "tokens_out", "tokens_cached")}
    assert accs[-1]["cost_usd"] == pytest.approx(float(totals["cost_usd"]))
    import contextlib
    import io

    from unhardcoded.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["traces", "--data-dir", stack.settings.data_dir, "--session", "agent 7/b", "--json"]) == 0
    assert {r["trace_id"] for r in json.loads(out.getvalue())["data"]} == ids
    status, missing = await stack.get("/x/sessions/nobody")
    assert status == 404 and missing["error"]["code"] == "session_not_found"
    assert "session" not in stack.store.get(stack.store.list(limit=1)[0][0]["trace_id"])  # none: nothing written


async def test_a_session_s_totals_carry_over_a_restart(tmp_path) -> None:
    """The first call of a session a new process sees starts from what the store holds."""
    s = await start_stack(tmp_path)
    try:
        for _ in range(2):
            r = await s.client.chat.completions.create(model="", messages=MSG, extra_body={"session": "long"})
        before = r.model_extra["x_router"]["session_acc"]
        assert before["calls"] == 2
    finally:
        await s.close()
    s = await start_stack(tmp_path)
    try:
        r = await s.client.chat.completions.create(model="", messages=MSG, extra_body={"session": "long"})
        acc = r.model_extra["x_router"]["session_acc"]
        assert acc["calls"] == 3 and acc["tokens_in"] == before["tokens_in"] + r.usage.prompt_tokens
        assert acc["cost_usd"] == pytest.approx(before["cost_usd"] + r.model_extra["x_router"]["cost_usd"])
    finally:
        await s.close()


@pytest.mark.parametrize("body, headers", [
    ({"session": 7}, {}), ({"session": ""}, {}), ({"session": "x" * 257}, {}),
    ({}, {"X-Unhardcoded-Session": "x" * 257}),
])
async def test_a_malformed_session_is_a_400(stack, body, headers) -> None:
    status, out = await stack.post("/v1/chat/completions", {"messages": MSG, **body}, headers=headers)
    assert status == 400 and out["error"]["code"] == "bad_session" and out["error"]["param"] == "$.session"


def test_a_store_from_before_sessions_opens_and_gains_the_column(tmp_path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE traces (trace_id TEXT PRIMARY KEY, started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER,
            status TEXT, kind TEXT, route TEXT, profile TEXT, policy_name TEXT, policy_identity TEXT, provider TEXT,
            model_family TEXT, served_model_id TEXT, tokens_in INTEGER, tokens_out INTEGER, tokens_cached INTEGER,
            cost_usd TEXT, cost_basis TEXT, total_ms REAL, ttft_ms REAL, catalog_digest TEXT, record TEXT NOT NULL);
    """)
    conn.execute("INSERT INTO traces (trace_id, started_at_ms, status, record) VALUES ('tr_old', ?, 'ok', '{}')",
                 (int(time.time() * 1000) - 1000,))  # recent: the retention purge must not take it
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    store.submit_record({**_rec(1), "session": "s"})
    assert store.flush()
    assert [r["trace_id"] for r in store.list(session="s")[0]] == ["tr_0001"]
    assert {r["trace_id"]: r["session"] for r in store.list()[0]} == {"tr_0001": "s", "tr_old": None}
    store.close()


def _stamps(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT digest, last_used_ms FROM catalogs UNION ALL "
                            "SELECT digest, last_used_ms FROM sections").fetchall()
    finally:
        conn.close()
    return dict(rows)


def _referenced_until(path: str) -> dict[str, int]:
    """For each catalog and section: the latest start of a record that refers to it."""
    conn = sqlite3.connect(path)
    try:
        out: dict[str, int] = {}
        for (text,) in conn.execute("SELECT record FROM traces").fetchall():
            rec = json.loads(text)
            if "shared" in rec:  # the plan's part, stored apart, names the catalog, policy and decision
                dg = rec["shared"]["digest"]
                out[dg] = max(out.get(dg, 0), rec["started_at_ms"])
                row = conn.execute("SELECT section FROM sections WHERE digest = ?", (dg,)).fetchone()
                rec = {**json.loads(row[0]), "started_at_ms": rec["started_at_ms"]}
            for key in ("catalog", "policy", "decision"):
                dg = (rec.get(key) or {}).get("digest")
                if dg:
                    out[dg] = max(out.get(dg, 0), rec["started_at_ms"])
    finally:
        conn.close()
    return out


async def test_a_shared_row_is_restamped_once_per_window_and_outlives_every_record_using_it(tmp_path, monkeypatch) -> None:
    """A catalog's and a section's last_used_ms ("used until") is rewritten at most once per
    window, not on every commit (it rewrote a catalog snapshot of tens of KB ten times a second),
    and is never older than a record that refers to it: the retention purge relies on that."""
    from unhardcoded.traces import sqlstore as store_mod

    monkeypatch.setattr(store_mod, "_TOUCH_AHEAD_MS", 1500)
    s = await start_stack(tmp_path)
    try:
        for _ in range(2):  # a policy's section is written apart from its second record on
            await s.client.chat.completions.create(model="", messages=MSG)
        s.store.flush()
        first = _stamps(s.store.path)
        assert len(first) >= 3  # the catalog, the policy, the decision
        for _ in range(3):      # more commits inside the window
            await s.client.chat.completions.create(model="", messages=MSG)
            s.store.flush()
        assert _stamps(s.store.path) == first  # not rewritten
        used = _referenced_until(s.store.path)
        assert set(used) <= set(first)
        assert all(first[dg] >= t for dg, t in used.items())
        await asyncio.sleep(1.6)  # the window has passed: the next commit renews what it uses
        await s.client.chat.completions.create(model="", messages=MSG)
        s.store.flush()
        later = _stamps(s.store.path)
        now_used = {dg for dg, t in _referenced_until(s.store.path).items() if t > used.get(dg, 0)}
        assert len(now_used & set(first)) >= 2  # at least the catalog and the decision, seen before
        assert all(later[dg] > first[dg] for dg in now_used & set(first))
        used = _referenced_until(s.store.path)
        assert all(later[dg] >= t for dg, t in used.items())
        # the purge keeps what surviving records refer to
        horizon = min(used.values()) + 1
        s.store.purge(older_than_ms=horizon)
        kept = _stamps(s.store.path)
        assert all(dg in kept for dg, t in _referenced_until(s.store.path).items())
    finally:
        await s.close()


async def test_a_plans_records_after_its_first_refer_to_one_shared_section(tmp_path) -> None:
    """Route, policy, catalog, inputs and decision are the same for every run of one plan: the
    plan's first record holds them, the ones after it hold a reference to one ``shared`` section
    (written once) and their own ``now_ms``, and read back whole. Half the bytes per record."""
    from unhardcoded.traces.record import build_record

    s = await start_stack(tmp_path)
    runs = _keep_runs(s)
    try:
        for _ in range(4):
            await s.client.chat.completions.create(model="", messages=MSG)
        s.store.flush()
        conn = sqlite3.connect(s.store.path)
        try:
            raw = {tid: text for tid, text in conn.execute("SELECT trace_id, record FROM traces")}
            recs = {tid: json.loads(text) for tid, text in raw.items()}
            plans = {}
            for tid, run in runs.items():
                plans.setdefault(id(run.prepared.plan), []).append(tid)
            repeated = [tids for tids in plans.values() if len(tids) > 1]
            assert repeated  # four calls in a row share a plan
            for tids in repeated:
                first, *after = sorted(tids)
                assert "shared" not in recs[first] and recs[first]["decision"]["stored_apart"]
                refs = {recs[t]["shared"]["digest"] for t in after}
                assert len(refs) == 1
                for t in after:
                    assert set(recs[t]) & {"route", "policy", "catalog", "decision"} == set()
                    assert recs[t]["inputs"] == {"now_ms": runs[t].prepared.ctx["now_ms"]}
                    assert len(raw[t]) < 0.75 * len(raw[first])
                assert conn.execute("SELECT COUNT(*) FROM sections WHERE digest = ?", tuple(refs)).fetchone()[0] == 1
        finally:
            conn.close()
        for tid, run in runs.items():
            whole = json.loads(json.dumps(build_record(run, run.prepared.catalog)))
            back = s.store.get(tid)
            assert back == whole and list(back) == list(whole), tid  # the keys in their order too
    finally:
        await s.close()


async def test_a_policy_seen_once_keeps_its_section_inline_and_one_seen_again_is_written_apart_once(tmp_path) -> None:
    """A policy built per request seldom comes back: its record holds its policy section
    itself, and no section row (an index entry at a random place) is written for it. From a
    policy's second record on, the section is written apart, once, and the records refer to
    it. Every record reads back as the whole record, whichever way it was stored."""
    from unhardcoded.traces.record import build_record

    s = await start_stack(tmp_path)
    runs = _keep_runs(s)
    try:
        per_request = [["cmp", "price_in", "le", 10 + i] for i in range(5)]
        for pred in per_request:
            await s.client.chat.completions.create(model="", messages=MSG, extra_body={"policy_ir": pred})
        s.store.flush()
        policies = {run.trace_id: run.prepared.choice for run in runs.values()}
        assert len({ch.effective.identity for ch in policies.values()}) == 5
        conn = sqlite3.connect(s.store.path)
        try:
            def stored(tid):
                return json.loads(conn.execute("SELECT record FROM traces WHERE trace_id = ?", (tid,)).fetchone()[0])

            def section_rows():
                return {r[0] for r in conn.execute("SELECT digest FROM sections")}

            def stored_policy(tid):  # a record after its plan's first refers to its plan's shared part
                rec = stored(tid)
                if "shared" not in rec:
                    return rec["policy"]
                shared = conn.execute("SELECT section FROM sections WHERE digest = ?",
                                      (rec["shared"]["digest"],)).fetchone()
                return json.loads(shared[0])["policy"]

            inline = {tid: stored(tid)["policy"] for tid in runs}
            assert all("stored_apart" not in p and p["effective"]["term"] for p in inline.values())
            assert not {p["digest"] for p in inline.values()} & section_rows()
            for _ in range(3):  # the last policy again, three times
                await s.client.chat.completions.create(model="", messages=MSG,
                                                       extra_body={"policy_ir": per_request[-1]})
            s.store.flush()
            again = [tid for tid in runs if tid not in inline]
            assert len(again) == 3
            digests = {stored_policy(tid)["digest"] for tid in again}
            assert len(digests) == 1 and digests <= section_rows()
            assert all(stored_policy(tid) == {"digest": next(iter(digests)), "stored_apart": True} for tid in again)
            assert conn.execute("SELECT COUNT(*) FROM sections WHERE digest = ?", tuple(digests)).fetchone()[0] == 1
        finally:
            conn.close()
        for tid, run in runs.items():
            assert s.store.get(tid) == json.loads(json.dumps(build_record(run, run.prepared.catalog))), tid
    finally:
        await s.close()


def test_a_batch_is_inserted_in_chunks_that_offer_the_core_back(tmp_path, monkeypatch) -> None:
    from unhardcoded.traces import sqlstore as store_mod

    offered = []
    monkeypatch.setattr(store_mod, "_yield_cpu", lambda: offered.append(1))
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=60_000)
    try:
        for i in range(50):
            store.submit_record(_bare_record(i))
        assert store.flush(5)
        assert store.written == 50 and store.count() == 50
        assert len(offered) == -(-50 // store_mod._YIELD_ROWS)  # once after each chunk
        assert {store.get(_bare_record(i)["trace_id"])["started_at_ms"] for i in range(50)} == \
            {_NOW_MS + i for i in range(50)}
    finally:
        store.close()


# ---- the writer's share of the core (traces/writer_priority.py) -----------------------------

_LINUX_IDLE = hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


def _policy_of(tid: int) -> int:
    return os.sched_getscheduler(tid)


def _in_thread(fn):
    """Run ``fn`` in a new thread (scheduling policies are per thread) and return its result."""
    import threading
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


@pytest.mark.skipif(not _LINUX_IDLE, reason="Linux scheduling policies")
def test_the_writer_priority_idles_is_boosted_and_rests_again() -> None:
    from unhardcoded.traces.writer_priority import WriterPriority, can_leave_idle
    if not can_leave_idle():
        pytest.skip("needs CAP_SYS_NICE or RLIMIT_NICE 20")
    import threading

    p = WriterPriority("idle")
    seen: dict = {}
    boosted, rested = threading.Event(), threading.Event()

    def writer() -> None:
        home = os.sched_getscheduler(0)
        seen["start"] = p.start()
        seen["idle"] = os.sched_getscheduler(0)
        boosted.wait(5)                      # the loop side raises this thread by its id
        seen["boosted"] = os.sched_getscheduler(0)
        p.rest()
        seen["rested"] = os.sched_getscheduler(0)
        seen["home"] = home
        rested.set()

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(500):
        if "idle" in seen:
            break
        time.sleep(0.01)
    p.boost()
    assert p.policy == "boosted" and p.boosts == 1
    boosted.set()
    assert rested.wait(5)
    t.join(5)
    assert seen["start"] == "idle" and seen["idle"] == os.SCHED_IDLE
    assert seen["boosted"] == seen["home"] != os.SCHED_IDLE   # back to what the server gave it
    assert seen["rested"] == os.SCHED_IDLE and p.policy == "idle"


def test_the_writer_priority_keeps_the_servers_policy_when_it_could_not_come_back(monkeypatch) -> None:
    from unhardcoded.traces import writer_priority as wp

    monkeypatch.setattr(wp, "can_leave_idle", lambda: False)

    def start():
        before = os.sched_getscheduler(0) if _LINUX_IDLE else None
        p = wp.WriterPriority("idle")
        got = p.start()
        p.boost()
        p.rest()
        return got, p.policy, before, os.sched_getscheduler(0) if _LINUX_IDLE else None

    got, policy, before, after = _in_thread(start)
    assert got == policy == ("normal (unprivileged)" if _LINUX_IDLE else "normal (unsupported)")
    assert before == after  # never put under SCHED_IDLE: nothing could raise it again
    assert _in_thread(lambda: wp.WriterPriority("normal").start()) == "normal"
    with pytest.raises(ValueError):
        wp.WriterPriority("batch")


def test_a_full_batch_is_sealed_as_one_transaction_and_raises_the_writer(tmp_path, monkeypatch) -> None:
    """Built records go into batches of batch_max runs; the writer commits each sealed batch as
    its own transaction (a waiting submit goes on after the first), and a sealed batch boosts an
    idle writer."""
    from unhardcoded.traces import sqlstore as store_mod

    committed: list[int] = []
    real = SQLiteStore._commit

    def spy(self, conn, batch):
        committed.append(len(batch.rows))
        real(self, conn, batch)

    monkeypatch.setattr(SQLiteStore, "_commit", spy)
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=60_000, batch_max=5)
    boosts: list[int] = []
    monkeypatch.setattr(store.priority, "boost", lambda: boosts.append(len(store._sealed)))
    try:
        store._writer = None  # not started: records are built, nothing is committed
        store.start = lambda: None  # type: ignore[method-assign]
        for i in range(12):
            store.submit_record(_bare_record(i))
        assert [b.items for b in store._sealed] == [5, 5] and store._batch.items == 2
        assert boosts == [1, 2]  # once per sealed batch, when it was sealed
        del store.start
        store.start()
        assert store.flush(5)
        assert committed[:3] == [5, 5, 2] and store.written == 12 and store.count() == 12
    finally:
        store.close()


async def test_a_batch_not_committed_in_ten_intervals_raises_an_idle_writer(tmp_path, monkeypatch) -> None:
    """Other work on the core can starve a SCHED_IDLE writer (measured: four busy processes on
    its core held one record 2.6 s); a batch still not committed ten flush intervals after its
    first record raises the writer, once, from the event loop, which keeps the server's policy."""
    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=50, writer_scheduling="idle")  # overdue after 0.5 s
    boosts: list[float] = []
    monkeypatch.setattr(store.priority, "policy", "idle")
    monkeypatch.setattr(store.priority, "boost", lambda: boosts.append(time.monotonic()))
    store.start = lambda: None  # type: ignore[method-assign]  (a writer that never gets the core)
    try:
        t0 = time.monotonic()
        store.submit_record(_bare_record(1))
        store.submit_record(_bare_record(2))  # the same open batch: one timer for it
        await asyncio.sleep(0.1)
        assert boosts == [] and store._batch.items == 2
        await asyncio.sleep(0.55)
        assert len(boosts) == 1 and boosts[0] - t0 >= 0.5
        assert store._urgent.is_set() and store._wake.is_set()
        del store.start
        store.start()
        assert store.flush(5) and store.count() == 2  # the records were held, not lost
    finally:
        store.close()


def test_an_overdue_check_on_a_committed_batch_does_nothing(tmp_path, monkeypatch) -> None:
    from unhardcoded.traces import sqlstore as store_mod

    store = SQLiteStore(tmp_path / "t.sqlite3")
    boosts: list[int] = []
    monkeypatch.setattr(store.priority, "boost", lambda: boosts.append(1))
    try:
        batch = store_mod._Batch()
        store._settle(batch)
        store._overdue(batch.settled)
        assert boosts == []
        store._overdue(store_mod._Batch().settled)
        assert boosts == [1]
    finally:
        store.close()


@pytest.mark.skipif(not _LINUX_IDLE, reason="Linux scheduling policies")
def test_a_started_store_writer_runs_idle_and_commits(tmp_path) -> None:
    from unhardcoded.traces.writer_priority import can_leave_idle

    store = SQLiteStore(tmp_path / "t.sqlite3", flush_ms=20)
    try:
        store.submit_record(_bare_record(1))
        assert store.flush(5) and store.written == 1
        tid = store._writer.native_id
        idle = can_leave_idle()
        want = os.SCHED_IDLE if idle else os.sched_getscheduler(0)
        policy = "idle" if idle else "normal (unprivileged)"

        def settled() -> bool:  # the writer rests (again) once it has caught up
            for _ in range(200):
                if _policy_of(tid) == want and store.priority.policy == policy:
                    return True
                time.sleep(0.01)
            return False

        assert settled()
        boosts = store.priority.boosts
        store.submit_record(_bare_record(2))
        assert store.flush(5) and store.written == 2  # a flush raises an idle writer ...
        assert store.priority.boosts == boosts + (1 if idle else 0)
        assert settled()                               # ... which rests again
    finally:
        store.close()
