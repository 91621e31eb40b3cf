"""The HTTP server: build the application from settings, run it with granian (or uvicorn)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from ..catalog import load_catalog
from ..config import Settings
from ..router.engine import Router
from .app import App

log = logging.getLogger("unhardcoded.server")


def build_router(settings: Settings, *, sink: Any = None) -> Router:
    catalog = load_catalog(settings.catalog)
    if sink is None:
        from ..traces import open_store
        sink = open_store(settings)
    router = Router(catalog, settings, sink=sink)
    if settings.callers and hasattr(sink, "caller_usage"):
        router.limits.load(sink.caller_usage)  # budgets and the last minute carry over a restart
        short = [s.name for s in settings.callers.values() if s.budget_usd is not None and s.budget_window == "month"]
        if short and 0 < settings.retention_days < 31:
            log.warning("traces are kept %d days, less than a month: after a restart late in a month the "
                        "monthly budget of %s counts only the calls still stored (traces.retention_days >= 31 "
                        "keeps it whole)", settings.retention_days, ", ".join(sorted(short)))
    return router


def build_app(settings: Settings, *, router: Router | None = None) -> App:
    router = router or build_router(settings)
    from . import compact, extras, usage
    app = App(router)
    extras.install(app)
    compact.install(app)
    usage.install(app)
    from ..traces.responses import open_response_store
    app.response_store = open_response_store(settings)
    return app


def tune_gc() -> None:
    """A long-lived server allocates many short-lived objects per request: collect the young
    generation less often, and move everything built at start-up (catalog, compiled policies)
    out of the collector's sight so full collections stay short.

    Almost nothing a call allocates is cyclic (a test holds compiled policies to that), so
    reference counting frees it and the young threshold mostly decides how often the collector
    walks what the caches keep. A call with a policy the router has not seen adds to them; at
    one such call per request (bench/new_policy.py) 100,000 instead of 20,000 took the
    collector's time from ~10 % to ~1.5 % of the in-process loop; served, 13-20 % more calls
    at c=64 and a p99 of 95-143 instead of 244-311 ms. With the suite's body, at c=1 and at
    c=64, the two measure the same."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def apply_cpu_scheduling(policy: str) -> str:
    """Put the calling thread, and every thread it starts from now on, under ``policy``.

    ``batch`` is Linux's SCHED_BATCH: the same fair share of the CPU, but a thread that wakes
    up does not preempt the one running. A router's threads wake each other all the time (the
    server's runtime thread hands a request to the event loop, the loop hands the answer
    back); on a shared core each such wake-up preempted the other thread, about five context
    switches per call, and SCHED_BATCH lets each run on and take several at once (measured in
    bench/: about a third more calls per second on one core, for tens of microseconds at
    concurrency 1; docs/performance.md). It needs no privilege. Returns what was applied:
    ``batch``, ``normal``, or ``unsupported`` where the platform has no such policy."""
    if policy != "batch":
        return "normal"
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return "unsupported"
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError:
        return "unsupported"
    return "batch"


def serve(settings: Settings, *, log_level: str = "warning", server: str = "granian",
          config_path: str | None = None, announce: str | None = None) -> None:  # pragma: no cover - exercised by the CLI
    """Run the router in this process.

    ``announce`` goes to stderr once the app is built (its catalog read and its trace store
    opened), so a catalog that cannot be read is reported without a "listening" line first.

    granian (RSGI, embedded: one process, no supervisor) is the faster server here;
    uvicorn (ASGI) is the fallback. SIGINT and SIGTERM stop accepting, let the calls in
    flight finish (for at most ``shutdown_grace_s``; what is left then is cut off) and drain
    the trace store.
    """
    applied = apply_cpu_scheduling(settings.cpu_scheduling)  # before any thread is started: they inherit it
    if applied != settings.cpu_scheduling:
        log.warning("cpu_scheduling %r is not available here; threads keep the platform's default",
                    settings.cpu_scheduling)
    if server == "granian":
        try:
            import granian.server.embed  # noqa: F401
        except ImportError:  # pragma: no cover - granian is a dependency
            server = "uvicorn"
        else:
            import signal

            from .rsgi import RSGIApp

            async def main() -> None:
                app = RSGIApp(build_app(settings))
                tune_gc()
                _announce(announce)
                srv = ShippedServer(app, settings, log_enabled=log_level in ("info", "debug"))
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, srv.stop)
                try:
                    await srv.serve()
                finally:
                    await app.app.router.close()

            try:
                import uvloop
                uvloop.run(main())
            except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
                asyncio.run(main())
            return
    import uvicorn

    app = build_app(settings)
    tune_gc()
    _announce(announce)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                loop="auto", http="auto", lifespan="on", timeout_graceful_shutdown=settings.shutdown_grace_s)


def resolve_port(host: str, port: int) -> int:
    """The port to serve on: ``port`` itself, or for 0 ("any free port") one the system picks now.

    granian binds inside its runtime and does not say which port 0 became, so ``serve --port 0``
    would announce ":0" and leave the caller no way to reach it. The port is asked of the system
    here, released, and handed to the server; another process could take it in between, in which
    case the server fails to bind and says so, rather than serving somewhere nobody knows.
    """
    if port != 0:
        return port
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _announce(text: str | None) -> None:
    if text:
        print(text, file=sys.stderr, flush=True)


class ShippedServer:
    """granian's embedded server over :class:`RSGIApp`, as ``unhardcoded serve`` runs it (one
    runtime thread). :meth:`stop` stops accepting; the calls in flight get
    ``settings.shutdown_grace_s`` to finish, then are cut off (:meth:`RSGIApp.cut_off`), so a stop
    always ends. (granian's own kill timeout only cancels the Python side of an embedded worker:
    its connections would go on being served.)"""

    def __init__(self, app: Any, settings: Settings, *, port: int | None = None, log_enabled: bool = False) -> None:
        from granian.constants import Interfaces
        from granian.server.embed import Server as Embedded

        self.app = app
        self.grace_s = settings.shutdown_grace_s
        self.cut = 0
        self._timer: Any = None
        self.granian = Embedded(app, address=settings.host, port=settings.port if port is None else port,
                                interface=Interfaces.RSGI, runtime_threads=1, backlog=2048, log_enabled=log_enabled)

    async def serve(self) -> None:
        try:
            await self.granian.serve()
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def stop(self) -> None:
        self.granian.stop()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._cut_off)

    def _cut_off(self) -> None:
        self.cut = self.app.cut_off()
        if self.cut:
            log.warning("%d call(s) still in flight after %s s of shutdown grace were cut off", self.cut, self.grace_s)
