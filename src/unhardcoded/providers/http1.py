"""A small, fast HTTP/1.1 client for upstream calls: keep-alive pools, TLS, streaming.

Why not a general client: measured in ``bench/`` on this machine, an aiohttp
``ClientSession`` costs a proxy about three times its whole per-request budget
(a bare forwarder does ~11k req/s with this style of client and ~3.7k with
aiohttp's). Upstream calls are one narrow case — POST a JSON body, read a
status, headers and a body that may stream — so the client is small:
``asyncio`` protocols, and ``httptools`` (the parser uvicorn is built on) for
responses, so chunked bodies, keep-alive and header folding are parsed by a
well-kept parser, not by us.

* One pool per (scheme, host, port); idle connections are reused (LIFO) and
  dropped after ``idle_timeout_s``.
* A reused connection the server had already closed is retried once on a fresh
  one, but only if no byte of the answer had arrived (so a request is never
  sent twice after the server began to answer).
* Response headers come back as a dict with lower-case names.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools

_CRLF = b"\r\n"


class HTTPError(Exception):
    """Transport failure: ``kind`` is ``network_error`` or ``timeout``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Parts:
    """A streamed body as it arrives: parts appended by the connection, taken by one reader.

    What ``asyncio.Queue`` would do for this one-writer, one-reader case, at a fraction of its
    cost per part (a long answer is hundreds of parts): the reader waits on a future of its own
    only when nothing is there, and the writer resolves it."""

    __slots__ = ("items", "ended", "waiter", "since")

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.ended = False
        self.waiter: asyncio.Future | None = None   # the reader, waiting for the next part
        self.since = 0.0                            # loop time the reader began to wait

    def put(self, part: bytes | None) -> None:
        """A part, or None: the body is over (complete, or failed: see the connection's ``exc``)."""
        if part is None:
            self.ended = True
        else:
            self.items.append(part)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


def _watch_stall(parts: _Parts, stall_s: float, loop: asyncio.AbstractEventLoop, timers: list) -> None:
    """The stall timer of a stream: one per stall period, not one per part. It fails the reader's
    wait once it has lasted ``stall_s`` with nothing arriving, and otherwise looks again when the
    current wait (or a wait starting now) would have lasted that long."""
    if parts.ended:  # the body is over: nothing left to stall (the reader takes what is there)
        timers[0] = None
        return
    w = parts.waiter
    left = stall_s
    if w is not None and not w.done():
        left = parts.since + stall_s - loop.time()
        if left <= 0:
            w.set_exception(HTTPError("timeout", "the stream stalled"))
            return
    timers[0] = loop.call_later(left, _watch_stall, parts, stall_s, loop, timers)


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "status", "headers", "_hname", "body", "chunks", "done", "waiter",
                 "head_done", "closed", "got_bytes", "keep_alive", "last_used", "streaming", "exc")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # The parser holds this protocol's methods, so the two form a cycle while both live: made
        # once connected and dropped when the connection is lost, so that neither a refused
        # connect nor a closed connection leaves a cycle for the collector.
        self.parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._hname = ""
        self.body: list[bytes] = []
        self.chunks: _Parts | None = None
        self.done: asyncio.Future | None = None      # resolves when the message is complete
        self.waiter: asyncio.Future | None = None    # resolves when the headers are in (streaming)
        self.head_done = False
        self.got_bytes = False
        self.keep_alive = True
        self.streaming = False
        self.exc: BaseException | None = None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.parser is None:  # pragma: no cover - asyncio delivers no data after connection_lost
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self._fail(HTTPError("network_error", "unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(HTTPError("network_error", f"malformed HTTP response ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            if self.done is not None and not self.done.done():
                if self.parser is not None and self.head_done and not self.headers.get("content-length") \
                        and "chunked" not in self.headers.get("transfer-encoding", ""):
                    # a body delimited by the connection's end: the end is the end
                    self.on_message_complete()
                    return
                self._fail(HTTPError("network_error", "the upstream closed the connection"
                                     + (" mid-response" if self.got_bytes else "")))
        finally:
            self.parser = None  # nothing more to parse: break the cycle

    # -- httptools callbacks ------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {val}" if key in self.headers else val

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.streaming and self.chunks is not None:
            self.chunks.put(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.chunks is not None:
            self.chunks.put(None)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.exc = exc
        self.keep_alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # mark retrieved: a stream reader may report it instead
        if self.chunks is not None:
            self.chunks.put(None)
        if self.transport is not None:
            self.transport.close()


class _Pool:
    def __init__(self, scheme: str, host: str, port: int, ssl_ctx: ssl.SSLContext | None, max_idle: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.ssl = ssl_ctx if scheme == "https" else None
        self.idle: list[_Conn] = []
        self.max_idle = max_idle
        default = 443 if scheme == "https" else 80
        self.host_header = (host if port == default else f"{host}:{port}").encode("idna")

    async def connect(self, timeout_s: float) -> _Conn:
        loop = asyncio.get_running_loop()
        made: list[_Conn] = []

        def protocol() -> _Conn:
            made.append(conn := _Conn())
            return conn
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    _, conn = await loop.create_connection(
                        protocol, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
            except BaseException:
                # failed or cancelled (the caller left) once the protocol was made, maybe connected:
                # uvloop may then close the transport without calling connection_lost, so the
                # protocol lets go of its parser and transport here (no cycle left to the collector)
                for c in made:
                    c.closed = True
                    c.parser = None
                    transport, c.transport = c.transport, None
                    if transport is not None:
                        transport.close()
                raise
            finally:
                made.clear()
        except (TimeoutError, asyncio.TimeoutError):
            raise HTTPError("timeout", f"could not connect to {self.host}:{self.port} in {timeout_s:g} s") from None
        except OSError as exc:
            raise HTTPError("network_error", f"cannot connect to {self.host}:{self.port} ({exc.strerror or type(exc).__name__})") from None
        except ssl.SSLError as exc:  # pragma: no cover - needs a real TLS peer
            raise HTTPError("network_error", f"TLS with {self.host} failed ({exc.reason})") from None
        return conn

    def take(self, idle_timeout_s: float) -> _Conn | None:
        now = time.monotonic()
        while self.idle:
            c = self.idle.pop()
            if not c.closed and now - c.last_used < idle_timeout_s:
                return c
            if c.transport is not None:
                c.transport.close()
        return None

    def give(self, c: _Conn) -> None:
        if c.closed or not c.keep_alive or c.exc is not None:
            if c.transport is not None:
                c.transport.close()
            return
        c._reset()
        c.last_used = time.monotonic()
        if len(self.idle) < self.max_idle:
            self.idle.append(c)
        elif c.transport is not None:
            c.transport.close()


def _expire(conn: _Conn, timeout_s: float) -> None:
    conn._fail(HTTPError("timeout", f"no answer within {timeout_s:g} s"))


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class StreamingResponse:
    """Status and headers are in; :meth:`chunks` yields the body as it arrives."""

    def __init__(self, client: "Client", pool: _Pool, conn: _Conn) -> None:
        self._client, self._pool, self._conn = client, pool, conn
        self.status = conn.status
        self.headers = conn.headers
        self._finished = False

    async def chunks(self, stall_timeout_s: float | None = None) -> AsyncIterator[bytes]:
        """The body's parts as they arrive. A wait of ``stall_timeout_s`` with nothing arriving
        raises ``HTTPError("timeout")``; a failed connection raises its error after the parts
        that came before it."""
        parts = self._conn.chunks
        assert parts is not None
        for part in self._conn.body:  # anything that arrived before streaming was switched on
            yield part
        self._conn.body = []
        items = parts.items
        loop = asyncio.get_running_loop()
        timers: list = [None]
        try:
            while True:
                if items:
                    yield items.popleft()
                    continue
                if parts.ended:
                    if self._conn.exc is not None:
                        raise self._conn.exc
                    self._finished = True
                    return
                parts.waiter = w = loop.create_future()
                parts.since = loop.time()
                if stall_timeout_s is not None and timers[0] is None:
                    timers[0] = loop.call_later(stall_timeout_s, _watch_stall, parts, stall_timeout_s, loop, timers)
                try:
                    await w
                finally:
                    parts.waiter = None
        finally:
            if timers[0] is not None:
                timers[0].cancel()

    async def read_all(self, timeout_s: float | None = None) -> bytes:
        out = []
        async for part in self.chunks(timeout_s):
            out.append(part)
        return b"".join(out)

    def close(self) -> None:
        if self._finished:
            self._pool.give(self._conn)
        else:
            self._conn.keep_alive = False
            if self._conn.transport is not None:
                self._conn.transport.close()
        self._finished = True


class Client:
    def __init__(self, *, connect_timeout_s: float = 10.0, max_idle_per_host: int = 256,
                 idle_timeout_s: float = 60.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_host
        self.idle_timeout_s = idle_timeout_s
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._urls: dict[str, tuple[_Pool, bytes]] = {}  # url -> (its pool, request target): parsed once
        self._heads: dict[tuple, tuple[dict[str, str], int, bytes]] = {}
        self._ssl = ssl.create_default_context()

    def _pool(self, url: str) -> tuple[_Pool, bytes]:
        hit = self._urls.get(url)
        if hit is not None:
            return hit
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError("network_error", f"not an http(s) URL: {url[:80]}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(scheme, parts.hostname, port, self._ssl, self.max_idle)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        out = (pool, target.encode("latin-1"))
        if len(self._urls) < 4096:  # a provider's few endpoints; a URL per request (keys in queries) is not cached forever
            self._urls[url] = out
        return out

    def _head(self, method: str, target: bytes, host: bytes, headers: dict[str, str], body: bytes) -> bytes:
        """The request head. Everything but the length is rendered once per (method, target,
        host, headers dict): wires hand the same headers dict for every call to one endpoint."""
        key = (method, target, host, id(headers))
        hit = self._heads.get(key)
        if hit is None or hit[0] is not headers or hit[1] != len(headers):
            lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: " + host]
            for k, v in headers.items():
                lk = k.lower()
                if lk in ("host", "content-length", "connection", "transfer-encoding"):
                    continue
                lines.append(k.encode("latin-1") + b": " + v.encode("latin-1"))
            hit = (headers, len(headers), _CRLF.join(lines) + b"\r\ncontent-length: ")
            if len(self._heads) > 4096:
                self._heads.clear()
            self._heads[key] = hit  # holds the dict: its id is not reused under the entry
        return hit[2] + str(len(body)).encode() + b"\r\n\r\n"

    async def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes,
                        streaming: bool, timeout_s: float | None = None) -> tuple[_Pool, _Conn]:
        pool, target = self._pool(url)
        head = self._head(method, target, pool.host_header, headers, body)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        for attempt in (0, 1):
            conn = pool.take(self.idle_timeout_s)
            reused = conn is not None
            if conn is None:
                connect_s = self.connect_timeout_s
                if deadline is not None:
                    connect_s = min(connect_s, max(deadline - loop.time(), 0.0))
                conn = await pool.connect(connect_s)
            conn.streaming = streaming
            conn.done = loop.create_future()
            if streaming:
                conn.chunks = _Parts()
                conn.waiter = loop.create_future()
            assert conn.transport is not None
            # one timer per request (cheaper than a timeout context): when it fires the answer is
            # failed and the connection closed, so a late answer can never reach the next request
            timer = None if deadline is None else loop.call_at(deadline, _expire, conn, timeout_s)
            conn.transport.write(head + body)
            try:
                await (conn.waiter if streaming else conn.done)
                return pool, conn
            except HTTPError:
                if reused and not conn.got_bytes and attempt == 0 and conn.exc is not None \
                        and conn.exc.kind != "timeout":
                    continue  # the server had closed the idle connection: once more, fresh
                raise
            except BaseException:
                conn.keep_alive = False
                if conn.transport is not None:
                    conn.transport.close()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
        raise HTTPError("network_error", "unreachable")  # pragma: no cover

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes,
                      timeout_s: float | None = None) -> Response:
        """One exchange, whole answer; ``timeout_s`` bounds connecting, sending and reading it all
        (``HTTPError`` kind ``timeout``)."""
        pool, conn = await self._exchange(method, url, headers, body, streaming=False, timeout_s=timeout_s)
        resp = Response(conn.status, conn.headers, b"".join(conn.body))
        pool.give(conn)
        return resp

    async def stream(self, method: str, url: str, headers: dict[str, str], body: bytes) -> StreamingResponse:
        pool, conn = await self._exchange(method, url, headers, body, streaming=True)
        return StreamingResponse(self, pool, conn)

    def close(self) -> None:
        for pool in self._pools.values():
            for c in pool.idle:
                if c.transport is not None:
                    c.transport.close()
            pool.idle.clear()
