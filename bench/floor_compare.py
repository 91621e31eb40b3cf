"""The bare forwarder, the least router (``bench/floor.py``) and the router, side by side.

    bench/.venvs/router/bin/python bench/floor_compare.py [--rounds 3] [--seconds 8] [--client unhardcoded]

Same layout as the suite (systems under test on cpu0 under SCHED_BATCH, upstream and wrk on
cpu1), interleaved rounds of wrk at c=64 with the router body; prints, per target, the median
requests per second, the ratio to the forwarder and the CPU time per request of every thread.
Writes ``results/floor-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402

RPY = harness.RPY


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--port-base", type=int, default=18200)
    ap.add_argument("--client", choices=("raw", "unhardcoded"), default="raw",
                    help="the least router's upstream client (the router's own: what it costs)")
    a = ap.parse_args()
    P = a.port_base
    work, logs, files = harness.scratch("unhardcoded-floor-", P)
    up_url = f"http://127.0.0.1:{P}"
    body = files["body_router"]
    procs: list[harness.Proc] = []
    sut, load = harness.SUT_CORE, harness.LOAD_CORE

    def start(name: str, argv: list[str], core: str, **kw: Any) -> harness.Proc:
        p = harness.Proc(name, argv, core=core, logdir=logs, sched="batch" if core == sut else "normal", **kw)
        procs.append(p)
        return p

    targets = {"bare forwarder": P + 1, "least router": P + 4, "router": P + 2}
    try:
        start("upstream", [str(RPY), str(BENCH / "upstream.py"), "--port", str(P)], load)
        fwd = start("forwarder", [str(RPY), str(BENCH / "forwarder.py"), "--server", "granian", "--client", "raw",
                                  "--port", str(P + 1), "--upstream", up_url], sut)
        flr = start("floor", [str(RPY), str(BENCH / "floor.py"), "--port", str(P + 4), "--upstream", up_url,
                              "--data-dir", str(work / "floor-data"), "--client", a.client], sut)
        rt = start("router", [str(harness.VENVS / "router" / "bin" / "unhardcoded"), "serve", "--catalog",
                              str(files["catalog"]), "--port", str(P + 2), "--data-dir", str(work / "router-data")], sut,
                   env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream", "UNHARDCODED_CPU_SCHEDULING": "batch"}, cwd=work)
        harness.wait_http(P + 1, "/", proc=fwd)
        harness.wait_http(P + 4, "/", proc=flr)
        harness.wait_http(P + 2, "/healthz", proc=rt)
        pids = {"bare forwarder": fwd.pid, "least router": flr.pid, "router": rt.pid}
        runs = harness.c64_rounds({k: (port, pids[k]) for k, port in targets.items()}, body, a.rounds, a.seconds)
    finally:
        for p in reversed(procs):
            p.stop()
    out: dict[str, Any] = {"rounds": a.rounds, "seconds": a.seconds, "least_router_client": a.client,
                           "machine": harness.machine_info(), "targets": {}}
    fwd_rps = statistics.median(r["rps"] for r in runs["bare forwarder"])
    print("| target | RPS c=64 (median) | ÷ forwarder | CPU µs/request, all threads | by thread |")
    print("|---|---:|---:|---:|---|")
    for name, rs in runs.items():
        rps = statistics.median(r["rps"] for r in rs)
        mid = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
        total = round(sum(t["us_per_request"] for t in mid["threads"]), 1)
        by = ", ".join(f"{t['label']} {t['us_per_request']}" for t in mid["threads"] if t["us_per_request"] >= 0.5)
        out["targets"][name] = {"rps": rps, "ratio_to_forwarder": round(rps / fwd_rps, 3), "runs": rs}
        print(f"| {name} | {rps:,.0f} | {rps / fwd_rps:.2f}× | {total} | {by} |")
    harness.write_results("floor", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
