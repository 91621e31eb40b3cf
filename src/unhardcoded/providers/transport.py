"""The HTTP transport every provider module shares.

Wires build requests and parse bytes; this module moves the bytes over one
pooled keep-alive HTTP/1.1 client (:mod:`unhardcoded.providers.http1`), with
three clocks: a connect timeout, a per-attempt timeout, and for streams a
stall timeout between reads (the first-token clock is the router's).
Transport failures become :class:`ProviderError` kinds (``network_error``,
``timeout``, ``stream_interrupted``) with messages that never include a key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

from .base import HttpRequest, ProviderError
from .http1 import Client, HTTPError, StreamingResponse


@dataclass(slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport:
    """A connection pool for upstream calls. Create once per process, close on shutdown."""

    def __init__(self, *, connect_timeout_s: float = 10.0, max_idle_per_host: int = 256) -> None:
        self._client = Client(connect_timeout_s=connect_timeout_s, max_idle_per_host=max_idle_per_host)

    async def close(self) -> None:
        self._client.close()

    async def send(self, req: HttpRequest, *, timeout_s: float) -> Response:
        """One request, whole response. Raises ProviderError for network faults and timeouts."""
        try:
            r = await self._client.request(req.method, req.url, req.headers, req.body, timeout_s=timeout_s)
        except HTTPError as exc:
            raise ProviderError(exc.kind, exc.message) from None
        return Response(r.status, r.headers, r.body)

    async def open_stream(self, req: HttpRequest, *, timeout_s: float,
                          first_byte_timeout_s: float | None = None) -> "StreamResponse":
        """Open a streaming request. A non-2xx status is returned whole (read the body)."""
        try:
            async with asyncio.timeout(first_byte_timeout_s or timeout_s):
                r = await self._client.stream(req.method, req.url, req.headers, req.body)
        except (TimeoutError, asyncio.TimeoutError):
            raise ProviderError("timeout", "no response headers in time") from None
        except HTTPError as exc:
            raise ProviderError(exc.kind, exc.message) from None
        return StreamResponse(r, timeout_s)


class StreamResponse:
    def __init__(self, resp: StreamingResponse, stall_timeout_s: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        self._stall = stall_timeout_s

    async def read_all(self) -> bytes:
        try:
            return await self._resp.read_all(self._stall)
        except HTTPError:
            return b""
        finally:
            await self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a stall or a dropped connection raises ProviderError."""
        try:
            async for data in self._resp.chunks(self._stall):
                yield data
        except HTTPError as exc:
            if exc.kind == "timeout":
                raise ProviderError("timeout", "the stream stalled") from None
            raise ProviderError("stream_interrupted", exc.message) from None

    async def close(self) -> None:
        self._resp.close()
