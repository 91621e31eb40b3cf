"""The upstream HTTP/1.1 client against a raw server that can misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from unhardcoded.providers.http1 import Client, HTTPError


class RawServer:
    """Answers each request with the next scripted action (bytes to send, or a callable)."""

    def __init__(self) -> None:
        self.script: list = []
        self.connections = 0
        self.requests: list[bytes] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                action = self.script.pop(0) if self.script else ok(b"{}")
                if callable(action):
                    await action(writer)
                    return
                writer.write(action)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode() \
        + b"\r\n" + extra + b"\r\n" + body


@pytest.fixture
async def server():
    s = RawServer()
    s.url = await s.start()
    yield s
    await s.stop()


async def test_keep_alive_reuses_one_connection(server) -> None:
    c = Client()
    for i in range(5):
        server.script.append(ok(b'{"n": %d}' % i))
        r = await c.request("POST", server.url + "/v1/x?y=1", {"authorization": "Bearer k"}, b'{"a": 1}')
        assert r.status == 200 and r.body == b'{"n": %d}' % i
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: Bearer k" in server.requests[0]
    c.close()


async def test_chunked_response_and_lowercase_headers(server) -> None:
    server.script.append(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    c = Client()
    r = await c.request("POST", server.url, {}, b"x")
    assert r.status == 429 and r.body == b"hello world" and r.headers["retry-after"] == "3"
    c.close()


async def test_a_stale_idle_connection_is_retried_once_on_a_fresh_one(server) -> None:
    async def close_now(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first", b"connection: keep-alive\r\n"))
        await writer.drain()
        writer.close()  # the server drops the connection the client will want to reuse
    server.script += [close_now, ok(b"second")]
    c = Client()
    assert (await c.request("POST", server.url, {}, b"1")).body == b"first"
    await asyncio.sleep(0.05)
    assert (await c.request("POST", server.url, {}, b"2")).body == b"second"
    assert server.connections == 2
    c.close()


async def test_a_connection_dropped_mid_response_is_a_network_error(server) -> None:
    async def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial")
        await writer.drain()
    server.script.append(half)
    c = Client()
    with pytest.raises(HTTPError) as e:
        await c.request("POST", server.url, {}, b"x")
    assert e.value.kind == "network_error" and "mid-response" in e.value.message
    c.close()


async def test_streaming_yields_chunks_as_they_arrive(server) -> None:
    gate = asyncio.Event()

    async def slow(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
                     b"8\r\ndata: 1\n\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
        await writer.drain()
    server.script.append(slow)
    c = Client()
    s = await c.stream("POST", server.url, {}, b"x")
    assert s.status == 200 and s.headers["content-type"] == "text/event-stream"
    it = s.chunks(5).__aiter__()
    assert await it.__anext__() == b"data: 1\n"
    gate.set()
    assert await it.__anext__() == b"data: 2\n"
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    s.close()
    c.close()


_CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@contextlib.asynccontextmanager
async def _streamed(server, script):  # noqa: ANN001, ANN202
    """A streamed answer from ``script`` (what the scripted server writes), closed after."""
    server.script.append(script)
    c = Client()
    s = await c.stream("POST", server.url, {}, b"x")
    try:
        yield s
    finally:
        s.close()
        c.close()


async def test_a_stalled_stream_times_out(server) -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(_CHUNKED)
        await writer.drain()
        await asyncio.sleep(5)
    async with _streamed(server, stall) as s:
        with pytest.raises(HTTPError) as e:
            async for _ in s.chunks(0.2):
                pass
    assert e.value.kind == "timeout"


async def test_the_stall_timeout_counts_from_the_last_part(server) -> None:
    # the stream's one stall timer must measure each wait, not the stream: parts 0.1 s apart for
    # ~1 s under a 0.3 s stall bound pass; then nothing comes, and the wait fails after ~0.3 s
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(_CHUNKED)
        for _ in range(10):
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"8\r\ndata: x\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)
    got, t_last = 0, 0.0
    async with _streamed(server, trickle) as s:
        with pytest.raises(HTTPError) as e:
            async for _ in s.chunks(0.3):
                got += 1
                t_last = time.monotonic()
    assert e.value.kind == "timeout" and got == 10
    assert 0.25 < time.monotonic() - t_last < 1.5


async def test_a_stream_cut_after_some_parts_gives_them_then_fails(server) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(_CHUNKED + b"8\r\ndata: 1\n\r\n8\r\ndata: 2\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
    got = []
    async with _streamed(server, cut) as s:
        with pytest.raises(HTTPError) as e:
            async for part in s.chunks(5):
                got.append(part)
    assert b"".join(got) == b"data: 1\ndata: 2\n" and e.value.kind == "network_error"


async def test_connection_refused_is_a_network_error() -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = Client()
    with pytest.raises(HTTPError) as e:
        await c.request("POST", f"http://127.0.0.1:{port}/", {}, b"")
    assert e.value.kind == "network_error"


async def test_not_an_http_url_is_refused() -> None:
    with pytest.raises(HTTPError):
        await Client().request("POST", "ftp://example/", {}, b"")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_refused_and_closed_connections_leave_no_cycle(loop) -> None:
    # the parser holds the connection's callbacks: while both live they form a cycle, so each
    # refused connect (a provider down: every call tries every route) or closed connection used
    # to leave ~7 objects to the cycle collector. uvloop (what `unhardcoded serve` runs) makes
    # the protocol before it knows whether the connect succeeds; asyncio only after.
    import socket

    from unhardcoded.providers.http1 import _Conn

    from .collector import left_in_cycles

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]

    async def scenario() -> list:
        server = RawServer()
        url = await server.start()
        server.script.append(ok(b"{}", b"connection: close\r\n"))  # closed after the answer
        c = Client()
        await c.request("POST", url, {}, b"x")  # warm every path once
        with left_in_cycles(_Conn) as left:
            for _ in range(5):
                with pytest.raises(HTTPError):
                    await c.request("POST", f"http://127.0.0.1:{dead}/", {}, b"")
                server.script.append(ok(b"{}", b"connection: close\r\n"))
                assert (await c.request("POST", url, {}, b"x")).status == 200
            await asyncio.sleep(0.05)  # let the closed connections' connection_lost run
            c.close()
            await asyncio.sleep(0.05)
        await server.stop()
        return left

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        assert uvloop.run(scenario()) == []
    else:
        assert asyncio.run(scenario()) == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connect_cancelled_once_connected_leaves_no_cycle(loop: str) -> None:
    """A caller that goes away while the router is still connecting upstream cancels the
    connect; if that lands after the connection was made (connection_made has run, so the
    parser exists) but before create_connection returns, the protocol, its parser and the
    transport must not be left to the collector (uvloop does not call connection_lost then)."""
    from unhardcoded.providers import http1
    from unhardcoded.providers.http1 import _Conn

    from .collector import left_in_cycles

    async def scenario() -> tuple[int, list]:
        server = RawServer()
        url = await server.start()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        pool = http1._Pool("http", "127.0.0.1", port, None, 4)
        made = http1._Conn.connection_made
        cancelled = 0

        def cancel_on_connect(self, transport):  # the caller leaves at this very moment
            made(self, transport)
            task.cancel()
        with left_in_cycles(_Conn) as left:
            http1._Conn.connection_made = cancel_on_connect
            try:
                for _ in range(3):
                    task = asyncio.ensure_future(pool.connect(5.0))
                    try:
                        await task
                    except asyncio.CancelledError:
                        cancelled += 1
            finally:
                http1._Conn.connection_made = made
            await asyncio.sleep(0.05)
        await server.stop()
        return cancelled, left

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        cancelled, left = uvloop.run(scenario())
    else:
        cancelled, left = asyncio.run(scenario())
    assert cancelled == 3
    assert left == []
