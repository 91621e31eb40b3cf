"""The HTTP server: build the application from settings, run it with uvicorn."""

from __future__ import annotations

from typing import Any

from ..catalog import load_catalog
from ..config import Settings
from ..router.engine import Router
from .app import App


def build_router(settings: Settings, *, sink: Any = None) -> Router:
    catalog = load_catalog(settings.catalog)
    if sink is None:
        from ..traces import open_store
        sink = open_store(settings)
    return Router(catalog, settings, sink=sink)


def build_app(settings: Settings, *, router: Router | None = None) -> App:
    router = router or build_router(settings)
    from .extras import install
    app = App(router)
    install(app)
    return app


def tune_gc() -> None:
    """A long-lived server allocates many short-lived objects per request: collect the young
    generation less often, and move everything built at start-up (catalog, compiled policies)
    out of the collector's sight so full collections stay short."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def serve(settings: Settings, *, log_level: str = "warning", server: str = "granian",
          config_path: str | None = None) -> None:  # pragma: no cover - exercised by the CLI
    """Run the router. granian (RSGI) is the faster server here; uvicorn (ASGI) is the fallback."""
    if server == "granian":
        try:
            from granian import Granian
            from granian.constants import Interfaces, Loops
        except ImportError:
            server = "uvicorn"
        else:
            import os
            os.environ["UNHARDCODED_CATALOG"] = settings.catalog or ""
            os.environ["UNHARDCODED_DATA"] = settings.data_dir
            os.environ["UNHARDCODED_CONFIG"] = config_path or ""
            Granian("unhardcoded.server.rsgi:make_app", factory=True, address=settings.host, port=settings.port,
                    interface=Interfaces.RSGI, workers=1, runtime_threads=1, loop=Loops.auto,
                    log_enabled=log_level in ("info", "debug"), backlog=2048).serve()
            return
    import uvicorn

    app = build_app(settings)
    tune_gc()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                loop="auto", http="auto", lifespan="on")
