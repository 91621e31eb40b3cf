"""Long streams: what relaying a streamed answer costs per chunk, router beside the bare forwarder.

The suite's stream is six chunks, and it measures the time to the first byte. A chat answer is
hundreds of chunks, each in its own write, and a gateway relays every one: its cost per chunk,
not per call, is what a streaming service pays. Here every streamed request asks for
``max_tokens = --chunks``, which the mock upstream answers with that many content chunks, one every
``--gap-ms`` (then the finish, usage and ``[DONE]``), and wrk keeps ``--conns`` such streams open against each target in turn (one core
for the system under test, ``SCHED_BATCH``, as in the suite): the bare forwarder (granian, raw
client), the router as shipped (``unhardcoded serve``, traces on), LiteLLM if asked for
(``--litellm``, from its environment), and with ``--base REV`` the router of that git revision
too (as ``ab.py`` serves it), to compare a change.

    bench/.venvs/router/bin/python bench/long_stream.py [--chunks 200] [--gap-ms 1] [--conns 16] [--seconds 8]
        [--rounds 2] [--litellm] [--base REV]

Prints per target the streams per second, CPU per stream and per chunk (all threads), the
median time to the last byte and the peak RSS with the streams open; writes ``results/long-stream-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from typing import Any

import harness
from ab import base_source, serve_builds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=200, help="content chunks per streamed answer (at least 64)")
    ap.add_argument("--gap-ms", type=float, default=1.0, help="time between two chunks")
    ap.add_argument("--conns", type=int, default=16, help="streams open at once")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--litellm", action="store_true", help="LiteLLM proxy too (bench/.venvs/litellm)")
    ap.add_argument("--base", help="also serve the router of this git revision")
    ap.add_argument("--port-base", type=int, default=18700)
    a = ap.parse_args()
    P = a.port_base
    work, logs, files = harness.scratch("unhardcoded-stream-", P)
    python = str(harness.VENVS / "router" / "bin" / "python")
    if a.chunks < 64:
        ap.error("--chunks: the mock upstream streams a long answer for max_tokens of 64 or more")
    bodies = {}
    for name in ("direct", "router", "litellm"):
        doc = json.loads(files[f"body_{name}_long_stream"].read_text())
        doc["max_tokens"] = a.chunks
        bodies[name] = work / f"long_{name}.json"
        bodies[name].write_text(json.dumps(doc, separators=(",", ":")))
    procs: list[harness.Proc] = []
    targets: dict[str, tuple[int, Any, harness.Proc]] = {}
    out: dict[str, Any] = {"config": vars(a) | {"sut_core": harness.SUT_CORE, "load_core": harness.LOAD_CORE},
                           "machine": harness.machine_info(), "runs": {}}
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(harness.BENCH / "upstream.py"), "--port", str(P),
                                               "--stream-chunk-gap-ms", str(a.gap_ms)],
                                  core=harness.LOAD_CORE, logdir=logs))
        harness.wait_http(P, "/healthz", proc=procs[-1])
        fwd = harness.Proc("forwarder", [python, str(harness.BENCH / "forwarder.py"), "--server", "granian",
                                         "--client", "raw", "--port", str(P + 1), "--upstream", f"http://127.0.0.1:{P}"],
                           core=harness.SUT_CORE, logdir=logs, sched="batch")
        procs.append(fwd)
        targets["forwarder"] = (P + 1, bodies["direct"], fwd)
        rt = harness.Proc("router", [str(harness.VENVS / "router" / "bin" / "unhardcoded"), "serve", "--catalog",
                                     str(files["catalog"]), "--port", str(P + 2), "--data-dir", str(work / "router-data")],
                          core=harness.SUT_CORE, env={"BENCH_UPSTREAM_KEY": "sk-bench-upstream",
                                                      "UNHARDCODED_CPU_SCHEDULING": "batch"},
                          cwd=work, logdir=logs, sched="batch")
        procs.append(rt)
        targets["router"] = (P + 2, bodies["router"], rt)
        if a.base:
            out["base_commit"] = base_source(a.base, work / "base")
            base = serve_builds({"base": (P + 4, {"PYTHONPATH": str(work / "base" / "src")})}, files["catalog"], work,
                                logs, procs)["base"]
            targets[f"router@{a.base}"] = (P + 4, bodies["router"], base)
        if a.litellm:
            ll = harness.Proc("litellm", [str(harness.LITELLM_BIN), "--config", str(files["litellm"]), "--port",
                                          str(P + 3), "--num_workers", "1"], core=harness.SUT_CORE, cwd=work, logdir=logs,
                              env={"LITELLM_MASTER_KEY": harness.AUTH, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                   "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true"},
                              sched="batch")
            procs.append(ll)
            targets["litellm"] = (P + 3, bodies["litellm"], ll)
        for name, (port, body, proc) in targets.items():
            harness.wait_http(port, "/health/liveliness" if name == "litellm" else "/healthz", proc=proc)
            status, text = harness.post(port, "/v1/chat/completions", body)
            events = text.count(b"data: ")
            if status != 200 or b"[DONE]" not in text or text.count(b" token") < a.chunks:
                raise RuntimeError(f"{name} streamed {status}: {events} events, {text.count(b' token')} tokens")
            out.setdefault("events_per_stream", {})[name] = events  # LiteLLM merges chunks
            harness.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, a.conns, 2)  # warm
            out["runs"][name] = []
        names = list(targets)
        for r in range(a.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                port, body, proc = targets[name]
                before = harness.thread_ticks(proc.pid)
                peak, stop = [0], threading.Event()

                def sample(pid: int = proc.pid) -> None:  # the RSS with the streams open, sampled
                    while not stop.wait(0.25):
                        peak[0] = max(peak[0], harness.rss_kb(pid))
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    res = harness.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, a.conns, a.seconds)
                finally:
                    stop.set()
                    sampler.join()
                res["rss_peak_mb"] = round(peak[0] / 1024, 1)
                threads = harness.per_thread_us(before, harness.thread_ticks(proc.pid), res["requests"])
                res["cpu_us_per_stream"] = round(sum(t["us_per_request"] for t in threads), 1)
                res["cpu_us_per_chunk"] = round(res["cpu_us_per_stream"] / a.chunks, 2)
                out["runs"][name].append(res)
                harness.log(name, res["rps"], "streams/s", res["rss_peak_mb"], "MB peak", res["cpu_us_per_stream"], "us/stream",
                            res["cpu_us_per_chunk"], "us/chunk, p50", res["latency_us"]["p50"] / 1000, "ms; failed",
                            res["failed"], "non2xx", res["non2xx"])
    finally:
        for p in reversed(procs):
            p.stop()
    summary = {}
    for name, runs in out["runs"].items():
        summary[name] = {"streams_per_s": statistics.median(x["rps"] for x in runs),
                         "cpu_us_per_stream": statistics.median(x["cpu_us_per_stream"] for x in runs),
                         "cpu_us_per_chunk": statistics.median(x["cpu_us_per_chunk"] for x in runs),
                         "p50_ms": statistics.median(x["latency_us"]["p50"] for x in runs) / 1000,
                         "rss_peak_mb": max(x["rss_peak_mb"] for x in runs),
                         "failed": sum(x["failed"] + x["non2xx"] for x in runs)}
    out["summary"] = summary
    harness.write_results("long-stream", out)
    print(f"{a.chunks} chunks every {a.gap_ms} ms, {a.conns} streams open, {a.rounds} rounds x {a.seconds} s:")
    for name, s in summary.items():
        print(f"  {name:14s} {s['streams_per_s']:8.1f} streams/s  {s['cpu_us_per_stream']:9.1f} us/stream  "
              f"{s['cpu_us_per_chunk']:6.2f} us/chunk  p50 {s['p50_ms']:.1f} ms  RSS peak {s['rss_peak_mb']:.0f} MB"
              f"  failed {s['failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
