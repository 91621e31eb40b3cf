"""The least a Python router with traces can do per call: the bare forwarder plus only that.

Not a product and not a target of the rounds: a measuring stick for issue 6's "at least half the
bare forwarder's requests per second". It is ``bench/forwarder.py`` (granian RSGI, the raw
keep-alive client) plus the per-call work no router that decides per request and keeps a trace
can skip, each step done the cheapest way Python offers and nothing checked:

1. read the request body as JSON (orjson, no strictness checks);
2. take the policy out and find its decision by the policy's JSON text in a dict (a decision is
   made once per distinct policy: a fixed route here, no admission, no evaluation);
3. write the upstream body with the chosen model (orjson);
4. forward it, read the answer as JSON, price its usage (two multiplications);
5. add an ``x_router`` object (route, cost, trace id, policy digest and the caller's decision
   trace as the reference host's contract has it: the top 10 ranked and every rejection, here
   the same 10 + 102 rows as the router's answer, written once per decision) and write the answer;
6. append a trace row; a writer thread commits the rows of every 100 ms in one SQLite (WAL)
   transaction to a table keyed by trace id with one index on time.

What the router does beyond this (strict JSON with paths, admission and normal form of an
unseen policy, breakers and their snapshot, the request contract, typed parameter checks, the
FailPlan walk, cost by genai-prices, the decision trace the caller sees, a trace record that
replays) is what the gap between this and ``unhardcoded serve`` costs.

    python bench/floor.py --port 18004 --upstream http://127.0.0.1:18000 --data-dir DIR [--client raw|unhardcoded]

``bench/floor_compare.py`` measures it beside the forwarder and the router (c=64, one core).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import forwarder  # noqa: E402

P_CHAT = "/v1/chat/completions"
_HEADERS = [("content-type", "application/json")]
_ids = itertools.count(1)
_prefix = os.urandom(6).hex()


class Decision:
    __slots__ = ("model", "route", "price_in", "price_out", "policy_digest", "shown")

    def __init__(self, policy_text: bytes) -> None:
        self.model, self.route = "bench-model", "p24/m1"
        self.price_in, self.price_out = 0.5e-6, 1.5e-6
        self.policy_digest = hashlib.sha256(policy_text).hexdigest()
        # the shape and size of the router's answer for the benchmark body: 10 ranked, 102 rejected
        ranked = [{"provider_id": f"p{i:02d}", "model_family": "m1", "served_model_id": "bench-model",
                   "score": 0.8 - i / 470, "tier": "partner"} for i in range(10)]
        rejected = [{"provider": f"p{i % 40:02d}", "model": f"m{i // 40}", "reason": "cmp:bench_intelligence:ge"}
                    for i in range(102)]
        self.shown = orjson.Fragment(orjson.dumps({"ranked": ranked, "ranked_total": 98, "rejected": rejected,
                                                   "policy_term": orjson.loads(policy_text)}))


_decisions: dict[bytes, Decision] = {}


class Traces:
    def __init__(self, path: str) -> None:
        self.rows: list[tuple] = []
        self.lock = threading.Lock()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS traces (trace_id TEXT PRIMARY KEY, started_at_ms INTEGER, "
                     "route TEXT, tokens_in INTEGER, tokens_out INTEGER, cost_usd REAL, total_ms REAL, record TEXT)")
        conn.execute("CREATE INDEX IF NOT EXISTS traces_started ON traces (started_at_ms)")
        conn.close()
        self.path = path
        threading.Thread(target=self._run, name="trace-writer", daemon=True).start()

    def _run(self) -> None:
        try:  # the OS-level name, so the per-thread table can tell it from granian's thread
            with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
                f.write("trace-writer")
        except OSError:
            pass
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        while True:
            time.sleep(0.1)
            with self.lock:
                rows, self.rows = self.rows, []
            if rows:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")


_traces: Traces | None = None
_CLIENT = os.environ.get("BENCH_FLOOR_CLIENT", "raw")
_client = None
_UP_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-upstream"}


async def _ours(body: bytes) -> tuple[int, bytes]:
    """The router's own upstream client (``--client unhardcoded``): what it costs beside the raw one."""
    global _client
    if _client is None:
        from unhardcoded.providers.http1 import Client
        _client = Client()
    r = await _client.request("POST", forwarder.UPSTREAM + P_CHAT, _UP_HEADERS, body, timeout_s=30)
    return r.status, r.body


async def rsgi_app(scope, proto):  # noqa: ANN001, ANN201
    global _traces
    if scope.proto != "http":
        return
    if _traces is None:
        _traces = Traces(os.environ["BENCH_FLOOR_DB"])
    t0 = time.perf_counter()
    body = await proto()
    if scope.path != P_CHAT:
        proto.response_bytes(404, _HEADERS, b'{"error":{"message":"not found"}}')
        return
    req = orjson.loads(body)
    policy = orjson.dumps(req.pop("policy_ir", None))
    d = _decisions.get(policy)
    if d is None:
        d = _decisions[policy] = Decision(policy)
    req["model"] = d.model
    if _CLIENT == "unhardcoded":
        status, data = await _ours(orjson.dumps(req))
    else:
        raw, _ = forwarder._clients()
        status, _ctype, data = await raw.post(P_CHAT, orjson.dumps(req))  # type: ignore[union-attr]
    answer = orjson.loads(data)
    usage = answer.get("usage") or {}
    tin, tout = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    cost = tin * d.price_in + tout * d.price_out
    trace_id = f"{_prefix}{next(_ids):010d}"
    answer["x_router"] = {"route": d.route, "cost_usd": cost, "trace_id": trace_id, "policy": d.policy_digest,
                          "decision": d.shown}
    proto.response_bytes(status, _HEADERS, orjson.dumps(answer))
    ms = (time.perf_counter() - t0) * 1000.0
    record = orjson.dumps({"policy": d.policy_digest, "route": d.route, "status": status, "usage": usage,
                           "cost_usd": cost, "total_ms": ms})
    with _traces.lock:
        _traces.rows.append((trace_id, int(time.time() * 1000), d.route, tin, tout, cost, ms, record.decode()))


def main() -> None:
    ap = argparse.ArgumentParser(description="the least a Python router with traces does (bench)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18004)
    ap.add_argument("--upstream", default="http://127.0.0.1:18000")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--client", choices=("raw", "unhardcoded"), default="raw",
                    help="upstream client: the forwarder's raw one, or the router's own")
    a = ap.parse_args()
    os.environ["BENCH_FLOOR_CLIENT"] = a.client
    Path(a.data_dir).mkdir(parents=True, exist_ok=True)
    # granian re-imports this module in its worker: hand the settings over by environment
    os.environ["BENCH_UPSTREAM"] = a.upstream
    os.environ["BENCH_FWD_CLIENT"] = "raw"
    os.environ["BENCH_FLOOR_DB"] = str(Path(a.data_dir).resolve() / "traces.db")
    u = urlsplit(a.upstream)
    forwarder.UPSTREAM, forwarder.UP_HOST, forwarder.UP_PORT = a.upstream, u.hostname or "127.0.0.1", u.port or 80
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    from granian import Granian
    from granian.constants import Interfaces, Loops
    Granian("floor:rsgi_app", address=a.host, port=a.port, interface=Interfaces.RSGI, workers=1,
            runtime_threads=1, loop=Loops.uvloop, log_enabled=False, backlog=4096).serve()


if __name__ == "__main__":
    main()
