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


def serve(settings: Settings, *, log_level: str = "warning") -> None:  # pragma: no cover - exercised by the CLI
    import uvicorn

    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                loop="auto", http="auto", lifespan="on")
