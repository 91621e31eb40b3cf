"""The HTTP transport every provider module shares: one pooled aiohttp session.

Wires build requests and parse bytes; this module moves the bytes, with three
clocks: a connect timeout, a per-attempt timeout, and for streams a
first-byte timeout. Network failures become :class:`ProviderError` kinds
(``network_error``, ``timeout``) with messages that never include a key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

import aiohttp

from .base import HttpRequest, ProviderError


@dataclass(slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport:
    """A connection pool for upstream calls. Create once per process, close on shutdown."""

    def __init__(self, *, connect_timeout_s: float = 10.0, limit: int = 512, limit_per_host: int = 128) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host,
                                             ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _timeout(self, total_s: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, connect=self._connect_timeout_s)

    async def send(self, req: HttpRequest, *, timeout_s: float) -> Response:
        """One request, whole response. Raises ProviderError for network faults and timeouts."""
        session = self._get_session()
        try:
            async with session.request(req.method, req.url, data=req.body, headers=req.headers,
                                       timeout=self._timeout(timeout_s), allow_redirects=False) as resp:
                body = await resp.read()
                return Response(resp.status, resp.headers, body)
        except asyncio.TimeoutError:
            raise ProviderError("timeout", f"no answer within {timeout_s:g} s") from None
        except aiohttp.ClientPayloadError as exc:
            raise ProviderError("network_error", f"connection dropped mid-response ({type(exc).__name__})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError("network_error", _describe(exc)) from None

    async def open_stream(self, req: HttpRequest, *, timeout_s: float,
                          first_byte_timeout_s: float | None = None) -> "StreamResponse":
        """Open a streaming request. A non-2xx status is returned whole (read the body)."""
        session = self._get_session()
        # No total timeout: a long answer may stream for minutes. A stall of
        # timeout_s between two reads is what fails a stream.
        ctx = session.request(req.method, req.url, data=req.body, headers=req.headers,
                              timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s,
                                                            sock_read=first_byte_timeout_s or timeout_s),
                              allow_redirects=False)
        try:
            resp = await ctx.__aenter__()
        except asyncio.TimeoutError:
            raise ProviderError("timeout", "no response headers in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError("network_error", _describe(exc)) from None
        return StreamResponse(ctx, resp, timeout_s)


class StreamResponse:
    def __init__(self, ctx: object, resp: aiohttp.ClientResponse, timeout_s: float) -> None:
        self._ctx = ctx
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers
        self._timeout_s = timeout_s

    async def read_all(self) -> bytes:
        try:
            return await self.resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return b""
        finally:
            await self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises ProviderError on a timeout or a dropped connection."""
        try:
            async for data in self.resp.content.iter_any():
                yield data
        except asyncio.TimeoutError:
            raise ProviderError("timeout", "the stream stalled") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError("stream_interrupted", f"connection dropped ({type(exc).__name__})") from None

    async def close(self) -> None:
        try:
            self.resp.release()
            await self._ctx.__aexit__(None, None, None)  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - best effort on teardown
            pass


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name the host and port, never headers: safe to show.
    text = str(exc) or type(exc).__name__
    return text[:200]
