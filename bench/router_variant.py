"""The router served as ``unhardcoded serve`` does, with knobs for diagnosis (not a target of the suite).

    python bench/router_variant.py --catalog FILE --port N --data-dir DIR [--sink sqlite|memory] [--gc default|freeze|off]

* ``--sink memory``: the router's in-memory ``TraceSink`` instead of the SQLite store
  (what the trace store costs);
* ``--gc freeze``: ``gc.freeze()`` after start-up, so collections skip the catalog, the
  compiled policies and the imported modules (whether GC pauses make the tail);
  ``--gc off`` disables the cyclic collector (diagnosis only: memory grows).

Uses only public entry points (``load_settings``, ``build_router``, ``build_app``) and
runs uvicorn with the arguments of ``unhardcoded.server.serve``.
"""

from __future__ import annotations

import argparse
import gc

import uvicorn

from unhardcoded.config import load_settings
from unhardcoded.router.engine import TraceSink
from unhardcoded.server import build_app, build_router


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--sink", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--gc", choices=("default", "freeze", "off"), default="default")
    a = ap.parse_args()
    settings = load_settings(None, port=a.port, catalog=a.catalog, data_dir=a.data_dir)
    router = build_router(settings, sink=TraceSink() if a.sink == "memory" else None)
    app = build_app(settings, router=router)
    if a.gc == "freeze":
        gc.collect()
        gc.freeze()
    elif a.gc == "off":
        gc.disable()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                loop="auto", http="auto", lifespan="on")


if __name__ == "__main__":
    main()
