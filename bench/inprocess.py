"""The chat path's own Python cost per call, without sockets: what the router does for one request.

Drives the RSGI chat endpoint (``RSGIApp.__rsgi__``) in a loop with the benchmark's router body
over the 200-candidate catalog, with a stand-in for granian's request object and a transport that
answers at once with the mock upstream's canned completion. Traces go to the SQLite store as in
``unhardcoded serve`` (``--sink memory`` for the in-memory sink). What it leaves out is what the
socket benchmarks measure: the server, the upstream client and the kernel.

    taskset -c 0 bench/.venvs/router/bin/python bench/inprocess.py [--calls N] [--sink sqlite|memory] [--profile]
        [--new-policy]

``--new-policy`` moves the body's ``bench_intelligence`` threshold by n * 1e-9 for the n-th call, as
``BENCH_NEW_POLICY=1`` does in ``wrk_post.lua``: every call then brings a policy the router has not seen.

``--light-traffic`` moves the router's clock past ``stamp_refresh_ms`` before every call, as when
calls come seconds apart: each one finds the stamped pool expired, and the route that served the
last call re-stamped with its new latency. ``--providers N`` serves a catalog of N × 5 candidates
(default 40: the suite's 200).

Prints the process CPU time per call (the event loop and the trace writer together), best of three
loops of N calls.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

from unhardcoded.config import load_settings  # noqa: E402
from unhardcoded.providers.transport import Response  # noqa: E402
from unhardcoded.router.engine import TraceSink  # noqa: E402
from unhardcoded.server import build_app, build_router, tune_gc  # noqa: E402
from unhardcoded.server.rsgi import RSGIApp  # noqa: E402

# what bench/upstream.py answers
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}, "system_fingerprint": "fp_bench",
}).encode()


class CannedTransport:
    async def send(self, req: Any, *, timeout_s: float) -> Response:
        return Response(200, {"content-type": "application/json", "content-length": str(len(ANSWER))}, ANSWER)

    async def close(self) -> None:
        pass


class Scope:
    proto, method, path, query_string = "http", "POST", "/v1/chat/completions", ""

    def __init__(self, body: bytes) -> None:
        self.headers = {"content-type": "application/json", "content-length": str(len(body)),
                        "authorization": "Bearer sk-bench"}


class Proto:
    """granian's request object, as far as the chat endpoint uses it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status

    def client_disconnect(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()


async def call_ok(app: Any, scope: Scope, body: bytes) -> None:
    """One call of the chat endpoint, which must answer 200."""
    p = Proto(body)
    await app.__rsgi__(scope, p)
    if p.status != 200:
        raise SystemExit(f"the chat endpoint answered {p.status}")


THRESHOLD = b'["cmp","bench_intelligence","ge",0.3]'


def bodies(body: bytes, new_policy: bool) -> Any:
    """The body of every call: the same one, or one whose threshold differs per call."""
    if not new_policy:
        while True:
            yield body
    pre, found, post = body.partition(THRESHOLD)
    if not found:
        raise SystemExit("--new-policy: the body has no bench_intelligence threshold of 0.3")
    n = 0
    while True:
        n += 1
        yield pre + b'["cmp","bench_intelligence","ge",%.12f]' % (0.3 + n * 1e-9) + post


def light_clock(router: Any) -> None:
    """Every call past the stamp window: one clock for the router and its runtime state, moved
    ``stamp_refresh_ms`` + 1 at every reading."""
    now = [router.clock()]
    step = router.runtime.config.stamp_refresh_ms + 1

    def clock() -> int:
        now[0] += step
        return now[0]
    router.clock = router.runtime.clock = clock


async def run(app: RSGIApp, body: bytes, calls: int, new_policy: bool = False, light: bool = False) -> float:
    router = app.app.router
    sink = router.sink
    if light:
        light_clock(router)
    if hasattr(sink, "start"):
        sink.start()
    scope = Scope(body)
    each = bodies(body, new_policy)
    for _ in range(500):  # warm: compile the policy, fill the plan memo
        p = Proto(next(each))
        await app.__rsgi__(scope, p)
    if p.status != 200:
        raise SystemExit(f"the chat endpoint answered {p.status}")
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for i in range(calls):
            await app.__rsgi__(scope, Proto(next(each)))
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the trace store's callback run, as the server's loop would
        best = min(best, time.process_time() - t0)
    if hasattr(sink, "close"):
        sink.close()
    return best / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--sink", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--profile", action="store_true", help="cProfile one run (times are then inflated)")
    ap.add_argument("--new-policy", action="store_true", help="a policy the router has not seen in every call")
    ap.add_argument("--light-traffic", action="store_true", help="every call after the stamp window has passed")
    ap.add_argument("--providers", type=int, default=40, help="providers in the catalog (5 candidates each)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unhardcoded-inprocess-"))
    files = workload.write(work, "http://127.0.0.1:9", n_providers=a.providers)
    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench-upstream"
    settings = load_settings(None, catalog=str(files["catalog"]), data_dir=str(work / "data"))
    router = build_router(settings, sink=TraceSink() if a.sink == "memory" else None)
    router.transport = CannedTransport()  # type: ignore[assignment]
    app = RSGIApp(build_app(settings, router=router))
    tune_gc()
    body = files["body_router"].read_bytes()
    import uvloop
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        per_call = uvloop.run(run(app, body, a.calls, a.new_policy, a.light_traffic))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    else:
        per_call = uvloop.run(run(app, body, a.calls, a.new_policy, a.light_traffic))
    kind = "a new policy" if a.new_policy else "the same policy"
    light = ", each call after the stamp window" if a.light_traffic else ""
    print(f"{per_call * 1e6:.1f} us of process CPU per call ({kind} each call{light}, {a.providers * 5} candidates,"
          f" {a.sink} trace sink, best of 3 x {a.calls} calls)")


if __name__ == "__main__":
    main()
