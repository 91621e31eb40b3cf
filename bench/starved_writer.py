"""How long a record waits to be committed when other processes keep the trace writer's core busy.

A trace writer under SCHED_IDLE (``[traces] writer_scheduling = "idle"``,
``traces/writer_priority.py``) gives way to busy processes on its core as it does to the
router's own threads. This pins itself and
``--hogs`` busy-looping processes (normal priority) to core 0, hands a record to the SQLite
store from an event loop every ``--gap-ms`` (as a service under light traffic would), and
measures each record's time from ``submit`` to committed. ``--base REV`` measures that git
revision's store too, in its own process, in the same run.

A second table (``--lag-hogs``) asks the other side of the trade: while records stream in
(five every 2 ms), how late does the event loop wake from a 2 ms sleep, with the writer idle and
with it normal? An idle writer that holds the interpreter lock when a busy process takes the
core from it keeps the loop waiting until it gets the core back.

    bench/.venvs/router/bin/python bench/starved_writer.py [--hogs 0,1,4] [--records 40] [--gap-ms 50] [--base REV]
        [--lag-hogs 0,2] [--lag-seconds 8] [--served-conns 1,4,16,64] [--served-hogs 2]

A third table (``--served-conns``) asks it of the router itself: ``unhardcoded serve`` twice
(the writer idle, the writer normal), both on core 0 with ``--served-hogs`` busy processes, wrk
on core 1 at each concurrency, 3 interleaved rounds of 6 s; RPS, p50, p99, p99.9 and the largest
latency of each round.

Prints, per build and number of hogs, the p50 and the largest wait and how often the writer
was raised, then the loop's lateness (p50, p99, p99.9, largest) per writer scheduling and
number of hogs; writes ``results/starved-writer-<stamp>.json``. Run as root (or with
CAP_SYS_NICE), as the suite does: otherwise the writer never runs idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness


def _busy(n: int, core: str) -> list[subprocess.Popen]:
    """``n`` busy-looping processes at the normal policy, pinned to ``core``."""
    return [subprocess.Popen(["taskset", "-c", core, sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _record(i: int, now_ms: int) -> dict[str, Any]:
    return {"schema": "unhardcoded.trace/v1", "trace_id": f"tr_{now_ms:012x}{i:020x}", "kind": "chat",
            "started_at_ms": now_ms + i, "status": "ok", "path": [], "answer": None, "usage": {}, "cost": {},
            "latency": {}, "error": None}


async def _measure(path: str, records: int, gap_s: float) -> dict[str, Any]:
    from unhardcoded.traces.sqlite import SQLiteStore

    store = SQLiteStore(path, writer_scheduling="idle")
    store.start()
    now_ms = int(time.time() * 1000)
    sent: list[float] = []
    waits: list[float] = []

    def seen() -> None:
        while len(waits) < min(store.written, len(sent)):
            waits.append(time.monotonic() - sent[len(waits)])

    for i in range(records):
        sent.append(time.monotonic())
        store.submit_record(_record(i, now_ms))
        until = time.monotonic() + gap_s
        while time.monotonic() < until:
            await asyncio.sleep(0.005)
            seen()
    deadline = time.monotonic() + 30
    while len(waits) < records and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        seen()
    out = {"committed": len(waits), "records": records, "boosts": store.priority.boosts,
           "writer": store.priority.policy, "wait_ms": sorted(round(w * 1000, 1) for w in waits)}
    store.close()
    return out


async def _lag(path: str, scheduling: str, seconds: float) -> dict[str, Any]:
    from unhardcoded.traces.sqlite import SQLiteStore

    store = SQLiteStore(path, writer_scheduling=scheduling)
    store.start()
    now_ms = int(time.time() * 1000)
    late: list[float] = []
    i = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for _ in range(5):
            rec = _record(i, now_ms)
            rec["path"] = [{"event": "attempted", "note": "x" * 50}] * 20  # about a routed call's size
            store.submit_record(rec)
            i += 1
        t0 = time.monotonic()
        await asyncio.sleep(0.002)
        late.append((time.monotonic() - t0 - 0.002) * 1000)
    late.sort()
    out = {"records": i, "writer": store.priority.policy, "boosts": store.priority.boosts,
           "late_ms": {q: round(late[min(len(late) - 1, int(len(late) * f))], 2)
                       for q, f in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))},
           "late_max_ms": round(late[-1], 2)}
    store.close()
    return out


def _child(a: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {0})
    hogs = _busy(a.child_hogs, "0")
    try:
        time.sleep(0.5)
        with tempfile.TemporaryDirectory(prefix="unhardcoded-starved-") as d:
            if a.child_lag:
                res = asyncio.run(_lag(str(Path(d) / "traces.sqlite3"), a.child_lag, a.lag_seconds))
            else:
                res = asyncio.run(_measure(str(Path(d) / "traces.sqlite3"), a.records, a.gap_ms / 1000.0))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(json.dumps(res))
    return 0


def _served(conns: list[int], nhogs: int) -> list[dict[str, Any]]:
    from ab import serve_builds

    port = 18800
    work, logs, files = harness.scratch("unhardcoded-starved-served-", port)
    builds = {"idle": (port + 1, {"UNHARDCODED_TRACE_WRITER_SCHEDULING": "idle"}),
              "normal": (port + 2, {"UNHARDCODED_TRACE_WRITER_SCHEDULING": "normal"})}
    procs: list[harness.Proc] = []
    hogs: list[subprocess.Popen] = []
    runs: list[dict[str, Any]] = []
    body = files["body_router"]
    try:
        procs.append(harness.Proc("upstream", [str(harness.RPY), str(harness.BENCH / "upstream.py"), "--port", str(port)],
                                  core=harness.LOAD_CORE, logdir=logs))
        servers = serve_builds(builds, files["catalog"], work, logs, procs)
        targets = {name: (builds[name][0], servers[name].pid) for name in builds}
        hogs = _busy(nhogs, harness.SUT_CORE)
        print(f"\n| writer | c | RPS | p50 (ms) | p99 (ms) | p99.9 (ms) | largest (ms) |  ({nhogs} busy processes on the router's core; 3 rounds each)")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            for name, rs in harness.c64_rounds(targets, body, 3, 6, conns=c).items():
                runs.append({"writer": name, "conns": c, "rounds": rs})
                fmt = lambda k: " / ".join(f"{x['latency_us'][k] / 1000:.1f}" for x in rs)  # noqa: E731
                print(f"| {name} | {c} | {' / '.join(str(round(x['rps'])) for x in rs)} | {fmt('p50')} | {fmt('p99')} "
                      f"| {fmt('p99.9')} | {fmt('max')} |", flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        for p in procs[::-1]:
            p.stop()
    return runs


def counts(text: str) -> list[int]:
    """A comma-separated list of counts ('' for none), for argparse: a bad one is a usage error."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if any(x < 0 for x in out):
        raise argparse.ArgumentTypeError(f"a count cannot be negative: {text!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=counts, default="0,1,4", help="numbers of busy processes on the writer's core")
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--base", default=None, help="a git revision to measure beside the working tree")
    ap.add_argument("--lag-hogs", type=counts, default="0,2", help="numbers of busy processes for the loop-lateness table ('' skips it)")
    ap.add_argument("--lag-seconds", type=float, default=8)
    ap.add_argument("--served-conns", type=counts, default="1,4,16,64", help="concurrencies for the served table ('' skips it)")
    ap.add_argument("--served-hogs", type=int, default=2)
    ap.add_argument("--child-hogs", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-lag", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_hogs is not None:
        return _child(a)
    builds: dict[str, dict[str, str]] = {"tree": {}}
    work = Path(tempfile.mkdtemp(prefix="unhardcoded-starved-src-"))
    out: dict[str, Any] = {"machine": harness.machine_info(), "records": a.records, "gap_ms": a.gap_ms, "runs": []}
    if a.base:
        from ab import base_source
        out["base"] = base_source(a.base, work)
        builds["base"] = {"PYTHONPATH": str(work / "src")}
    print("| build | busy processes on the core | committed | p50 wait (ms) | largest wait (ms) | writer raised |")
    print("|---|---:|---:|---:|---:|---:|")
    for hogs in a.hogs:
        for name, env in builds.items():
            proc = subprocess.run([sys.executable, __file__, "--child-hogs", str(hogs), "--records", str(a.records),
                                   "--gap-ms", str(a.gap_ms)], env={**os.environ, **env},
                                  capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(build=name, hogs=hogs)
            out["runs"].append(res)
            w = res["wait_ms"]
            p50 = w[len(w) // 2] if w else float("nan")
            print(f"| {name} | {hogs} | {res['committed']}/{res['records']} | {p50:.0f} | {max(w, default=float('nan')):.0f} "
                  f"| {res['boosts']} |", flush=True)
    lag_hogs = a.lag_hogs
    if lag_hogs:
        out["lag_seconds"], out["lag"] = a.lag_seconds, []
        print("\n| writer | busy processes on the core | records | loop late p50 / p99 / p99.9 (ms) | largest (ms) |")
        print("|---|---:|---:|---:|---:|")
    for hogs in lag_hogs:
        for scheduling in ("idle", "normal"):
            proc = subprocess.run([sys.executable, __file__, "--child-hogs", str(hogs), "--child-lag", scheduling,
                                   "--lag-seconds", str(a.lag_seconds)], capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(scheduling=scheduling, hogs=hogs)
            out["lag"].append(res)
            q = res["late_ms"]
            print(f"| {scheduling} ({res['writer']}) | {hogs} | {res['records']:,} | {q['p50']} / {q['p99']} / {q['p99.9']} "
                  f"| {res['late_max_ms']} |", flush=True)
    conns = a.served_conns
    if conns:
        out["served_hogs"], out["served"] = a.served_hogs, _served(conns, a.served_hogs)
    harness.write_results("starved-writer", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
