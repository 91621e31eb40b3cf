"""How long a record waits to be committed when other processes keep the trace writer's core busy.

The trace writer runs under SCHED_IDLE (``traces/writer_priority.py``), so busy processes on
its core take the core from it as the router's own threads do. This pins itself and
``--hogs`` busy-looping processes (normal priority) to core 0, hands a record to the SQLite
store from an event loop every ``--gap-ms`` (as a service under light traffic would), and
measures each record's time from ``submit`` to committed. ``--base REV`` measures that git
revision's store too, in its own process, in the same run.

    bench/.venvs/router/bin/python bench/starved_writer.py [--hogs 0,1,4] [--records 40] [--gap-ms 50] [--base REV]

Prints, per build and number of hogs, the p50 and the largest wait and how often the writer
was raised; writes ``results/starved-writer-<stamp>.json``. Run as root (or with
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


def _record(i: int, now_ms: int) -> dict[str, Any]:
    return {"schema": "unhardcoded.trace/v1", "trace_id": f"tr_{now_ms:012x}{i:020x}", "kind": "chat",
            "started_at_ms": now_ms + i, "status": "ok", "path": [], "answer": None, "usage": {}, "cost": {},
            "latency": {}, "error": None}


async def _measure(path: str, records: int, gap_s: float) -> dict[str, Any]:
    from unhardcoded.traces.sqlite import SQLiteStore

    store = SQLiteStore(path)
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


def _child(a: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {0})
    hogs = [subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
            for _ in range(a.child_hogs)]
    try:
        time.sleep(0.5)
        with tempfile.TemporaryDirectory(prefix="unhardcoded-starved-") as d:
            res = asyncio.run(_measure(str(Path(d) / "traces.sqlite3"), a.records, a.gap_ms / 1000.0))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(json.dumps(res))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", default="0,1,4", help="numbers of busy processes on the writer's core")
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--base", default=None, help="a git revision to measure beside the working tree")
    ap.add_argument("--child-hogs", type=int, default=None, help=argparse.SUPPRESS)
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
    for hogs in [int(h) for h in a.hogs.split(",") if h]:
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
    harness.write_results("starved-writer", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
