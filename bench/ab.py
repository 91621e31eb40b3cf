"""Two builds of the router side by side: the working tree against a git revision (not a target).

A change to the hot path is worth a few microseconds per call, less than this machine's drift
between two runs minutes apart. So both builds are served at once, each as ``unhardcoded serve``
is in the suite (one core, ``SCHED_BATCH``, traces on, the same catalog), and loaded in
interleaved rounds at c=64, the order swapped every round, for each kind of body: the suite's
router body (``same``) and the same body with its threshold moved per request (``new``, as in
``new_policy.py``). The base build is ``git archive <rev> src`` in a scratch directory, run by
the router environment's interpreter with that ``src`` first on ``PYTHONPATH``.

    bench/.venvs/router/bin/python bench/ab.py [--base HEAD~1] [--kinds same,new] [--rounds 4] [--seconds 5] [--conns 64]

``--stores`` serves the working tree twice instead, its traces in SQLite (``sqlite``, the default)
and in PostgreSQL (``postgres``: a private scratch server, ``unhardcoded.testing.postgres``, on the
load core, as a database on another host would be off the router's core).

Prints, per kind and build, the median RPS, p50, p99, p99.9 and CPU per call; writes ``results/ab-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import harness


def base_source(rev: str, into: Path) -> str:
    """``src`` of ``rev`` under ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "-C", str(harness.ROOT), "rev-parse", "--verify", rev + "^{commit}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    tar = subprocess.run(["git", "-C", str(harness.ROOT), "archive", commit, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(into, filter="data")
    return commit


def serve_builds(builds: dict[str, tuple[int, dict[str, str]]], catalog: Path, work: Path, logs: Path,
                 procs: list[harness.Proc]) -> dict[str, harness.Proc]:
    """Each build (name -> (port, extra environment)) served as the suite serves the router: one
    core, ``SCHED_BATCH``, traces on in its own data directory, by the router environment's
    interpreter; started in order, appended to ``procs`` (to stop), and answering when this returns."""
    python = str(harness.VENVS / "router" / "bin" / "python")
    servers: dict[str, harness.Proc] = {}
    for name, (port, env) in builds.items():
        (work / name / "data").mkdir(parents=True, exist_ok=True)
        proc = harness.Proc(name, [python, "-c", "import sys; from unhardcoded.cli import main; sys.exit(main())",
                                   "serve", "--catalog", str(catalog), "--port", str(port),
                                   "--data-dir", str(work / name / "data")],
                            core=harness.SUT_CORE, logdir=logs, sched="batch", cwd=work,
                            env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream", **env})
        procs.append(proc)
        servers[name] = proc
        harness.wait_http(port, "/healthz", proc=proc)
    return servers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="the git revision to compare the working tree with")
    ap.add_argument("--kinds", default="same,new", help="bodies: same (the suite's), new (a new policy per request)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (concurrency)")
    ap.add_argument("--port-base", type=int, default=18500)
    ap.add_argument("--stores", action="store_true", help="the working tree with SQLite against PostgreSQL traces")
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    if not kinds or set(kinds) - {"same", "new"}:
        ap.error("--kinds is a list of same and new")
    P = a.port_base
    work, logs, files = harness.scratch("unhardcoded-ab-", P)
    body = files["body_router"]
    pg = None
    if a.stores:
        import os

        from unhardcoded.testing.postgres import PostgresServer
        pg = PostgresServer()
        if pg.pid is not None:
            os.sched_setaffinity(pg.pid, {int(harness.LOAD_CORE)})  # its backends, forked later, inherit it
        commit = "working tree"
        builds = {"sqlite": (P + 1, {}),
                  "postgres": (P + 2, {"UNHARDCODED_TRACE_STORE": "postgres", "UNHARDCODED_TRACE_DSN": pg.database()})}
    else:
        commit = base_source(a.base, work / "base")
        builds = {"base": (P + 1, {"PYTHONPATH": str(work / "base" / "src")}), "tree": (P + 2, {})}
    procs: list[harness.Proc] = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {b: [] for b in builds} for k in kinds}
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(harness.BENCH / "upstream.py"), "--port", str(P)],
                                  core=harness.LOAD_CORE, logdir=logs))
        servers = serve_builds(builds, files["catalog"], work, logs, procs)
        for name, (port, _env) in builds.items():
            harness.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, 64, 2)  # warm
        names = list(builds)
        for r in range(a.rounds):
            for kind in kinds:
                for name in (names if r % 2 == 0 else names[::-1]):
                    port, proc = builds[name][0], servers[name]
                    before = harness.thread_ticks(proc.pid)
                    res = harness.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, a.conns, a.seconds,
                                      env={"BENCH_NEW_POLICY": "1" if kind == "new" else "0"})
                    threads = harness.per_thread_us(before, harness.thread_ticks(proc.pid), res["requests"])
                    res["cpu_us"] = round(sum(t["us_per_request"] for t in threads), 1)
                    res["rss_mb"] = round(harness.rss_kb(proc.pid) / 1024, 1)
                    runs[kind][name].append(res)
                    harness.log(kind, name, res["rps"], "rps", res["cpu_us"], "us/request",
                                "failed", res["failed"], "non2xx", res["non2xx"])
    finally:
        for p in reversed(procs):
            p.stop()
        if pg is not None:
            pg.stop()
    out: dict[str, Any] = {"base": "stores" if a.stores else a.base, "base_commit": commit, "rounds": a.rounds, "seconds": a.seconds,
                           "conns": a.conns,
                           "machine": harness.machine_info(), "runs": runs}
    if a.stores:
        print(f"\nthe working tree, traces in SQLite and in PostgreSQL; medians of {a.rounds} rounds at c={a.conns}\n")
    else:
        print(f"\nbase = {a.base} ({commit[:7]}), tree = the working tree; medians of {a.rounds} rounds at c={a.conns}\n")
    print("| body | build | RPS | p50 (ms) | p99 (ms) | p99.9 (ms) | CPU µs per call | RSS (MB, max) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, by in runs.items():
        for name, rs in by.items():
            bad = sum(x["non2xx"] + x["failed"] for x in rs)
            lat = {q: statistics.median(x["latency_us"][q] for x in rs) / 1000 for q in ("p50", "p99", "p99.9")}
            print(f"| {kind} | {name} | {statistics.median(x['rps'] for x in rs):,.0f} | "
                  f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p99.9']:.2f} | "
                  f"{statistics.median(x['cpu_us'] for x in rs):.1f} | {max(x['rss_mb'] for x in rs):.0f} |"
                  + (f" ({bad} failed or non-2xx)" if bad else ""))
    harness.write_results("ab-stores" if a.stores else "ab", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
