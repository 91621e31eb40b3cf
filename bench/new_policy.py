"""The router when every request brings a policy it has not seen (not a target of the suite).

A backend that builds its policy per request (a threshold from the user's plan, a price ceiling
from the request) sends the router a new policy each time: every call then admits, normalises,
fingerprints and evaluates two policies (the one sent, and it under the catalog's envelope) and
plans over the whole catalog, where the suite's router body hits the caches. This runs
``unhardcoded serve`` as the suite does (one core, ``SCHED_BATCH``, traces on) and measures, in
interleaved rounds against the same server, the benchmark body as sent (``same``) and the same
body with its ``bench_intelligence`` threshold changed per request (``new``,
``BENCH_NEW_POLICY=1`` in ``wrk_post.lua``).

    bench/.venvs/router/bin/python bench/new_policy.py [--rounds 3] [--seconds 6]

Prints RPS, p50, p99, CPU per call and the server's RSS after each round; writes
``results/new-policy-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import harness


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--port-base", type=int, default=18400)
    a = ap.parse_args()
    P = a.port_base
    work, logs, files = harness.scratch("unhardcoded-new-policy-", P)
    body = files["body_router"]
    procs: list[harness.Proc] = []
    runs: dict[str, list[dict[str, Any]]] = {"same": [], "new": []}
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(harness.BENCH / "upstream.py"), "--port", str(P)],
                                  core=harness.LOAD_CORE, logdir=logs))
        router = harness.Proc("router", [str(harness.VENVS / "router" / "bin" / "unhardcoded"), "serve", "--catalog",
                                         str(files["catalog"]), "--port", str(P + 1), "--data-dir", str(work / "data")],
                              core=harness.SUT_CORE, logdir=logs, sched="batch", cwd=work,
                              env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream"})
        procs.append(router)
        harness.wait_http(P + 1, "/healthz", proc=router)
        url = f"http://127.0.0.1:{P + 1}/v1/chat/completions"
        harness.wrk(url, body, 64, 2)  # warm
        for r in range(a.rounds):
            for kind in (("same", "new") if r % 2 == 0 else ("new", "same")):
                before = harness.thread_ticks(router.pid)
                res = harness.wrk(url, body, 64, a.seconds, env={"BENCH_NEW_POLICY": "1" if kind == "new" else "0"})
                threads = harness.per_thread_us(before, harness.thread_ticks(router.pid), res["requests"])
                res["threads"] = threads
                res["cpu_us"] = round(sum(t["us_per_request"] for t in threads), 1)
                res["rss_mb"] = round(harness.rss_kb(router.pid) / 1024, 1)
                runs[kind].append(res)
                harness.log(kind, res["rps"], "rps", res["cpu_us"], "us/request", "rss", res["rss_mb"], "MB",
                            "failed", res["failed"], "non2xx", res["non2xx"])
    finally:
        for p in reversed(procs):
            p.stop()
    out: dict[str, Any] = {"rounds": a.rounds, "seconds": a.seconds, "machine": harness.machine_info(), "runs": runs}
    print("| policy in each request | RPS c=64 (median) | p50 / p99 (ms, median) | CPU µs per call | RSS after (MB, max) |")
    print("|---|---:|---:|---:|---:|")
    for kind, rs in runs.items():
        med = lambda k: statistics.median(x[k] for x in rs)  # noqa: E731
        p50 = statistics.median(x["latency_us"]["p50"] for x in rs) / 1000
        p99 = statistics.median(x["latency_us"]["p99"] for x in rs) / 1000
        bad = sum(x["non2xx"] + x["failed"] for x in rs)
        label = "the same (the suite's router body)" if kind == "same" else "new each time"
        print(f"| {label} | {med('rps'):,.0f} | {p50:.1f} / {p99:.1f} | {med('cpu_us'):.0f} | "
              f"{max(x['rss_mb'] for x in rs):.0f} |" + (f" ({bad} failed or non-2xx)" if bad else ""))
    harness.write_results("new-policy", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
