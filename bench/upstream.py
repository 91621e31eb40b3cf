"""A fast mock OpenAI-compatible upstream for the benchmarks (loopback only).

A raw asyncio protocol on uvloop with canned responses, so that it is never the
bottleneck (``bench/run.sh`` measures it alone first to show its headroom).

* ``POST .../chat/completions``             -> 200, a fixed chat.completion (JSON, content-length)
* the same with ``"stream": true`` in the body -> 200, SSE (chunked): a first content chunk at once,
  then after ``--stream-gap-ms`` (default 10 ms) the rest, a usage chunk and ``[DONE]``; with
  ``"max_tokens": N`` for N of at least 64, a long answer instead: N content chunks, each written
  ``--stream-chunk-gap-ms`` (default 1 ms) after the one before, then the finish, usage and ``[DONE]``
* any path containing ``/429/``, or a body whose model starts with ``rl-`` -> 429 rate_limit_exceeded
* ``GET /stats``                             -> JSON counters (per kind), for checking the fallback path
* ``GET /healthz``                           -> 200

HTTP/1.1 keep-alive and pipelining are honoured; the parser only understands
what the benchmark clients send (content-length bodies, no chunked uploads).

    python bench/upstream.py --port 18000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import signal

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    "system_fingerprint": "fp_bench",
}, separators=(",", ":")).encode()

RATE_LIMITED = json.dumps({"error": {"message": "Rate limit reached (mock upstream)", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                          separators=(",", ":")).encode()


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + body)


R_OK = _response(b"200 OK", COMPLETION)
R_429 = _response(b"429 Too Many Requests", RATE_LIMITED)
R_404 = _response(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
R_HEALTH = _response(b"200 OK", b'{"ok":true}')


def _chunk(obj: dict) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n"


def _delta(content: str | None, finish: str | None = None, role: bool = False) -> dict:
    d: dict = {}
    if role:
        d["role"] = "assistant"
    if content is not None:
        d["content"] = content
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "bench-model", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n" + _chunk(_delta("Hello", role=True)))

def _done_chunk() -> bytes:
    data = b"data: [DONE]\n\n"
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n" + b"0\r\n\r\n"


STREAM_END = (_chunk(_delta(None, "stop"))
              + _chunk({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                        "model": "bench-model", "choices": [],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
              + _done_chunk())
STREAM_TAIL = b"".join(_chunk(_delta(w)) for w in (" from", " the", " mock", " upstream.")) + STREAM_END
@functools.lru_cache(maxsize=None)
def _token(i: int) -> bytes:
    """The i-th chunk of a long stream. Each differs: LiteLLM ends a stream that repeats one
    chunk a hundred times (its guard against a looping model)."""
    return _chunk(_delta(f" token{i}"))

LONG_STREAM_MIN = 64  # max_tokens from which a streamed answer is long (the suite's bodies ask for 16)
_MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')

STATS = {"ok": 0, "rate_limited": 0, "stream": 0, "other": 0}


class Upstream(asyncio.Protocol):
    __slots__ = ("transport", "buf", "gap", "busy", "pending", "chunks", "chunk_gap", "left")

    def __init__(self, gap: float, chunk_gap: float = 0.001) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.gap = gap
        self.chunks, self.chunk_gap, self.left = 0, chunk_gap, 0
        self.busy = False          # a stream is in flight: later pipelined requests wait
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        buf = self.buf
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            clen = 0
            i = head.lower().find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                clen = int(head[i + 17: j if j > 0 else len(head)])
            total = end + 4 + clen
            if len(buf) < total:
                break
            body = buf[end + 4: total]
            buf = buf[total:]
            line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
            method, _, rest = line.partition(b" ")
            path = rest.partition(b" ")[0]
            if method == b"POST":
                if b"/429/" in path or b'"model":"rl-' in body or b'"model": "rl-' in body:
                    STATS["rate_limited"] += 1
                    out.append(R_429)
                elif b'"stream":true' in body or b'"stream": true' in body:
                    STATS["stream"] += 1
                    if out:
                        self.transport.write(b"".join(out))  # type: ignore[union-attr]
                        out = []
                    self.transport.write(STREAM_HEAD)  # type: ignore[union-attr]
                    self.busy = True
                    self.buf = buf
                    m = _MAX_TOKENS.search(body)
                    n = int(m.group(1)) if m else 0
                    if n >= LONG_STREAM_MIN:
                        self.chunks = self.left = n
                        asyncio.get_running_loop().call_later(self.chunk_gap, self._next_chunk)
                    else:
                        asyncio.get_running_loop().call_later(self.gap, self._finish_stream)
                    return
                else:
                    STATS["ok"] += 1
                    out.append(R_OK)
            elif path == b"/stats":
                out.append(_response(b"200 OK", json.dumps(STATS).encode()))
            elif path == b"/healthz":
                out.append(R_HEALTH)
            else:
                STATS["other"] += 1
                out.append(R_404)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[union-attr]

    def _finish_stream(self, tail: bytes = STREAM_TAIL) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(tail)
        self.busy = False
        if self.buf:
            self._drain()

    def _next_chunk(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.left -= 1
        if self.left <= 0:
            self._finish_stream(_token(self.chunks) + STREAM_END)
            return
        self.transport.write(_token(self.chunks - self.left))
        asyncio.get_running_loop().call_later(self.chunk_gap, self._next_chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def main(host: str, port: int, gap_ms: float, chunk_gap_ms: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(gap_ms / 1000.0, chunk_gap_ms / 1000.0), host, port,
                                      backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://{host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--stream-gap-ms", type=float, default=10.0)
    ap.add_argument("--stream-chunk-gap-ms", type=float, default=1.0, help="time between two chunks of a long stream")
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main(a.host, a.port, a.stream_gap_ms, a.stream_chunk_gap_ms))
