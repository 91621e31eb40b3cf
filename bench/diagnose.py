"""Diagnosis runs (not part of the headline table): what the trace store and the garbage collector cost.

One variant at a time on core 0 against the mock upstream on core 1, each: warm-up, latency at
c=1, RPS at c=64, RSS. Variants: ``unhardcoded serve`` as shipped (granian), and
``router_variant.py`` (uvicorn, same app) with the SQLite store or the in-memory sink, and with
the collector as is, frozen after start-up (``gc.freeze()``), or off.

    bash bench/run.sh --setup && taskset -c 1 bench/.venvs/router/bin/python bench/diagnose.py [--seconds 10]

Writes ``bench/results/diagnose-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import harness
import workload

BENCH = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--port-base", type=int, default=18100)
    a = ap.parse_args()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(f"/tmp/unhardcoded-diagnose-{stamp}")
    (work / "logs").mkdir(parents=True)
    up_port, port = a.port_base, a.port_base + 2
    files = workload.write(work / "workload", f"http://127.0.0.1:{up_port}")
    res = {"schema": "unhardcoded.bench.diagnose/v1", "started_utc": stamp, "seconds": a.seconds,
           "machine": harness.machine_info(), "loadavg_start": harness.loadavg(), "variants": {}}
    variants = [("serve (granian, sqlite)", [str(BENCH / ".venvs/router/bin/unhardcoded"), "serve"], [])]
    for sink in ("sqlite", "memory"):
        for g in ("default", "freeze", "off"):
            if sink == "memory" and g == "off":
                continue
            variants.append((f"uvicorn, {sink} sink, gc {g}", [str(harness.RPY), str(BENCH / "router_variant.py")],
                             ["--sink", sink, "--gc", g]))
    up = harness.Proc("upstream", [str(harness.RPY), str(BENCH / "upstream.py"), "--port", str(up_port)],
                      core=harness.LOAD_CORE, logdir=work / "logs")
    try:
        harness.wait_http(up_port, "/healthz", proc=up)
        for i, (name, argv, extra) in enumerate(variants):
            data = work / f"data{i}"
            p = harness.Proc(f"v{i}", [*argv, "--catalog", str(files["catalog"]), "--port", str(port),
                                       "--data-dir", str(data), *extra], core=harness.SUT_CORE, logdir=work / "logs",
                             env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream"}, cwd=work)
            try:
                harness.wait_http(port, "/healthz", proc=p)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                harness.wrk(url, files["body_router"], 16, 3)
                c1 = harness.wrk(url, files["body_router"], 1, a.seconds)
                c64 = harness.wrk(url, files["body_router"], 64, a.seconds)
                res["variants"][name] = {"c1_latency_us": c1["latency_us"], "c64_rps": c64["rps"],
                                         "c64_p99_us": c64["latency_us"]["p99"], "failed": c1["failed"] + c64["failed"],
                                         "rss_kb": harness.rss_kb(p.pid),
                                         "rss_by_process_kb": {str(q): harness.rss_kb_one(q) for q in harness.tree(p.pid)}}
                v = res["variants"][name]
                print(f"{name:32s} c1 p50 {c1['latency_us']['p50']:>6} p99 {c1['latency_us']['p99']:>7} "
                      f"p99.9 {c1['latency_us']['p99.9']:>7} us | c64 {c64['rps']:>8} rps p99 {v['c64_p99_us']} us | "
                      f"rss {v['rss_kb'] / 1024:.1f} MB", file=sys.stderr, flush=True)
            finally:
                p.stop()
                shutil.rmtree(data, ignore_errors=True)
                time.sleep(1)
    finally:
        up.stop()
    res["loadavg_end"] = harness.loadavg()
    out = BENCH / "results" / f"diagnose-{stamp}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
