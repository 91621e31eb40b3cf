"""Serving the application on granian's RSGI interface (what ``unhardcoded serve`` runs).

The chat endpoint, the one every call goes through, is served natively: the
body is read once, the caller key taken from granian's header map, and the
answer written with ``response_bytes`` (or a response stream), with no ASGI
scope or message dicts in between. Every other endpoint goes through the ASGI
application, the one implementation of the HTTP surface, adapted here (a scope
dict, a ``receive`` that yields the body once and then waits for the client to
go away, a ``send`` that answers in one piece or opens a stream). granian's init
and shutdown hooks start and drain the trace store.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .app import SESSION_HEADER, App, HTTPError, until_disconnect

_CHAT = "/chat/completions"
_CUT_OFF = HTTPError(503, "shutting_down", "the router is shutting down; the call was cut off at the end of its "
                     "shutdown grace", type_="router_error", headers=[(b"retry-after", b"1")])


class _Sender:
    """ASGI ``send`` over an RSGI protocol: one ``response_bytes``, or a stream once a body says more follows."""

    __slots__ = ("proto", "status", "headers", "stream", "started")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self.stream: Any = None
        self.started = False

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                head: bool = False) -> None:
        """A whole JSON answer in one ``response_bytes`` (for a HEAD, its length and no body)."""
        hs = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if headers:
            hs += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        self.started = True
        self.proto.response_bytes(status, hs, b"" if head else body)

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            self.started = True
            return
        data = message.get("body", b"")
        stream = self.stream
        if stream is None:
            if not message.get("more_body", False):
                self.proto.response_bytes(self.status, self.headers, data)
                return
            stream = self.stream = self.proto.response_stream(self.status, self.headers)
        if data:
            await stream.send_bytes(data)


class RSGIApp:
    def __init__(self, app: App) -> None:
        self.app = app
        self._inflight: set[asyncio.Task[Any]] = set()   # chat calls being served

    def cut_off(self) -> int:
        """End the chat calls still in flight (the shutdown grace is over): each is cancelled,
        answered 503 ``shutting_down`` if nothing was sent yet, and recorded with status
        ``shutdown``. Returns how many were cut."""
        self.app.router.cut_off()
        tasks = list(self._inflight)
        for t in tasks:
            t.cancel()
        return len(tasks)

    def __rsgi_init__(self, loop: Any) -> None:
        start = getattr(self.app.router.sink, "start", None)
        if start is not None:
            start()

    def __rsgi_del__(self, loop: Any) -> None:
        router = self.app.router
        if not loop.is_running() and not loop.is_closed():
            loop.run_until_complete(router.close())
            return
        # embedded in a running loop (`unhardcoded serve`): drain the store now; whoever runs
        # the loop closes the rest of the router
        close = getattr(router.sink, "close", None)
        if close is not None:
            close()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "POST" and scope.path.endswith(_CHAT):
            await self._chat(scope, proto)
        else:
            await self._asgi(scope, proto)

    async def _chat(self, scope: Any, proto: Any) -> None:
        app = self.app
        send = _Sender(proto)
        task = asyncio.current_task()
        inflight = self._inflight
        inflight.add(task)  # type: ignore[arg-type]
        try:
            profile = app.chat_profile(scope.path)
            app.check_caller(scope.headers.get("authorization"))
            body = app.parse_body(await _read_body(app, scope, proto))
            app.session_from_header(body, scope.headers.get(SESSION_HEADER))
            await _until_disconnect(app.chat(body, profile, send), proto)
        except (Exception, asyncio.CancelledError) as exc:  # never a traceback to the caller
            if isinstance(exc, asyncio.CancelledError):
                if not app.router.cutting_off:
                    raise
                exc = _CUT_OFF
            if send.started:  # a stream is open: the router has already ended it with an error event
                return
            status, payload, headers = app.error_response(exc, scope.method, scope.path)
            await app._send_json(send, status, payload, headers)
        finally:
            inflight.discard(task)  # type: ignore[arg-type]

    async def _asgi(self, scope: Any, proto: Any) -> None:
        try:
            body = await _read_body(self.app, scope, proto)
        except Exception as exc:  # too large: refused before the rest is read
            status, payload, headers = self.app.error_response(exc, scope.method, scope.path)
            await self.app._send_json(_Sender(proto), status, payload, headers)
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        asgi_scope = {"type": "http", "method": scope.method, "path": scope.path,
                      "query_string": scope.query_string.encode("latin-1"), "headers": headers}
        sent_body = False
        wait_gone = _disconnected(proto)

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await wait_gone()
            return {"type": "http.disconnect"}

        await self.app(asgi_scope, receive, _Sender(proto))


async def _read_body(app: App, scope: Any, proto: Any) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to be over the limit: at once
    from a declared content-length, else chunk by chunk (never buffered whole first)."""
    declared = scope.headers.get("content-length")
    if declared is not None and declared.strip().isdigit():
        app.check_size(int(declared))
        return await proto()
    chunks, size = [], 0
    async for chunk in proto:
        size += len(chunk)
        app.check_size(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _until_disconnect(work: Any, proto: Any) -> None:
    """Run ``work`` in this request's own task and cancel it if the client goes away first.

    granian hands out the disconnect as a future and, with its asyncio task implementation (the
    one ``unhardcoded serve`` uses), runs each request in a plain ``asyncio.Task``: a callback on
    the future cancels that task, with no second or third task per request. Anywhere else (a
    task that cannot be cancelled, a disconnect that is only a coroutine) the work runs in a task
    of its own with a watcher beside it."""
    disconnected = _disconnected(proto)
    waiter = disconnected()
    task = asyncio.current_task()
    if type(task) is not asyncio.Task or not hasattr(waiter, "add_done_callback"):
        if asyncio.iscoroutine(waiter):
            waiter.close()  # the watcher asks for its own
        await until_disconnect(work, disconnected)
        return

    def gone(_: Any) -> None:
        task.cancel()

    waiter.add_done_callback(gone)
    try:
        await work
    except asyncio.CancelledError:
        if not waiter.done():  # cancelled for another reason: not ours to swallow
            raise
    finally:
        waiter.remove_done_callback(gone)
        if not waiter.done():
            waiter.cancel()


def _disconnected(proto: Any) -> Any:
    waiter = getattr(proto, "client_disconnect", None)
    if waiter is not None:
        return waiter

    async def never() -> None:  # pragma: no cover - older granian: never learn of a disconnect
        await asyncio.Event().wait()

    return never


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
