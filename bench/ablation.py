"""What each stage of a routed call costs under load: the router with one stage taken out at a time.

    bench/.venvs/router/bin/python bench/ablation.py [--rounds 4] [--seconds 4] [--variants a,b,...] [--conns 64]

A diagnosis, not a product and not a target of the rounds. Each variant is ``unhardcoded serve``
(granian embedded, the native RSGI chat endpoint, SQLite traces, ``SCHED_BATCH``) with one stage
replaced by the least that keeps the answer's shape, by patching the running process; "all" takes
every stage out at once. What a stage costs is the full router's CPU time per call minus the
variant's, both measured in the same interleaved rounds (wrk c=64 on the benchmark body, one core),
because in isolation (``bench/inprocess.py``, ``timeit``) the same code runs two to four times faster
than among 64 calls in flight.

Stages (what replaces them):

* ``strict_json``: the body read by ``orjson.loads`` (no strictness checks, no fault paths);
* ``validate``: no shape check of the chat body;
* ``disconnect``: no watch for the client going away (the call is not cancelled);
* ``prepare``: the first call's prepared decision reused by every call (contract, policy, pool,
  state, plan, request time: a decision that is free; each call keeps its own deadline clock);
* ``usage``: the provider's ``usage`` taken as it is (no completion of missing fields);
* ``observe``: no runtime observation of the success (no health window, no breaker reset);
* ``x_router``: a fixed ``x_router`` of the same size instead of the run's;
* ``trace_write``: trace rows built as usual but never written (the writer thread commits nothing);
* ``trace``: no trace record (nothing built, nothing written).

``--conns 1`` loads one call at a time instead and adds the latency percentiles to the table: what
each stage does to the tail at concurrency 1.

Writes ``results/ablation-<stamp>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

STAGES = ("strict_json", "validate", "disconnect", "prepare", "usage", "observe", "x_router", "trace_write", "trace")


# ---- the variant server (runs in its own process) -------------------------------------------

def _patch(stages: set[str]) -> Any:
    """Take ``stages`` out of the router in this process; returns the trace sink to use."""
    import dataclasses
    import time

    import orjson

    from unhardcoded.providers import openai as wire_openai
    from unhardcoded.router import engine
    from unhardcoded.runtime.state import RuntimeState
    from unhardcoded.server import app as app_mod, rsgi

    if "strict_json" in stages:
        app_mod.App.parse_body = lambda self, raw, allow_empty=False: orjson.loads(raw)  # type: ignore
    if "validate" in stages:
        app_mod.validate_chat_body = lambda body: None  # type: ignore[assignment]
    if "disconnect" in stages:
        async def plain(work: Any, proto: Any) -> None:
            await work
        rsgi._until_disconnect = plain  # type: ignore[assignment]
    if "prepare" in stages:
        general = engine.Router.prepare
        first: dict[str, Any] = {}

        def prepare(self: Any, body: Any, **kw: Any) -> Any:
            hit = first.get("prep")
            if hit is None:
                hit = first["prep"] = general(self, body, **kw)
            # its own start (the request deadline runs from it); everything else the first call's
            return dataclasses.replace(hit, t0=time.perf_counter())
        engine.Router.prepare = prepare  # type: ignore[method-assign]
    if "usage" in stages:
        wire_openai.normalize_usage = lambda u: u if isinstance(u, dict) else {}  # type: ignore[assignment]
    if "observe" in stages:
        RuntimeState.record_success = lambda self, *a, **k: None  # type: ignore[method-assign]
    if "x_router" in stages:
        # the benchmark answer's x_router is ~8.6 KB of JSON: the same bytes to write, none to build
        pad = {"pad": orjson.Fragment(b'"' + b"x" * 8600 + b'"')}
        engine.Run.x_router = lambda self, wire=False: pad  # type: ignore[method-assign]
    if "trace_write" in stages:
        from unhardcoded.traces.sqlite import SQLiteStore

        SQLiteStore._commit = lambda self, conn, batch: self._settle(batch)  # type: ignore[method-assign]
    if "trace" in stages:
        class Nothing:
            def submit(self, run: Any) -> None:
                pass
        return Nothing()
    return None


def serve_variant(stages: set[str], catalog: str, port: int, data_dir: str) -> None:  # pragma: no cover
    import uvloop

    from unhardcoded.config import load_settings
    from unhardcoded.server import ShippedServer, apply_cpu_scheduling, build_app, build_router, tune_gc
    from unhardcoded.server.rsgi import RSGIApp

    sink = _patch(stages)
    settings = load_settings(None, catalog=catalog, data_dir=data_dir, port=port)
    apply_cpu_scheduling(settings.cpu_scheduling)

    async def main() -> None:
        router = build_router(settings, sink=sink)
        app = RSGIApp(build_app(settings, router=router))
        tune_gc()
        srv = ShippedServer(app, settings)
        try:
            await srv.serve()
        finally:
            await router.close()

    uvloop.run(main())


# ---- the rounds ------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--port-base", type=int, default=18300)
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (concurrency)")
    ap.add_argument("--variants", default=",".join((*STAGES, "all")),
                    help="comma-separated stages to take out one at a time ('all': every stage at once)")
    ap.add_argument("--serve-variant", help=argparse.SUPPRESS)
    ap.add_argument("--catalog", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_variant is not None:
        chosen = set(STAGES) if a.serve_variant == "all" else {s for s in a.serve_variant.split("+") if s}
        serve_variant(chosen, a.catalog, a.port, a.data_dir)
        return 0

    import harness

    variants = ["router"] + [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants[1:] if v != "all" and v not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}, all")
    P = a.port_base
    work, logs, files = harness.scratch("unhardcoded-ablation-", P)
    body = files["body_router"]
    procs: list[harness.Proc] = []
    ports: dict[str, int] = {}
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(BENCH / "upstream.py"), "--port", str(P)],
                                  core=harness.LOAD_CORE, logdir=logs))
        for i, v in enumerate(variants, start=1):
            ports[v] = P + i
            argv = [str(harness.RPY), str(Path(__file__).resolve()), "--serve-variant", "" if v == "router" else v,
                    "--catalog", str(files["catalog"]), "--port", str(P + i),
                    "--data-dir", str(work / f"data-{i}")]
            procs.append(harness.Proc(v, argv, core=harness.SUT_CORE, logdir=logs, sched="batch", cwd=work,
                                      env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream"}))
        for p in procs[1:]:
            harness.wait_http(ports[p.name], "/healthz", proc=p)
        runs = harness.c64_rounds({p.name: (ports[p.name], p.pid) for p in procs[1:]}, body, a.rounds, a.seconds,
                                  conns=a.conns)
    finally:
        for p in reversed(procs):
            p.stop()
    full_cpu = statistics.median(r["cpu_us"] for r in runs["router"])
    out: dict[str, Any] = {"rounds": a.rounds, "seconds": a.seconds, "conns": a.conns,
                           "machine": harness.machine_info(), "variants": {}}
    tails = a.conns == 1  # one call at a time: what matters is the latency, not the rate
    print(f"| taken out | RPS c={a.conns} (median) | CPU µs per call (median) | the stage costs (µs per call) |"
          + (" p50 / p99 / p99.9 (ms, median) |" if tails else ""))
    print("|---|---:|---:|---:|" + ("---:|" if tails else ""))
    for v, rs in runs.items():
        rps = statistics.median(r["rps"] for r in rs)
        cpu = statistics.median(r["cpu_us"] for r in rs)
        bad = sum(r["non2xx"] + r["failed"] for r in rs)
        out["variants"][v] = {"rps": rps, "cpu_us": cpu, "stage_us": round(full_cpu - cpu, 1), "runs": rs}
        name = "nothing (the router)" if v == "router" else ("every stage above" if v == "all" else f"`{v}`")
        cost = "–" if v == "router" else f"{full_cpu - cpu:.1f}"
        lat = ""
        if tails:
            lat = " / ".join(f"{statistics.median(r['latency_us'][q] for r in rs) / 1000:.2f}"
                             for q in ("p50", "p99", "p99.9")) + " |"
        print(f"| {name} | {rps:,.0f} | {cpu:.1f} | {cost} |{lat}" + (f" ({bad} failed or non-2xx)" if bad else ""))
    harness.write_results("ablation", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
