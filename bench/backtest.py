"""What a backtest costs: ``POST /x/backtest``'s work per stored call, over the suite's catalog.

Fills a SQLite trace store with N calls of the benchmark's router body (200 candidates) through
the RSGI chat endpoint, as ``bench/inprocess.py`` serves them (a canned upstream answer, no
sockets), then backtests a policy that prefers ``bench_intelligence`` over them, ``over`` stored
and current, and prints the time per call of reading the records and of deciding them again.

Two kinds of traffic are stored: ``repeated`` (calls close together: many share a pool and state,
so one evaluation serves many) and ``light`` (the router's clock moved past the stamp window
before every call, as when calls come seconds apart: every call has its own stamped pool, so over
``stored`` each is decided on its own: the worst case).

    taskset -c 0 bench/.venvs/router/bin/python bench/backtest.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess  # noqa: E402
import workload  # noqa: E402

from unhardcoded.config import load_settings  # noqa: E402
from unhardcoded.server import build_app, build_router  # noqa: E402
from unhardcoded.server.rsgi import RSGIApp  # noqa: E402
from unhardcoded.traces.backtest import Backtest  # noqa: E402

SMART = ["policy", ["and", ["cmp", "bench_intelligence", "ge", 0.3], ["cmp", "context", "ge", 32000]],
         ["normalize", ["field", "bench_intelligence"]], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]


async def fill(app: RSGIApp, body: bytes, calls: int, light: bool) -> None:
    router = app.app.router
    if light:
        inprocess.light_clock(router)
    router.sink.start()
    scope = inprocess.Scope(body)
    for i in range(calls):
        await inprocess.call_ok(app, scope, body)
        if i % 64 == 0:
            await asyncio.sleep(0)
    if not router.sink.flush(60):
        raise SystemExit("the trace store did not commit in 60 s")


def measure(kind: str, calls: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="unhardcoded-backtest-"))
    files = workload.write(work, "http://127.0.0.1:9")
    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench-upstream"
    settings = load_settings(None, catalog=str(files["catalog"]), data_dir=str(work / "data"))
    router = build_router(settings)
    router.transport = inprocess.CannedTransport()  # type: ignore[assignment]
    app = RSGIApp(build_app(settings, router=router))
    import uvloop
    uvloop.run(fill(app, files["body_router"].read_bytes(), calls, kind == "light"))
    store = router.sink
    rows = []
    for over in ("stored", "current"):
        best_read = best_decide = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            records, _ = store.records(limit=calls, kind="chat")
            t1 = time.perf_counter()
            bt = Backtest(SMART, router, over=over, snapshots=store.catalog_snapshot).run(records)
            report = bt.report()
            t2 = time.perf_counter()
            best_read, best_decide = min(best_read, t1 - t0), min(best_decide, t2 - t1)
        t = report["totals"]
        rows.append({"traffic": kind, "over": over, "calls": len(records), "evaluations": len(bt._plans),
                     "read_us": best_read / len(records) * 1e6, "decide_us": best_decide / len(records) * 1e6,
                     "changed": t["changed_pick"], "delta_pct": t["delta_pct"]})
    store.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    a = ap.parse_args()
    rows = [r for kind in ("repeated", "light") for r in measure(kind, a.calls)]
    print("| traffic | over | calls | evaluations | read µs per call | decide µs per call | total for 10,000 calls |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['traffic']} | {r['over']} | {r['calls']:,} | {r['evaluations']:,} | {r['read_us']:.1f} | "
              f"{r['decide_us']:.1f} | {(r['read_us'] + r['decide_us']) * 10_000 / 1e6:.2f} s |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
