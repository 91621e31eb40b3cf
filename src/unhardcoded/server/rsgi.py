"""Serving the same application on granian's RSGI interface (the faster server here).

``unhardcoded serve --server granian`` runs :func:`make_app` in granian's worker.
The ASGI application stays the one implementation of the HTTP surface; this
module only adapts RSGI's scope and protocol to it (a scope dict, a ``receive``
that yields the body once and then waits for the client to go away, a ``send``
that answers in one piece or opens a stream), and maps granian's init and
shutdown hooks to the trace store's start and drain.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .app import App


class RSGIApp:
    def __init__(self, app: App) -> None:
        self.app = app

    def __rsgi_init__(self, loop: Any) -> None:
        start = getattr(self.app.router.sink, "start", None)
        if start is not None:
            start()

    def __rsgi_del__(self, loop: Any) -> None:
        router = self.app.router
        try:
            loop.run_until_complete(router.close())
        except RuntimeError:  # the loop is already running or closed: drain the store directly
            close = getattr(router.sink, "close", None)
            if close is not None:
                close()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        body = await proto()
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        asgi_scope = {"type": "http", "method": scope.method, "path": scope.path,
                      "query_string": scope.query_string.encode("latin-1"), "headers": headers}
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            waiter = getattr(proto, "client_disconnect", None)
            if waiter is not None:
                await waiter()
            else:  # pragma: no cover - older granian: never learn of a disconnect
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        state: dict[str, Any] = {"status": 200, "headers": [], "stream": None}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["headers"] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                return
            data = message.get("body", b"")
            more = message.get("more_body", False)
            stream = state["stream"]
            if stream is None and not more:
                proto.response_bytes(state["status"], state["headers"], data)
                return
            if stream is None:
                stream = state["stream"] = proto.response_stream(state["status"], state["headers"])
            if data:
                await stream.send_bytes(data)

        await self.app(asgi_scope, receive, send)


def make_app() -> RSGIApp:
    """granian's factory: settings from the environment the CLI prepared."""
    from ..config import load_settings
    from . import build_app, tune_gc

    settings = load_settings(os.environ.get("UNHARDCODED_CONFIG") or None,
                             catalog=os.environ.get("UNHARDCODED_CATALOG") or None,
                             data_dir=os.environ.get("UNHARDCODED_DATA") or None)
    app = RSGIApp(build_app(settings))
    tune_gc()
    return app
