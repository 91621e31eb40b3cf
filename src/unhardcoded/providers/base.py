"""The one small interface every provider module implements.

The router speaks the OpenAI Chat Completions shape everywhere. A provider
module translates that shape to its wire format and back, and nothing else:
no sockets, no clock. The shared transport (:mod:`unhardcoded.providers.transport`)
does the HTTP. That split keeps every translation testable as a pure function
and lets one connection pool serve every provider.

A module exposes one :class:`Wire` object:

``build(body, target, stream) -> HttpRequest``
    The OpenAI-shaped request body (messages, tools, tool_choice,
    response_format, temperature, max_tokens, stop, seed, ...) as the provider
    wants it, for one attempt at ``target``. Fields the provider has no place
    for are dropped; the conversation (including tool calls and their
    results, with ids rewritten to the provider's form) is carried intact.

``parse(status, headers, body, target) -> dict``
    A 2xx response as an OpenAI ``chat.completion`` object, ``usage`` always
    mapped (prompt/completion/total tokens, cached tokens, reasoning tokens).
    Non-2xx: raise :class:`ProviderError` via :meth:`Wire.error`.

``stream(target) -> StreamDecoder``
    Turns the provider's streaming bytes into OpenAI ``chat.completion.chunk``
    objects. ``feed(bytes)`` returns the chunks completed so far; ``close()``
    returns the last ones and raises ``ProviderError(kind="stream_interrupted")``
    when the stream ended without the provider's end marker.

``error(status, headers, body) -> ProviderError``
    Classifies a failed response into the reference's error kinds.

Error kinds (the reference's vocabulary): ``auth_error``, ``rate_limit``,
``payment_required``, ``timeout``, ``model_unavailable``, ``bad_request``,
``context_overflow``, ``server_error``, ``network_error``, ``bad_response``,
``stream_interrupted``, ``content_filter``, ``unknown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import orjson

from ..memo import IdentityMemo

ERROR_KINDS = (
    "auth_error", "rate_limit", "payment_required", "timeout", "model_unavailable", "bad_request",
    "context_overflow", "server_error", "network_error", "bad_response", "stream_interrupted",
    "content_filter", "unknown",
)

# Kinds caused by the request itself; they say nothing about the provider's health.
CLIENT_FAULT_KINDS = frozenset({"bad_request", "content_filter", "context_overflow"})


class ProviderError(Exception):
    """One failed attempt, classified. ``message`` never contains a key."""

    def __init__(self, kind: str, message: str, status: int | None = None, *,
                 retry_after_s: float | None = None, billed: bool = False) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message[:500]
        self.status = status
        self.retry_after_s = retry_after_s
        self.billed = billed

    def to_dict(self) -> dict[str, Any]:
        return {"error_kind": self.kind, "http_status": self.status, "error_message": self.message[:300]}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a provider's endpoint, the model id it expects, the caller's key."""

    provider_id: str
    wire: str
    base_url: str                 # without a trailing slash, e.g. https://api.openai.com/v1
    model_id: str                 # the id the provider's API expects
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    family: str = ""

    def __repr__(self) -> str:  # never print the key
        return f"Target({self.provider_id}, {self.wire}, {self.base_url}, {self.model_id})"


@dataclass(slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> list[dict[str, Any]]: ...

    def close(self) -> list[dict[str, Any]]: ...


class SSEDecoder:
    """What every server-sent-events wire shares: bytes in, OpenAI chunks out, and a stream
    that ends without its wire's end marker is ``stream_interrupted``, never a clean finish.

    A wire implements ``_handle`` (events -> chunks; it sets ``_done`` on its end marker) and
    may add closing chunks in ``_tail``. ``wire`` and ``end_marker`` name them in the error.
    """

    wire = "sse"
    end_marker = "its end marker"

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False

    def _handle(self, events: "list[SSEEvent]") -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tail(self) -> list[dict[str, Any]]:
        return []

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return self._handle(self._sse.feed(data))

    def close(self) -> list[dict[str, Any]]:
        out = self._handle(self._sse.close())
        if not self._done:
            raise ProviderError("stream_interrupted", f"{self.wire}: stream ended without {self.end_marker}")
        return out + self._tail()


class Wire(Protocol):
    name: str

    def build(self, body: Mapping[str, Any], target: Target, stream: bool) -> HttpRequest: ...

    def parse(self, status: int, headers: Mapping[str, str], body: bytes, target: Target) -> dict[str, Any]: ...

    def stream(self, target: Target) -> StreamDecoder: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes, *,
              target: Target | None = None) -> ProviderError: ...


# ---- shared helpers every wire uses -------------------------------------------

OVERFLOW_SIGNATURES = (
    "context length", "context window", "context_length_exceeded", "reduce the length of the messages",
    "prompt is too long", "input is too long", "exceeds the maximum number of tokens", "too many tokens",
)


def status_kind(status: int, text: str = "") -> str:
    """HTTP status to error kind, as the reference host classifies it."""
    if status in (401, 403):
        return "auth_error"
    if status == 429:
        return "rate_limit"
    if status == 402:
        return "payment_required"
    if status in (408, 504):
        return "timeout"
    if status == 404:
        return "model_unavailable"
    if status in (400, 413, 422):
        low = text.lower()
        if any(sig in low for sig in OVERFLOW_SIGNATURES):
            return "context_overflow"
        return "bad_request"
    if status >= 500:
        return "server_error"
    return "unknown"


def retry_after(headers: Mapping[str, str]) -> float | None:
    for name in ("retry-after", "Retry-After"):
        v = headers.get(name)
        if v is not None:
            try:
                return max(0.0, float(v))
            except ValueError:
                return None
    return None


def error_text(body: bytes) -> str:
    """The most specific message in an error body, whatever its shape."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, str):
            return err
        if isinstance(err, dict):
            meta = err.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("raw"), str):
                return meta["raw"][:300]
            msg = err.get("message")
            if isinstance(msg, str) and msg:
                return msg
    return body[:300].decode("utf-8", "replace")


def redact(text: str, *secrets: str | None) -> str:
    """Remove every secret from a text before it can reach a log, a trace or a client."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return text


# ---- helpers shared by the wire modules -------------------------------------------

import re as _re

# Shapes of well-known provider keys. error() has no target, so a key an upstream echoes
# back is removed by shape as well as (when the caller passes it) by value.
_KEY_SHAPES = _re.compile(
    r"(?:sk-(?:ant-|proj-|or-)?[A-Za-z0-9_\-]{8,}"   # OpenAI, Anthropic, OpenRouter, DeepSeek
    r"|AIza[0-9A-Za-z_\-]{20,}"                        # Google API keys
    r"|gsk_[A-Za-z0-9]{16,}"                           # Groq
    r"|(?<=[Bb]earer )[A-Za-z0-9._\-]{8,}"             # whatever follows "Bearer "
    r"|(?<=[?&]key=)[^&\s\"']+)"                       # ?key=... in an echoed URL
)


def scrub(text: str, *secrets: str | None) -> str:
    """:func:`redact` the given secrets, then anything shaped like a provider key."""
    return _KEY_SHAPES.sub("[redacted]", redact(text, *secrets))


def usage_block(prompt: int, completion: int, *, total: int | None = None, cached: int = 0,
                reasoning: int = 0, **prompt_details: int) -> dict[str, Any]:
    """An OpenAI ``usage`` object with every field the router reads present."""
    prompt, completion = int(prompt or 0), int(completion or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(total) if total is not None else prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(cached or 0), **prompt_details},
        "completion_tokens_details": {"reasoning_tokens": int(reasoning or 0)},
    }


_HEADERS = IdentityMemo(4096)   # target -> its request headers, per mode and wire


def target_headers(target: Target, stream: bool, make: Callable[[Target, bool], dict[str, str]]) -> dict[str, str]:
    """A target's request headers as ``make`` builds them, made once per target and mode: the
    same dict every call (so the HTTP client renders it once too). Treat it as read-only."""
    return _HEADERS.get(target, lambda t: make(t, stream), key=(stream, make))


def dump_body(doc: Any) -> bytes:
    """A request body as compact UTF-8 JSON (orjson: this runs on every attempt)."""
    try:
        return orjson.dumps(doc)
    except TypeError:  # e.g. an integer wider than 64 bits: the standard encoder takes it
        return json.dumps(doc, ensure_ascii=False).encode()


def event_json(data: str) -> Any:
    """A stream event's JSON payload: orjson where it reads it (~0.6 µs for a chunk against ~2 µs),
    else the standard library (NaN, a number past the doubles, a lone surrogate escape), whose
    ValueError says it is not JSON. Like :func:`json_body` for a whole answer, an integer wider
    than 64 bits is read as a double."""
    try:
        return orjson.loads(data)
    except ValueError:
        pass
    try:
        return json.loads(data)
    except RecursionError:  # nesting deeper than the interpreter's stack: as undecodable as any
        raise ValueError("JSON nested too deeply") from None


def json_body(body: bytes, what: str) -> Any:
    """Decode a 2xx body; anything that is not JSON is a ``bad_response``."""
    try:
        return orjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError("bad_response", f"{what}: body is not JSON: {body[:120]!r}") from None


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                out.append(str(part.get("text") or ""))
        return "".join(out)
    return str(content)


_DATA_URL = _re.compile(r"^data:(?P<mime>[\w.+\-]+/[\w.+\-]+)?(?P<params>(?:;[^,;]*)*),(?P<data>.*)$", _re.S)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` -> ``("image/png", "AAAA")``; None for anything else.

    Only base64 data URLs are accepted: both Anthropic and Gemini want base64 bytes.
    """
    m = _DATA_URL.match(url or "")
    if not m or ";base64" not in (m.group("params") or ""):
        return None
    return (m.group("mime") or "application/octet-stream"), m.group("data")


def chat_chunk(cid: str, model: str, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
               *, index: int = 0, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One OpenAI ``chat.completion.chunk``. With ``usage`` and no delta: the usage-only chunk."""
    chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": model}
    if delta is None and usage is not None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": index, "delta": delta or {}, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def refuse_unsupported(body: Mapping[str, Any], wire: str) -> None:
    """Refuse, before sending, what changes the answer and that ``wire`` cannot carry.

    Token log probabilities (``logprobs``, ``top_logprobs``) and ``logit_bias`` have no
    counterpart on the Anthropic and Gemini translations. Sent without them, the caller would get
    an answer without the ``logprobs`` it reads, or one the bias was meant to shape; refused as a
    bad request, the FailPlan moves on to a route that serves them.
    """
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        raise ProviderError("bad_request", f"{wire}: logprobs are not offered on this wire; "
                            "an OpenAI-compatible route serves them")
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and bias:
        raise ProviderError("bad_request", f"{wire}: logit_bias is not offered on this wire; "
                            "an OpenAI-compatible route serves it")


def function_tools(body: Mapping[str, Any], wire: str) -> tuple[list[Any], Any]:
    """The caller's ``tools`` and ``tool_choice`` for a wire that knows only functions.

    OpenAI's ``allowed_tools`` choice (offer only these tools, ``auto`` or ``required``) becomes
    the tools it names and the plain choice of that mode, which is what it means. A ``custom``
    tool (free text or a grammar) is OpenAI's own: no function declaration says the same, so
    the attempt is refused as a bad request naming the tool, rather than sent without it.
    """
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "custom":
            name = tool.get("custom", {}).get("name") if isinstance(tool.get("custom"), dict) else None
            raise ProviderError("bad_request", f"{wire}: the custom tool {name!r} (type 'custom') is OpenAI's own; "
                                "this provider takes function tools only")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") if isinstance(choice.get("allowed_tools"), dict) else {}
        names = {_function_name(t) for t in allowed.get("tools") or () if isinstance(t, dict)} - {None}
        tools = [t for t in tools if _function_name(t) in names]
        choice = "required" if allowed.get("mode") == "required" else "auto"
    return tools, choice


def _function_name(tool: Any) -> Any:
    fn = tool.get("function") if isinstance(tool, dict) else None
    return fn.get("name") if isinstance(fn, dict) else None


def tool_arguments(raw: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Anthropic and Gemini require.

    Arguments that are not a JSON object are kept under ``"arguments"`` rather than lost.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        val = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {"arguments": raw}
    return val if isinstance(val, dict) else {"arguments": val}


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


class SSEParser:
    """Incremental server-sent-events framing (the WHATWG rules that matter here).

    Lines end in LF, CRLF or CR; ``data:`` lines of one event are joined with LF; an
    empty line dispatches; ``:`` lines are comments. Bytes may arrive split anywhere,
    including inside a UTF-8 sequence or between CR and LF.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._fresh = True

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._buf += data
        if self._fresh:  # a byte-order mark may open the stream
            if len(self._buf) < 3 and b"\xef\xbb\xbf".startswith(self._buf):
                return []
            self._fresh = False
            self._buf = self._buf.removeprefix(b"\xef\xbb\xbf")
        if b"\r" not in self._buf:  # LF line ends only (what providers send): split at once
            lines = self._buf.split(b"\n")
            self._buf = lines.pop()
        else:
            lines = self._take_lines()
        out: list[SSEEvent] = []
        for line in lines:
            ev = self._line(line.decode("utf-8", "replace"))
            if ev is not None:
                out.append(ev)
        return out

    def _take_lines(self) -> list[bytes]:
        """The complete lines at the buffer's start, ended by LF, CRLF or CR; the rest stays."""
        lines: list[bytes] = []
        buf = self._buf
        while True:
            lf, cr = buf.find(b"\n"), buf.find(b"\r")
            if lf < 0 and cr < 0:
                break
            cut = lf if cr < 0 else cr if lf < 0 else min(lf, cr)
            if buf[cut] == 13:
                if cut + 1 == len(buf):
                    break  # a CR at the end: wait to see whether LF follows
                step = 2 if buf[cut + 1] == 10 else 1
            else:
                step = 1
            lines.append(buf[:cut])
            buf = buf[cut + step:]
        self._buf = buf
        return lines

    def close(self) -> list[SSEEvent]:
        """Flush: a last line without its terminator, and an event without its blank line."""
        out: list[SSEEvent] = []
        if self._buf:
            line, self._buf = self._buf.rstrip(b"\r"), b""
            ev = self._line(line.decode("utf-8", "replace"))
            if ev is not None:
                out.append(ev)
        ev = self._line("")
        if ev is not None:
            out.append(ev)
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":  # dispatch; an event without data lines is dropped, as the spec says
            ev = SSEEvent(self._event or "message", "\n".join(self._data)) if self._data else None
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None
