"""What the trace store costs the router per call: SQLite against PostgreSQL, the same runs, one run.

Makes N real routed runs in process (the suite's router body over the 200-candidate catalog, the
mock upstream's answer handed back at once, as ``bench/inprocess.py`` does; every run its own
trace id), then hands them to each store as the router does: ``submit`` inside an event loop,
64 at a time between turns of the loop, so records are built by the loop's callback and
committed by the writer thread in batches. Each round opens a new store (a new SQLite file, a new
PostgreSQL database) and the two stores alternate, round after round. Reported per run, best of
the rounds:

* the router process's CPU: building the records (the event loop) and committing them (the
  writer thread), what the router's own core pays;
* the database server's CPU (PostgreSQL's processes; SQLite has none, it runs in the writer);
* the wall time from the first submit until every run is committed, as runs per second.

PostgreSQL is a private scratch server on this machine (``unhardcoded.testing.postgres``: loopback,
``fsync=off``), pinned to core 1; this process to core 0, as the router would be with its
database elsewhere. A real database behind a network adds its round trips to the writer's wall
time (not to the router's CPU: the writer waits, off the event loop).

    .venv/bin/python bench/stores.py [--runs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess  # noqa: E402
import workload  # noqa: E402

from unhardcoded.config import load_settings  # noqa: E402
from unhardcoded.router.engine import TraceSink  # noqa: E402
from unhardcoded.server import build_app, build_router  # noqa: E402
from unhardcoded.server.rsgi import RSGIApp  # noqa: E402
from unhardcoded.testing.postgres import PostgresServer  # noqa: E402
from unhardcoded.traces.postgres import PostgresStore  # noqa: E402
from unhardcoded.traces.sqlite import SQLiteStore  # noqa: E402


class Keep(TraceSink):
    """Keeps every run (the benchmark's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.all: list[Any] = []

    def submit(self, run: Any) -> None:
        self.all.append(run)


async def make_runs(n: int, work: Path) -> list[Any]:
    files = workload.write(work, "http://127.0.0.1:9")
    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench-upstream"
    settings = load_settings(None, catalog=str(files["catalog"]), data_dir=str(work / "data"))
    keep = Keep()
    router = build_router(settings, sink=keep)
    router.transport = inprocess.CannedTransport()  # type: ignore[assignment]
    app = RSGIApp(build_app(settings, router=router))
    body = files["body_router"].read_bytes()
    scope = inprocess.Scope(body)
    for _ in range(n):
        await inprocess.call_ok(app, scope, body)
    return keep.all


async def feed(store: Any, runs: list[Any]) -> None:
    for i, run in enumerate(runs):
        store.submit(run)
        if i % 64 == 63:
            await asyncio.sleep(0)  # the loop turns, as a server's would between requests
    await asyncio.sleep(0)


def one_round(store: Any, runs: list[Any], server: PostgresServer | None) -> dict[str, float]:
    store.start()
    db0 = server.cpu_seconds() if server else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(feed(store, runs))
    if not store.flush(600):
        raise SystemExit(f"{store.name}: not committed in 600 s")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    db = (server.cpu_seconds() - db0) if server else 0.0
    written, errors = store.written, store.errors
    store.close()
    if written != len(runs) or errors:
        raise SystemExit(f"{store.name}: {written} of {len(runs)} written, {errors} errors")
    n = len(runs)
    return {"router_cpu_us": cpu / n * 1e6, "db_cpu_us": db / n * 1e6, "runs_per_s": n / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unhardcoded-stores-"))
    server = PostgresServer()
    try:
        if server.pid is not None and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(server.pid, {1})  # backends forked from now on inherit it
            os.sched_setaffinity(0, {0})
        runs = asyncio.run(make_runs(a.runs, work))
        results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
        for r in range(a.rounds):
            lite = SQLiteStore(work / f"traces-{r}.sqlite3")
            results["sqlite"].append(one_round(lite, runs, None))
            pg = PostgresStore(server.database())
            results["postgres"].append(one_round(pg, runs, server))
    finally:
        server.stop()
    print(f"{a.runs} routed runs per round, {a.rounds} rounds, best round per store "
          f"(router CPU: lowest; runs/s: highest)")
    print("| store | router process CPU per run | database server CPU per run | runs committed per second |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        cpu = min(x["router_cpu_us"] for x in rows)
        db = min(x["db_cpu_us"] for x in rows)
        rate = max(x["runs_per_s"] for x in rows)
        print(f"| {name} | {cpu:.1f} µs | {db:.1f} µs | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
