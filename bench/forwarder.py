"""The bare forwarder: a minimal OpenAI-compatible proxy, the ceiling for a Python proxy here.

No policy, no trace, no validation beyond reading ``stream`` from the body: it
forwards the request bytes to one upstream and the answer back. The server and
the upstream client are interchangeable so that ``bench/harness.py`` can
measure the candidate stacks and run the fastest:

* servers: ``uvicorn`` (raw ASGI app, httptools + uvloop), ``granian`` (RSGI,
  one worker, uvloop), ``socketify`` (uWebSockets), ``aiohttp`` (aiohttp.web on uvloop);
* clients: ``aiohttp`` (one pooled ClientSession) or ``raw`` (a keep-alive pool of
  asyncio protocols speaking just enough HTTP/1.1; streaming always uses aiohttp).

Paths:

* ``POST /v1/chat/completions``          -> upstream ``/v1/chat/completions``
* ``POST /fallback/v1/chat/completions`` -> upstream ``/429/v1/chat/completions``; on a 429,
  upstream ``/v1/chat/completions`` (the least a proxy can do for a fallback)

    python bench/forwarder.py --server uvicorn --client raw --port 18001 --upstream http://127.0.0.1:18000
"""

from __future__ import annotations

import argparse
import asyncio
import os
from urllib.parse import urlsplit

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        return _loads(body).get("stream") is True
    except Exception:
        return False


UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18000")
CLIENT_KIND = os.environ.get("BENCH_FWD_CLIENT", "raw")
_u = urlsplit(UPSTREAM)
UP_HOST, UP_PORT = _u.hostname or "127.0.0.1", _u.port or 80

P_CHAT = "/v1/chat/completions"
P_429 = "/429/v1/chat/completions"
JSON_CT = b"application/json"


# ---------------------------------------------------------------- raw client
class _Conn(asyncio.Protocol):
    __slots__ = ("t", "buf", "fut", "closed")

    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, t: asyncio.BaseTransport) -> None:
        self.t = t  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        fut = self.fut
        if fut is None:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:  # not what the mock upstream sends for a whole answer
            self.closed = True
            self.t.close()  # type: ignore[union-attr]
            if not fut.done():
                fut.set_exception(ConnectionError("response without content-length"))
            return
        j = head.find(b"\r\n", i + 2)
        clen = int(head[i + 17: j if j > 0 else len(head)])
        total = end + 4 + clen
        if len(buf) < total:
            return
        status = int(head[9:12])
        k = head.find(b"\r\ncontent-type:")
        ctype = JSON_CT
        if k >= 0:
            m = head.find(b"\r\n", k + 2)
            ctype = bytes(buf[k + 15: m if m > 0 else end]).strip()
        body = bytes(buf[end + 4: total])
        del buf[:total]
        self.fut = None
        if not fut.done():
            fut.set_result((status, ctype, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("upstream closed the connection"))


class RawPool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_Conn] = []
        self.hosthdr = f"{host}:{port}".encode()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        loop = asyncio.get_running_loop()
        conn = None
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            _, conn = await loop.create_connection(_Conn, self.host, self.port)
        conn.fut = fut = loop.create_future()
        conn.t.write(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: " + self.hosthdr  # type: ignore[union-attr]
                     + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        try:
            res = await fut
        except BaseException:
            conn.closed = True
            conn.t.close()  # type: ignore[union-attr]
            raise
        self.idle.append(conn)
        return res


# ---------------------------------------------------------------- aiohttp client
class AiohttpClient:
    def __init__(self) -> None:
        import aiohttp
        self.aiohttp = aiohttp
        self.session: "aiohttp.ClientSession | None" = None

    def _s(self):  # noqa: ANN202
        if self.session is None:
            conn = self.aiohttp.TCPConnector(limit=512, limit_per_host=512, ttl_dns_cache=300)
            self.session = self.aiohttp.ClientSession(connector=conn, skip_auto_headers=("User-Agent",),
                                                      auto_decompress=False)
        return self.session

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        async with self._s().post(UPSTREAM + path, data=body, headers={"content-type": "application/json"}) as r:
            data = await r.read()
            return r.status, r.headers.get("content-type", "application/json").encode(), data

    async def stream(self, path: str, body: bytes):  # noqa: ANN201
        """Yields (status, content-type) first, then the body chunks as they arrive."""
        async with self._s().post(UPSTREAM + path, data=body, headers={"content-type": "application/json"}) as r:
            yield r.status, r.headers.get("content-type", "text/event-stream").encode()
            async for chunk in r.content.iter_any():
                yield chunk


_raw: RawPool | None = None
_aio: AiohttpClient | None = None


def _clients() -> tuple[RawPool | None, AiohttpClient]:
    global _raw, _aio
    if _aio is None:
        _aio = AiohttpClient()
        _raw = RawPool(UP_HOST, UP_PORT) if CLIENT_KIND == "raw" else None
    return _raw, _aio


async def forward(path: str, body: bytes) -> tuple[int, bytes, bytes]:
    """A whole (non-streaming) answer: (status, content-type, body)."""
    raw, aio = _clients()
    post = raw.post if raw is not None else aio.post
    if path == P_CHAT:
        return await post(P_CHAT, body)
    if path == "/fallback" + P_CHAT:
        res = await post(P_429, body)
        if res[0] == 429:
            res = await post(P_CHAT, body)
        return res
    return 404, JSON_CT, b'{"error":{"message":"not found"}}'


def upstream_path(path: str) -> str | None:
    return P_CHAT if path in (P_CHAT, "/fallback" + P_CHAT) else None


# ---------------------------------------------------------------- servers
async def asgi_app(scope, receive, send):  # noqa: ANN001, ANN201
    """Raw ASGI (for uvicorn)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    msg = await receive()
    body = msg.get("body", b"")
    while msg.get("more_body"):
        msg = await receive()
        body += msg.get("body", b"")
    path = scope["path"]
    if _wants_stream(body) and upstream_path(path):
        _, aio = _clients()
        it = aio.stream(upstream_path(path), body).__aiter__()  # type: ignore[arg-type]
        status, ctype = await it.__anext__()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        async for chunk in it:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    status, ctype, data = await forward(path, body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def rsgi_app(scope, proto):  # noqa: ANN001, ANN201
    """RSGI (for granian)."""
    if scope.proto != "http":
        return
    body = await proto()
    path = scope.path
    if _wants_stream(body) and upstream_path(path):
        _, aio = _clients()
        it = aio.stream(upstream_path(path), body).__aiter__()  # type: ignore[arg-type]
        status, ctype = await it.__anext__()
        tr = proto.response_stream(status, [("content-type", ctype.decode())])
        async for chunk in it:
            await tr.send_bytes(chunk)
        return
    status, ctype, data = await forward(path, body)
    proto.response_bytes(status, [("content-type", ctype.decode())], data)


def run_uvicorn(host: str, port: int) -> None:
    import uvicorn
    uvicorn.run(asgi_app, host=host, port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="on", backlog=4096)


def run_granian(host: str, port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    kwargs = dict(address=host, port=port, interface=Interfaces.RSGI, workers=1, loop=Loops.uvloop,
                  log_enabled=False, backlog=4096)
    try:
        srv = Granian("forwarder:rsgi_app", runtime_threads=1, **kwargs)
    except TypeError:  # older/newer signature
        srv = Granian("forwarder:rsgi_app", **kwargs)
    srv.serve()


def run_aiohttp(host: str, port: int) -> None:
    import uvloop
    from aiohttp import web

    async def handle(request: "web.Request") -> "web.StreamResponse":
        body = await request.read()
        path = request.path
        if _wants_stream(body) and upstream_path(path):
            _, aio = _clients()
            it = aio.stream(upstream_path(path), body).__aiter__()  # type: ignore[arg-type]
            status, ctype = await it.__anext__()
            resp = web.StreamResponse(status=status, headers={"content-type": ctype.decode()})
            await resp.prepare(request)
            async for chunk in it:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        status, ctype, data = await forward(path, body)
        return web.Response(status=status, body=data, headers={"content-type": ctype.decode()})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    uvloop.install()
    web.run_app(app, host=host, port=port, access_log=None, print=None, backlog=4096)


def run_socketify(host: str, port: int) -> None:
    from socketify import App

    app = App()

    async def handle(res, req):  # noqa: ANN001, ANN202
        path = req.get_url()
        body = await res.get_data()
        body = body.getvalue() if hasattr(body, "getvalue") else bytes(body)
        if _wants_stream(body) and upstream_path(path):
            _, aio = _clients()
            it = aio.stream(upstream_path(path), body).__aiter__()  # type: ignore[arg-type]
            status, ctype = await it.__anext__()
            res.write_status(status)
            res.write_header("content-type", ctype.decode())
            async for chunk in it:
                res.write(chunk)
            res.end_without_body() if hasattr(res, "end_without_body") else res.end(b"")
            return
        status, ctype, data = await forward(path, body)
        res.cork(lambda r: r.write_status(status).write_header("content-type", ctype.decode()).end(data))

    app.any("/*", handle)
    app.listen(port, lambda cfg: None)
    app.run()


SERVERS = {"uvicorn": run_uvicorn, "granian": run_granian, "aiohttp": run_aiohttp, "socketify": run_socketify}


def main() -> None:
    global CLIENT_KIND, UPSTREAM, UP_HOST, UP_PORT
    ap = argparse.ArgumentParser(description="bare forwarder (bench)")
    ap.add_argument("--server", choices=sorted(SERVERS), default="uvicorn")
    ap.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18001)
    ap.add_argument("--upstream", default=UPSTREAM)
    a = ap.parse_args()
    # granian re-imports this module in its worker: hand the settings over by environment
    os.environ["BENCH_UPSTREAM"] = UPSTREAM = a.upstream
    os.environ["BENCH_FWD_CLIENT"] = CLIENT_KIND = a.client
    u = urlsplit(UPSTREAM)
    UP_HOST, UP_PORT = u.hostname or "127.0.0.1", u.port or 80
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    SERVERS[a.server](a.host, a.port)


if __name__ == "__main__":
    main()
