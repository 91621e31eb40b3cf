"""Two builds of the router under light traffic: one call at a time, calls apart (not a target).

The suite's loads send thousands of calls per 100 ms, so the router's stamped pool (the routes
with their observed latency and success rate, rebuilt at most every ``stamp_refresh_ms``) is
always fresh and every plan a cache hit. A service that calls its gateway a few times a second
sees the other case: every call finds the stamp expired and the route that served the call
before re-stamped with its new latency. This serves the working tree and a git revision at once
(as ``ab.py`` does: one core, ``SCHED_BATCH``, traces on, the suite's catalog, or one of
``--providers`` × 5 candidates) and sends one call every ``--gap-ms`` to each, in turn, and to
the bare forwarder (``forwarder.py``, granian with the raw client, as the suite's) and the mock
upstream directly, over one kept-alive connection each.

    bench/.venvs/router/bin/python bench/light_traffic.py [--base HEAD~1] [--calls 200] [--gap-ms 150] [--providers 40]

Prints, per build, p50, p90 and p99 of the call's time and the p50 added over the direct call;
writes ``results/light-traffic-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import harness
import workload
from ab import base_source, serve_builds


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="the git revision to compare the working tree with")
    ap.add_argument("--calls", type=int, default=200, help="calls to each target")
    ap.add_argument("--gap-ms", type=int, default=150, help="pause between two calls (more than stamp_refresh_ms)")
    ap.add_argument("--providers", type=int, default=40, help="providers in the catalog (5 candidates each)")
    ap.add_argument("--port-base", type=int, default=18600)
    a = ap.parse_args()
    P = a.port_base
    work, logs, _ = harness.scratch("unhardcoded-light-", P)
    files = workload.write(work / "workload", f"http://127.0.0.1:{P}", n_providers=a.providers)
    commit = base_source(a.base, work / "base")
    body = files["body_router"].read_bytes()
    python = str(harness.VENVS / "router" / "bin" / "python")
    builds = {"base": (P + 1, {"PYTHONPATH": str(work / "base" / "src")}), "tree": (P + 2, {})}
    procs: list[harness.Proc] = []
    times: dict[str, list[float]] = {}
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(harness.BENCH / "upstream.py"), "--port", str(P)],
                                  core=harness.LOAD_CORE, logdir=logs))
        serve_builds(builds, files["catalog"], work, logs, procs)
        # the bare forwarder as the suite runs it (its fastest stack here): what any Python proxy adds
        fwd = harness.Proc("forwarder", [python, str(harness.BENCH / "forwarder.py"), "--server", "granian",
                                         "--client", "raw", "--port", str(P + 3), "--upstream", f"http://127.0.0.1:{P}"],
                           core=harness.SUT_CORE, logdir=logs, sched="batch")
        procs.append(fwd)
        harness.wait_http(P + 3, "/", proc=fwd)
        harness.wait_http(P, "/healthz")
        path = "/v1/chat/completions"
        direct_body = files["body_direct"].read_bytes()
        times = harness.spaced_calls({"direct": (P, path, direct_body), "forwarder": (P + 3, path, direct_body),
                                      **{name: (port, path, body) for name, (port, _env) in builds.items()}},
                                     a.calls, a.gap_ms)
    finally:
        for p in reversed(procs):
            p.stop()
    direct = statistics.median(times["direct"])
    out: dict[str, Any] = {"base": a.base, "base_commit": commit, "calls": a.calls, "gap_ms": a.gap_ms,
                           "candidates": a.providers * 5, "machine": harness.machine_info(), "ms": times}
    print(f"\nbase = {a.base} ({commit[:7]}), tree = the working tree; {a.calls} calls each, one every "
          f"{a.gap_ms} ms, {a.providers * 5} candidates\n")
    print("| target | p50 (ms) | p90 (ms) | p99 (ms) | added p50 over direct (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, xs in times.items():
        added = "" if name == "direct" else f"{statistics.median(xs) - direct:.2f}"
        print(f"| {name} | {statistics.median(xs):.2f} | {quantile(xs, 0.9):.2f} | {quantile(xs, 0.99):.2f} | {added} |")
    harness.write_results("light-traffic", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
