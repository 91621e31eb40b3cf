"""What a usage report costs: ``GET /v1/usage``'s read of the trace store, per stored call.

Fills a SQLite trace store (the router's schema, opened by ``SQLiteStore``) with N calls spread
over 30 days, 4 providers, 12 models, 6 routes, 50 policies and 20 callers, 2 % of them flows of
three steps (their records carry their nodes, as a flow's record does), then times the report
over all of them, over one day of them, and over one caller's, best of 3. The report reads the
summary columns of every selected row (and a flow's record), so its cost grows with the window.

    taskset -c 0 .venv/bin/python bench/usage.py [--calls N ...]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from unhardcoded.server.usage import build_report
from unhardcoded.traces.record import COLUMNS
from unhardcoded.traces.sqlite import SQLiteStore

DAY_MS = 86_400_000
NOW_MS = 1_796_083_200_000


def fill(path: Path, n: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    SQLiteStore(path).close()  # the schema, as the router creates it
    models = [(p, f"{p}-model-{i}") for p in ("oa", "an", "ge", "or") for i in range(3)]
    rows = []
    for i in range(n):
        started = NOW_MS - rnd.randrange(30 * DAY_MS)
        provider, family = rnd.choice(models)
        flow = rnd.random() < 0.02
        ok = rnd.random() > 0.03
        t_in, t_out = rnd.randrange(50, 5000), rnd.randrange(10, 800)
        cost = f"{(t_in * 3 + t_out * 15) / 1_000_000:.6f}" if ok else None
        record = "{}"
        if flow:
            nodes = [{"trace_id": f"n{i}-{k}", "provider": p, "model_family": m, "served_model_id": m,
                      "tokens_in": t_in // 3, "tokens_out": t_out // 3, "tokens_cached": 0, "cost_usd": 0.0001,
                      "record": {"cost": {"cost_usd": "0.0001"}}}
                     for k, (p, m) in enumerate(rnd.sample(models, 3))]
            record = json.dumps({"flow": {"nodes": nodes}})
        values = {
            "trace_id": f"t{i:09d}", "started_at_ms": started, "finished_at_ms": started + 800,
            "status": "ok" if ok else "error", "kind": "flow" if flow else "chat",
            "route": "flow:two-drafts" if flow else rnd.choice(["", "profile:agent", "family:x", "pin:oa/x",
                                                                   "policy:cheap", "profile:default"]),
            "profile": None, "policy_name": None, "policy_identity": f"{rnd.randrange(50):064x}",
            "provider": ("flow" if flow else provider) if ok else None,
            "model_family": ("flow:f" if flow else family) if ok else None,
            "served_model_id": ("flow:f" if flow else family) if ok else None,
            "tokens_in": t_in if ok else 0, "tokens_out": t_out if ok else 0, "tokens_cached": 0,
            "cost_usd": cost, "cost_basis": "computed" if ok else None, "total_ms": rnd.uniform(200, 3000),
            "ttft_ms": None, "catalog_digest": "c", "session": None, "caller": f"caller-{rnd.randrange(20)}",
        }
        rows.append((*[values[c] for c in COLUMNS], record))
    conn = sqlite3.connect(path)
    conn.executemany(f"INSERT INTO traces ({', '.join(COLUMNS)}, record) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                     rows)
    conn.commit()
    conn.close()


def best(fn, rounds: int = 3) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    print("| stored calls | window | calls read | ms | µs per call read |")
    print("|---:|---|---:|---:|---:|")
    for n in args.calls:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "traces.sqlite3"
            fill(path, n)
            store = SQLiteStore(path, retention_days=None)
            for label, filters in (("all (30 days)", {}), ("one day", {"since_ms": NOW_MS - DAY_MS}),
                                   ("one caller, all", {"caller": "caller-3"})):
                report: dict = {}

                def run() -> None:
                    report.clear()
                    report.update(build_report(store, {"filters": filters, "limit": 20, "offset": 0, "window": None},
                                               None, now_ms=NOW_MS))
                s = best(run)
                read = report["window"]["recent_total"]
                print(f"| {n:,} | {label} | {read:,} | {s * 1000:,.1f} | {s / max(read, 1) * 1e6:.2f} |")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
