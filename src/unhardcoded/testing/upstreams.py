"""Strict mock upstreams: one loopback HTTP server per wire kind (OpenAI, Anthropic, Gemini).

Each server refuses what the real API refuses, in that API's own error shape (wrong path
or method, missing or wrong key, bad JSON, missing or malformed fields, tool results that
answer no tool call, unknown models), and otherwise answers, streamed or not, in the real
format. What it answers is scripted per model id::

    up = Upstream("anthropic", key="sk-ant-test")
    base_url = await up.start()                      # http://127.0.0.1:<port>/v1
    up.script("claude-haiku-4-5", Fail(status=529), Reply(text="hi"))
    ...
    up.requests[-1].body                             # what the router sent
    await up.stop()

Steps are consumed in order, one per accepted request; after them comes the default,
which (unless ``script(..., default=...)`` sets another) is an echo of the last user
message with plausible token counts, so the servers can back a keyless demo.
Synchronous callers use :func:`run_in_thread`.

Usage given to :class:`Reply` is provider-neutral (:class:`Usage`) and rendered in each
API's own terms (Anthropic counts cache reads apart from input tokens, Gemini counts
thinking apart from candidates), so a test can check that a wire maps it back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from aiohttp import web

KINDS = ("openai", "anthropic", "gemini")

DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "deepseek-v4-pro", "deepseek-v4-flash",
               "llama-3.3-70b-versatile", "openai/gpt-oss-120b", "gpt-4o-mini"),
    "anthropic": ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"),
    "gemini": ("gemini-3.1-pro-preview", "gemini-3-flash-preview", "gemini-2.5-flash"),
}

_BASE_PATH = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta"}
_GEMINI_SKIP_SIGNATURE = "skip_thought_signature_validator"


# ---- script steps ------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    """Provider-neutral counts: ``prompt_tokens`` includes cached and cache-write tokens,
    ``completion_tokens`` includes reasoning tokens (OpenAI's convention)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_creation_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    """Answer with text. ``finish_reason`` is OpenAI's: stop, length, content_filter."""

    text: str = ""
    usage: Usage | Mapping[str, int] | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True)
class ReplyToolCall:
    """Answer with one tool call (and optional text before it)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    text: str = ""
    id: str | None = None
    usage: Usage | Mapping[str, int] | None = None


@dataclass(frozen=True)
class Fail:
    """Answer with an error in the provider's shape. ``type`` overrides the provider's error
    type/code/status string. ``in_stream``: for a streaming request, start the stream and
    send the error as a stream event instead."""

    status: int = 500
    message: str = "mock upstream failure"
    retry_after: float | None = None
    type: str | None = None
    in_stream: bool = False


@dataclass(frozen=True)
class Delay:
    """Wait this long before answering with the next step (or the default)."""

    ms: int


@dataclass(frozen=True)
class Stall:
    """Accept the request and never answer (until the server stops)."""


@dataclass(frozen=True)
class StreamCut:
    """Send the first ``after_chunks`` stream events (never the end marker), then drop the
    connection (``abort``) or end the body cleanly without the end marker. A non-streaming
    request gets a truncated body."""

    after_chunks: int = 2
    text: str = "this answer will be cut short before it ends"
    abort: bool = True


@dataclass(frozen=True)
class Raw:
    """Answer with exactly these bytes (for malformed-response tests)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


Step = Reply | ReplyToolCall | Fail | Delay | Stall | StreamCut | Raw


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]       # lower-case names, keys redacted
    body: Any                     # parsed JSON, or None when the body was not JSON
    raw: bytes
    model: str | None = None
    stream: bool = False
    status: int | None = None     # what the server answered (None while pending or stalled)


class _Reject(Exception):
    def __init__(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, dict(headers or {})


@dataclass
class _Answer:
    text: str
    calls: list[tuple[str, str, dict[str, Any]]]   # (id, name, arguments)
    finish: str                                    # stop | length | tool_calls | content_filter
    usage: Usage


# ---- shared helpers ----------------------------------------------------------------

def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def _pieces(text: str) -> list[str]:
    """Split text into stream deltas (words with their trailing space)."""
    return re.findall(r"\S+\s*|\s+", text) or ([text] if text else [])


def _split(s: str, n: int = 3) -> list[str]:
    step = max(1, -(-len(s) // n))
    return [s[i:i + step] for i in range(0, len(s), step)] or [""]


def _usage_of(u: Usage | Mapping[str, int] | None, fallback: Usage) -> Usage:
    if u is None:
        return fallback
    if isinstance(u, Usage):
        return u
    return Usage(**{k: int(v) for k, v in u.items()})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, dict):
                if isinstance(p.get("text"), str):
                    out.append(p["text"])
                elif p.get("type") == "tool_result":
                    out.append(_text_of(p.get("content")))
                elif isinstance(p.get("functionResponse"), dict):
                    out.append(json.dumps(p["functionResponse"].get("response"), sort_keys=True))
        return " ".join(o for o in out if o)
    return ""


def echo_text(last_user: str) -> str:
    said = " ".join(last_user.split())
    if len(said) > 80:
        said = said[:77] + "..."
    return f"Echo: {said}" if said else "Echo: (nothing)"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]+")


# ---- the provider dialects ---------------------------------------------------------

class _Dialect:
    kind = ""

    def __init__(self, up: "Upstream") -> None:
        self.up = up

    # request side
    def route(self, request: web.Request) -> tuple[str | None, bool]: ...
    def auth(self, request: web.Request) -> None: ...
    def validate(self, body: Any) -> None: ...
    def conversation(self, body: Any) -> tuple[str, str]: ...  # (all prompt text, last user text)
    def wants_stream(self, body: Any, url_stream: bool) -> bool: return url_stream
    def includes_usage(self, body: Any) -> bool: return True
    # answer side
    def error(self, status: int, message: str, etype: str | None = None,
              retry_after: float | None = None) -> _Reject: ...
    def body(self, a: _Answer, model: str) -> dict[str, Any]: ...
    def events(self, a: _Answer, model: str, include_usage: bool) -> list[bytes]: ...
    def stream_error(self, f: Fail) -> bytes: ...


class _OpenAI(_Dialect):
    kind = "openai"
    PARAMS = frozenset({
        "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
        "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "service_tier", "stop",
        "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "user",
        "functions", "function_call", "modalities", "audio", "prediction", "store", "metadata", "reasoning_effort",
        "web_search_options", "prompt_cache_key", "safety_identifier", "verbosity",
    })
    ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

    def route(self, request: web.Request) -> tuple[str | None, bool]:
        if request.method != "POST" or request.path != "/v1/chat/completions":
            raise self.error(404, f"Invalid URL ({request.method} {request.path})")
        return None, False

    def auth(self, request: web.Request) -> None:
        if self.up.key is None:
            return
        header = request.headers.get("Authorization", "")
        if not header:
            raise self.error(401, "You didn't provide an API key. You need to provide your API key in an "
                                  "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        token = header[7:] if header.startswith("Bearer ") else ""
        if token != self.up.key:
            masked = (token[:3] + "*" * 4 + token[-4:]) if len(token) > 8 else "*" * 4
            raise self.error(401, f"Incorrect API key provided: {masked}.", "invalid_api_key")

    def wants_stream(self, body: Any, url_stream: bool) -> bool:
        return body.get("stream") is True

    def includes_usage(self, body: Any) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True

    def validate(self, body: Any) -> None:
        bad = lambda msg, param=None: self.error(400, msg, param=param)  # noqa: E731
        if not isinstance(body, dict):
            raise bad("Invalid type for request body: expected an object.")
        for k in body:
            if k not in self.PARAMS:
                raise bad(f"Unrecognized request argument supplied: {k}", k)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise bad("you must provide a model parameter", "model")
        msgs = body.get("messages")
        if msgs is None:
            raise bad("'messages' is a required property", "messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad("[] is too short - 'messages'", "messages")
        pending: dict[str, int] = {}   # tool_call ids of the last assistant turn, not yet answered
        answered: set[str] = set()
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in self.ROLES:
                raise bad(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role")
            role = m["role"]
            if role != "tool" and pending:
                missing = ", ".join(k for k in pending if k not in answered)
                if missing:
                    raise bad("An assistant message with 'tool_calls' must be followed by tool messages responding "
                              f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                              f"{missing}", "messages")
                pending, answered = {}, set()
            if role == "assistant" and m.get("tool_calls") is not None:
                calls = m["tool_calls"]
                if not isinstance(calls, list):
                    raise bad(f"Invalid type for 'messages[{i}].tool_calls': expected an array.")
                for j, c in enumerate(calls):
                    where = f"messages[{i}].tool_calls[{j}]"
                    if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                        raise bad(f"Missing required parameter: '{where}.id'.")
                    # Stricter than OpenAI is known to be: unknown keys in a tool call (e.g. Gemini's
                    # extra_content) are refused, to prove the wire strips them.
                    extra = set(c) - {"id", "type", "function"}
                    if extra:
                        raise bad(f"Unrecognized parameter: '{where}.{sorted(extra)[0]}'.")
                    fn = c.get("function")
                    if c.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                        raise bad(f"Invalid value for '{where}': expected a function tool call.")
                    if not isinstance(fn.get("arguments"), str):
                        raise bad(f"Invalid type for '{where}.function.arguments': expected a string.")
                    pending[c["id"]] = i
            elif role == "tool":
                tid = m.get("tool_call_id")
                if not isinstance(tid, str) or tid not in pending:
                    raise bad("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                              "message with 'tool_calls'.", f"messages.[{i}].role")
                answered.add(tid)
            content = m.get("content")
            if role in ("user", "system", "developer") and not isinstance(content, (str, list)):
                raise bad(f"Invalid type for 'messages[{i}].content': expected one of a string or array.")
        if body.get("stream_options") is not None and body.get("stream") is not True:
            raise bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
        t = body.get("temperature")
        if t is not None and (not _is_num(t) or not 0 <= t <= 2):
            raise bad(f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t}.")
        if body.get("tool_choice") is not None and not body.get("tools"):
            raise bad("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                      "tool_choice")
        if body["model"] not in self.up.models:
            raise self.error(404, f"The model `{body['model']}` does not exist or you do not have access to it.",
                             "model_not_found")

    def conversation(self, body: Any) -> tuple[str, str]:
        texts = [_text_of(m.get("content")) for m in body["messages"]]
        last = next((_text_of(m.get("content")) for m in reversed(body["messages"])
                     if m.get("role") in ("user", "tool")), "")
        return " ".join(texts), last

    def error(self, status: int, message: str, etype: str | None = None,
              retry_after: float | None = None, param: str | None = None) -> _Reject:
        default_type = {401: "invalid_request_error", 429: "requests", 500: "server_error",
                        502: "server_error", 503: "server_error"}.get(status, "invalid_request_error")
        code = etype or {429: "rate_limit_exceeded"}.get(status)
        payload = {"error": {"message": message, "type": etype or default_type, "param": param, "code": code}}
        headers = {"x-request-id": f"req_{self.up._next('req')}"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return _Reject(status, payload, headers)

    def _usage(self, u: Usage) -> dict[str, Any]:
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def body(self, a: _Answer, model: str) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": a.text or (None if a.calls else ""), "refusal": None}
        if a.calls:
            msg["tool_calls"] = [{"id": cid, "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args)}}
                                 for cid, name, args in a.calls]
        return {"id": f"chatcmpl-mock{self.up._next('resp')}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": a.finish}],
                "usage": self._usage(a.usage), "system_fingerprint": None}

    def events(self, a: _Answer, model: str, include_usage: bool) -> list[bytes]:
        base = {"id": f"chatcmpl-mock{self.up._next('resp')}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": None}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            doc = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                doc["usage"] = None
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        out = [chunk({"role": "assistant", "content": "", "refusal": None})]
        out += [chunk({"content": p}) for p in _pieces(a.text)]
        for k, (cid, name, args) in enumerate(a.calls):
            out.append(chunk({"tool_calls": [{"index": k, "id": cid, "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": k, "function": {"arguments": p}}]})
                    for p in _split(json.dumps(args))]
        out.append(chunk({}, a.finish))
        if include_usage:
            out.append(b"data: " + json.dumps({**base, "choices": [], "usage": self._usage(a.usage)}).encode()
                       + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out

    def stream_error(self, f: Fail) -> bytes:
        err = self.error(f.status, f.message, f.type).payload
        return b"data: " + json.dumps(err).encode() + b"\n\n"


class _Anthropic(_Dialect):
    kind = "anthropic"
    PARAMS = frozenset({"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
                        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
                        "container", "mcp_servers"})
    VERSIONS = frozenset({"2023-06-01", "2023-01-01"})
    TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
             403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
             500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
    FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
    MEDIA = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

    def route(self, request: web.Request) -> tuple[str | None, bool]:
        if request.method != "POST" or request.path != "/v1/messages":
            raise self.error(404, "Not Found", "not_found_error")
        return None, False

    def auth(self, request: web.Request) -> None:
        if self.up.key is not None:
            key = request.headers.get("x-api-key")
            if not key:
                raise self.error(401, "x-api-key header is required", "authentication_error")
            if key != self.up.key:
                raise self.error(401, "invalid x-api-key", "authentication_error")
        version = request.headers.get("anthropic-version")
        if not version:
            raise self.error(400, "anthropic-version: header is required")
        if version not in self.VERSIONS:
            raise self.error(400, f"anthropic-version: invalid version '{version}'")

    def wants_stream(self, body: Any, url_stream: bool) -> bool:
        return body.get("stream") is True

    def _blocks(self, i: int, role: str, content: Any, prev_tool_ids: set[str], final: bool) -> list[str]:
        """Validate one message's content; return the tool_use ids it holds."""
        bad = lambda msg: self.error(400, msg)  # noqa: E731
        where = f"messages.{i}"
        if isinstance(content, str):
            if not content and not (final and role == "assistant"):
                raise bad(f"{where}: all messages must have non-empty content except for the optional final "
                          "assistant message")
            if final and role == "assistant" and content != content.rstrip():
                raise bad("messages: final assistant content cannot end with trailing whitespace")
            content = [{"type": "text", "text": content}] if content else []
        elif not isinstance(content, list):
            raise bad(f"{where}.content: Input should be a valid list")
        elif not content and not (final and role == "assistant"):
            raise bad(f"{where}: all messages must have non-empty content except for the optional final "
                      "assistant message")
        tool_ids: list[str] = []
        seen_other = False
        answered: set[str] = set()
        for j, b in enumerate(content):
            at = f"{where}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                if not isinstance(b.get("text"), str) or not b["text"].strip():
                    raise bad(f"{at}.text: text content blocks must contain non-whitespace text")
                if final and role == "assistant" and j == len(content) - 1 and b["text"] != b["text"].rstrip():
                    raise bad("messages: final assistant content cannot end with trailing whitespace")
                seen_other = True
            elif kind in ("image", "document"):
                src = b.get("source") if isinstance(b.get("source"), dict) else {}
                if src.get("type") == "base64":
                    if not isinstance(src.get("data"), str) or not src.get("media_type"):
                        raise bad(f"{at}.source: base64 source needs media_type and data")
                    if kind == "image" and src["media_type"] not in self.MEDIA:
                        raise bad(f"{at}.source.media_type: Input should be 'image/jpeg', 'image/png', "
                                  "'image/gif' or 'image/webp'")
                    try:
                        base64.b64decode(src["data"], validate=True)
                    except ValueError:
                        raise bad(f"{at}.source.data: invalid base64 data") from None
                elif src.get("type") == "url":
                    if not str(src.get("url", "")).startswith(("http://", "https://")):
                        raise bad(f"{at}.source.url: invalid URL")
                else:
                    raise bad(f"{at}.source: Input tag '{src.get('type')}' does not match any of the expected tags")
                seen_other = True
            elif kind == "tool_use":
                if role != "assistant":
                    raise bad(f"{at}: tool_use blocks are only allowed in assistant messages")
                if not isinstance(b.get("id"), str) or not _ANTHROPIC_ID.fullmatch(b["id"]):
                    raise bad(f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
                if not isinstance(b.get("name"), str) or not b["name"]:
                    raise bad(f"{at}.name: Field required")
                if not isinstance(b.get("input"), dict):
                    raise bad(f"{at}.input: Input should be a valid dictionary")
                tool_ids.append(b["id"])
                seen_other = True
            elif kind == "tool_result":
                if role != "user":
                    raise bad(f"{at}: tool_result blocks are only allowed in user messages")
                tid = b.get("tool_use_id")
                if not isinstance(tid, str) or not _ANTHROPIC_ID.fullmatch(tid):
                    raise bad(f"{at}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
                if tid not in prev_tool_ids:
                    raise bad(f"{where}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {tid}. "
                              "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
                              "message.")
                if seen_other:
                    raise bad(f"{where}: `tool_result` blocks must come before any other content in the message")
                inner = b.get("content")
                if inner is not None and not isinstance(inner, (str, list)):
                    raise bad(f"{at}.content: Input should be a valid string or list")
                answered.add(tid)
            elif kind in ("thinking", "redacted_thinking"):
                if role != "assistant":
                    raise bad(f"{at}: thinking blocks are only allowed in assistant messages")
            else:
                raise bad(f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags")
        missing = prev_tool_ids - answered
        if prev_tool_ids and missing:
            raise bad(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                      f"after: {', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding "
                      "`tool_result` block in the next message.")
        return tool_ids

    def validate(self, body: Any) -> None:
        bad = lambda msg: self.error(400, msg)  # noqa: E731
        if not isinstance(body, dict):
            raise bad("Input should be a valid dictionary")
        for k in body:
            if k not in self.PARAMS:
                raise bad(f"{k}: Extra inputs are not permitted")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise bad("model: Field required")
        mt = body.get("max_tokens")
        if mt is None:
            raise bad("max_tokens: Field required")
        if not _is_int(mt) or mt < 1:
            raise bad("max_tokens: Input should be a valid integer greater than or equal to 1")
        msgs = body.get("messages")
        if not isinstance(msgs, list):
            raise bad("messages: Field required")
        if not msgs:
            raise bad("messages: at least one message is required")
        system = body.get("system")
        if system is not None and not isinstance(system, str) and not (
                isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                                 and isinstance(b.get("text"), str) for b in system)):
            raise bad("system: Input should be a valid string or a list of text blocks")
        prev_role, prev_tools = None, set()
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            if role == "system":
                raise bad('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                          'parameter, not "system" as an input message role.')
            if role not in ("user", "assistant"):
                raise bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if role == prev_role:
                raise bad(f'messages: roles must alternate between "user" and "assistant", but found multiple '
                          f'"{role}" roles in a row')
            if prev_tools and role != "user":
                raise bad(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                          "after")
            ids = self._blocks(i, role, m.get("content"), prev_tools if role == "user" else set(),
                               i == len(msgs) - 1)
            prev_role, prev_tools = role, set(ids)
        names = set()
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise bad("tools: Input should be a valid list")
            for k, t in enumerate(tools):
                if not isinstance(t, dict) or not isinstance(t.get("name"), str) or \
                        not re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", t["name"]):
                    raise bad(f"tools.{k}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
                schema = t.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise bad(f"tools.{k}.input_schema.type: Input should be 'object'")
                names.add(t["name"])
        choice = body.get("tool_choice")
        if choice is not None:
            if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
                raise bad("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', "
                          "'none'")
            if choice["type"] == "tool" and choice.get("name") not in names:
                raise bad(f"tool_choice.name: no tool named '{choice.get('name')}' in tools")
        for fld in ("temperature", "top_p"):
            v = body.get(fld)
            if v is not None and (not _is_num(v) or not 0 <= v <= 1):
                raise bad(f"{fld}: Input should be less than or equal to 1")
        stops = body.get("stop_sequences")
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
            raise bad("stop_sequences: Input should be a valid list of strings")
        if body["model"] not in self.up.models:
            raise self.error(404, f"model: {body['model']}", "not_found_error")

    def conversation(self, body: Any) -> tuple[str, str]:
        system = body.get("system")
        texts = [system if isinstance(system, str) else _text_of(system)]
        texts += [_text_of(m.get("content")) for m in body["messages"]]
        last = next((_text_of(m.get("content")) for m in reversed(body["messages"]) if m["role"] == "user"), "")
        return " ".join(t for t in texts if t), last

    def error(self, status: int, message: str, etype: str | None = None,
              retry_after: float | None = None) -> _Reject:
        etype = etype or self.TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        payload = {"type": "error", "error": {"type": etype, "message": message},
                   "request_id": f"req_mock{self.up._next('req')}"}
        headers = {"request-id": payload["request_id"]}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return _Reject(status, payload, headers)

    @staticmethod
    def _usage(u: Usage, output: int | None = None) -> dict[str, Any]:
        return {"input_tokens": max(0, u.prompt_tokens - u.cached_tokens - u.cache_creation_tokens),
                "cache_creation_input_tokens": u.cache_creation_tokens,
                "cache_read_input_tokens": u.cached_tokens,
                "output_tokens": u.completion_tokens if output is None else output}

    def body(self, a: _Answer, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": a.text}] if a.text else []
        content += [{"type": "tool_use", "id": cid, "name": name, "input": args} for cid, name, args in a.calls]
        return {"id": f"msg_mock{self.up._next('resp')}", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": self.FINISH.get(a.finish, "end_turn"), "stop_sequence": None,
                "usage": self._usage(a.usage)}

    def events(self, a: _Answer, model: str, include_usage: bool) -> list[bytes]:
        def ev(doc: dict[str, Any]) -> bytes:
            return f"event: {doc['type']}\ndata: {json.dumps(doc)}\n\n".encode()

        start = {"id": f"msg_mock{self.up._next('resp')}", "type": "message", "role": "assistant", "model": model,
                 "content": [], "stop_reason": None, "stop_sequence": None, "usage": self._usage(a.usage, 1)}
        out = [ev({"type": "message_start", "message": start}), ev({"type": "ping"})]
        index = 0
        if a.text:
            out.append(ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
            out += [ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
                    for p in _pieces(a.text)]
            out.append(ev({"type": "content_block_stop", "index": 0}))
            index = 1
        for k, (cid, name, args) in enumerate(a.calls):
            i = index + k
            out.append(ev({"type": "content_block_start", "index": i,
                           "content_block": {"type": "tool_use", "id": cid, "name": name, "input": {}}}))
            out += [ev({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": p}}) for p in _split(json.dumps(args))]
            out.append(ev({"type": "content_block_stop", "index": i}))
        out.append(ev({"type": "message_delta",
                       "delta": {"stop_reason": self.FINISH.get(a.finish, "end_turn"), "stop_sequence": None},
                       "usage": {"output_tokens": a.usage.completion_tokens}}))
        out.append(ev({"type": "message_stop"}))
        return out

    def stream_error(self, f: Fail) -> bytes:
        err = self.error(f.status, f.message, f.type).payload
        return f"event: error\ndata: {json.dumps({'type': 'error', 'error': err['error']})}\n\n".encode()


class _Gemini(_Dialect):
    kind = "gemini"
    FIELDS = frozenset({"contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config",
                        "safetySettings", "safety_settings", "generationConfig", "generation_config",
                        "cachedContent", "cached_content"})
    GEN_FIELDS = frozenset({"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                            "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed",
                            "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig",
                            "responseModalities", "mediaResolution"})
    PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                 "codeExecutionResult")
    PART_FIELDS = frozenset(PART_DATA) | {"thought", "thoughtSignature", "videoMetadata"}
    SCHEMA = frozenset({"type", "format", "title", "description", "nullable", "enum", "items", "properties",
                        "required", "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern",
                        "minProperties", "maxProperties", "anyOf", "propertyOrdering", "default", "example"})
    STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
              504: "DEADLINE_EXCEEDED"}
    FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
    PATH = re.compile(r"/v1beta/models/(?P<model>[^/:]+):(?P<action>generateContent|streamGenerateContent)")

    def route(self, request: web.Request) -> tuple[str | None, bool]:
        m = self.PATH.fullmatch(request.path)
        if request.method != "POST" or not m:
            raise self.error(404, f"Method not found or not allowed: {request.method} {request.path}")
        return m.group("model"), m.group("action") == "streamGenerateContent"

    def auth(self, request: web.Request) -> None:
        if self.up.key is None:
            return
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            raise self.error(403, "Method doesn't allow unregistered callers (callers without established "
                                  "identity). Please use API Key or other form of API consumer identity to call "
                                  "this API.")
        if key != self.up.key:
            raise _Reject(400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                          "status": "INVALID_ARGUMENT", "details": [
                                              {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                               "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}})

    def _unknown(self, name: str, where: str = "") -> _Reject:
        at = f" at '{where}'" if where else ""
        return self.error(400, f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')

    def _schema(self, s: Any, where: str) -> None:
        if not isinstance(s, dict):
            raise self.error(400, f"* GenerateContentRequest.{where}: schema must be an object")
        for k in s:
            if k not in self.SCHEMA:
                raise self._unknown(k, where)
        if str(s.get("type", "")).lower() == "object" and "properties" in s and not s["properties"]:
            raise self.error(400, f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
        for name, sub in (s.get("properties") or {}).items():
            self._schema(sub, f"{where}.properties[{name}]")
        if "items" in s:
            self._schema(s["items"], f"{where}.items")
        for k, sub in enumerate(s.get("anyOf") or []):
            self._schema(sub, f"{where}.any_of[{k}]")

    def validate(self, body: Any, model: str | None = None) -> None:
        bad = lambda msg: self.error(400, msg)  # noqa: E731
        if not isinstance(body, dict):
            raise bad("Invalid JSON payload received. Expected an object.")
        for k in body:
            if k not in self.FIELDS:
                raise self._unknown(k)
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise bad("* GenerateContentRequest.contents: contents is not specified")
        called: set[str] = set()       # every function name the model has called so far
        last_calls: list[str] = []     # the calls of the previous model turn
        for i, c in enumerate(contents):
            role = c.get("role", "user") if isinstance(c, dict) else None
            if role not in ("user", "model"):
                raise bad(f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model.")
            parts = c.get("parts")
            if not isinstance(parts, list) or not parts:
                raise bad(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
            calls, responses, first_call = [], 0, True
            for j, p in enumerate(parts):
                where = f"contents[{i}].parts[{j}]"
                if not isinstance(p, dict):
                    raise bad(f"* GenerateContentRequest.{where}: part must be an object")
                for k in p:
                    if k not in self.PART_FIELDS:
                        raise self._unknown(k, where)
                data = [k for k in self.PART_DATA if k in p]
                if len(data) != 1:
                    raise bad(f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one "
                              "initialized field")
                if "text" in p and not isinstance(p["text"], str):
                    raise bad(f"* GenerateContentRequest.{where}.text: must be a string")
                if "inlineData" in p:
                    inline = p["inlineData"]
                    if not isinstance(inline, dict) or not inline.get("mimeType") or not isinstance(
                            inline.get("data"), str):
                        raise bad(f"* GenerateContentRequest.{where}.inline_data: mimeType and data are required")
                    try:
                        base64.b64decode(inline["data"], validate=True)
                    except ValueError:
                        raise bad(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding "
                                  "failed") from None
                if "functionCall" in p:
                    if role != "model":
                        raise bad(f"* GenerateContentRequest.{where}: function call must be in a model turn")
                    fc = p["functionCall"]
                    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str) or not fc["name"]:
                        raise bad(f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty.")
                    if "args" in fc and not isinstance(fc["args"], dict):
                        raise bad(f"Invalid value at '{where}.function_call.args' (type.googleapis.com/"
                                  "google.protobuf.Struct)")
                    if first_call and self.up.require_signatures:
                        sig = p.get("thoughtSignature")
                        if not sig:
                            raise bad(f"Function call `{fc['name']}` in the {i}. content block is missing a "
                                      "`thought_signature`.")
                        if sig != _GEMINI_SKIP_SIGNATURE and sig not in self.up._signatures:
                            raise bad("Corrupted thought signature.")
                    first_call = False
                    calls.append(fc["name"])
                if "functionResponse" in p:
                    if role != "user":
                        raise bad(f"* GenerateContentRequest.{where}: function response must be in a user turn")
                    fr = p["functionResponse"]
                    if not isinstance(fr, dict) or not isinstance(fr.get("name"), str) or not fr["name"]:
                        raise bad(f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty.")
                    if fr["name"] not in called:
                        raise bad(f"* GenerateContentRequest.{where}.function_response.name: function response "
                                  f"'{fr['name']}' does not match any function call in the conversation.")
                    if not isinstance(fr.get("response"), dict):
                        raise bad(f"Invalid value at '{where}.function_response.response' "
                                  "(type.googleapis.com/google.protobuf.Struct)")
                    responses += 1
            if role == "user" and last_calls and responses != len(last_calls):
                raise bad("Please ensure that the number of function response parts is equal to the number of "
                          "function call parts of the function call turn.")
            last_calls = calls if role == "model" else []
            called.update(calls)
        system = body.get("systemInstruction", body.get("system_instruction"))
        if system is not None and (not isinstance(system, dict) or not isinstance(system.get("parts"), list)):
            raise bad("* GenerateContentRequest.system_instruction: must be a Content with parts")
        for t, tool in enumerate(body.get("tools") or []):
            for k in tool:
                if k not in ("functionDeclarations", "function_declarations", "googleSearch", "codeExecution",
                             "urlContext"):
                    raise self._unknown(k, f"tools[{t}]")
            for d, decl in enumerate(tool.get("functionDeclarations") or []):
                where = f"tools[{t}].function_declarations[{d}]"
                for k in decl:
                    if k not in ("name", "description", "parameters", "parametersJsonSchema", "response",
                                 "behavior"):
                        raise self._unknown(k, where)
                if not isinstance(decl.get("name"), str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}",
                                                                              decl["name"]):
                    raise bad(f"* GenerateContentRequest.{where}.name: Invalid function name.")
                if "parameters" in decl:
                    self._schema(decl["parameters"], f"{where}.parameters")
        cfg = body.get("toolConfig")
        if cfg is not None:
            fcc = cfg.get("functionCallingConfig") if isinstance(cfg, dict) else None
            if not isinstance(fcc, dict) or fcc.get("mode", "AUTO") not in ("AUTO", "ANY", "NONE", "VALIDATED",
                                                                             "MODE_UNSPECIFIED"):
                raise bad("Invalid value at 'tool_config.function_calling_config.mode'")
            if fcc.get("allowedFunctionNames") and fcc.get("mode") != "ANY":
                raise bad("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                          "only allowed when mode is ANY")
        gen = body.get("generationConfig")
        if gen is not None:
            if not isinstance(gen, dict):
                raise bad("Invalid value at 'generation_config'")
            for k in gen:
                if k not in self.GEN_FIELDS:
                    raise self._unknown(k, "generation_config")
            mot = gen.get("maxOutputTokens")
            if mot is not None and (not _is_int(mot) or mot < 1):
                raise bad("* GenerateContentRequest.generation_config.max_output_tokens: must be positive")
            t = gen.get("temperature")
            if t is not None and (not _is_num(t) or not 0 <= t <= 2):
                raise bad("* GenerateContentRequest.generation_config.temperature: must be in [0, 2]")
            if len(gen.get("stopSequences") or []) > 5:
                raise bad("* GenerateContentRequest.generation_config.stop_sequences: at most 5")
            if "responseSchema" in gen:
                self._schema(gen["responseSchema"], "generation_config.response_schema")
        if model not in self.up.models:
            raise self.error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                  "generateContent. Call ListModels to see the list of available models and their "
                                  "supported methods.")

    def conversation(self, body: Any) -> tuple[str, str]:
        system = body.get("systemInstruction") or {}
        texts = [_text_of(system.get("parts"))] + [_text_of(c.get("parts")) for c in body["contents"]]
        last = next((_text_of(c.get("parts")) for c in reversed(body["contents"]) if c.get("role", "user") == "user"),
                    "")
        return " ".join(t for t in texts if t), last

    def error(self, status: int, message: str, etype: str | None = None,
              retry_after: float | None = None) -> _Reject:
        err: dict[str, Any] = {"code": status, "message": message,
                               "status": etype or self.STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")}
        headers = {}
        if retry_after is not None:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}]
            headers["retry-after"] = f"{retry_after:g}"
        return _Reject(status, {"error": err}, headers)

    @staticmethod
    def _usage(u: Usage, final: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {"promptTokenCount": u.prompt_tokens}
        if final:
            meta["candidatesTokenCount"] = u.completion_tokens - u.reasoning_tokens
            if u.reasoning_tokens:
                meta["thoughtsTokenCount"] = u.reasoning_tokens
            meta["totalTokenCount"] = u.prompt_tokens + u.completion_tokens
        else:
            meta["totalTokenCount"] = u.prompt_tokens
        if u.cached_tokens:
            meta["cachedContentTokenCount"] = u.cached_tokens
        return meta

    def _call_parts(self, a: _Answer) -> list[dict[str, Any]]:
        parts = []
        for k, (_cid, name, args) in enumerate(a.calls):
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
            if k == 0:
                sig = base64.b64encode(f"mock-signature-{self.up._next('sig')}".encode()).decode()
                self.up._signatures.add(sig)
                part["thoughtSignature"] = sig
            parts.append(part)
        return parts

    def body(self, a: _Answer, model: str) -> dict[str, Any]:
        parts = ([{"text": a.text}] if a.text else []) + self._call_parts(a)
        cand: dict[str, Any] = {"finishReason": self.FINISH.get(a.finish, "STOP"), "index": 0}
        if parts:
            cand["content"] = {"parts": parts, "role": "model"}
        return {"candidates": [cand], "usageMetadata": self._usage(a.usage), "modelVersion": model,
                "responseId": f"mockresp{self.up._next('resp')}"}

    def events(self, a: _Answer, model: str, include_usage: bool) -> list[bytes]:
        rid = f"mockresp{self.up._next('resp')}"
        docs: list[dict[str, Any]] = []
        for p in _pieces(a.text):
            docs.append({"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}],
                         "usageMetadata": self._usage(a.usage, final=False), "modelVersion": model, "responseId": rid})
        calls = self._call_parts(a)
        if calls:
            docs.append({"candidates": [{"content": {"parts": calls, "role": "model"}, "index": 0}],
                         "usageMetadata": self._usage(a.usage, final=False), "modelVersion": model, "responseId": rid})
        last: dict[str, Any] = {"finishReason": self.FINISH.get(a.finish, "STOP"), "index": 0}
        if docs:
            last["content"] = {"parts": [{"text": ""}], "role": "model"}
        docs.append({"candidates": [last], "usageMetadata": self._usage(a.usage), "modelVersion": model,
                     "responseId": rid})
        return [b"data: " + json.dumps(d).encode() + b"\r\n\r\n" for d in docs]

    def stream_error(self, f: Fail) -> bytes:
        return b"data: " + json.dumps(self.error(f.status, f.message, f.type).payload).encode() + b"\r\n\r\n"


_DIALECTS = {"openai": _OpenAI, "anthropic": _Anthropic, "gemini": _Gemini}


# ---- the server --------------------------------------------------------------------

class Upstream:
    """One strict mock provider API on 127.0.0.1 (ephemeral port)."""

    def __init__(self, kind: str, *, key: str | None = "mock-key", models: Iterable[str] | None = None,
                 require_signatures: bool | None = None) -> None:
        if kind not in _DIALECTS:
            raise ValueError(f"unknown upstream kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self.key = key
        self.models: set[str] = set(DEFAULT_MODELS[kind] if models is None else models)
        # Gemini only: demand on replayed function calls the thought signature it issued
        # (or Google's documented placeholder), as Gemini 3 does.
        self.require_signatures = kind == "gemini" if require_signatures is None else require_signatures
        self.requests: list[RecordedRequest] = []
        self.base_url: str | None = None
        self._dialect: _Dialect = _DIALECTS[kind](self)
        self._steps: dict[str, deque[Step]] = {}
        self._defaults: dict[str, Step] = {}
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._signatures: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # -- scripting ------------------------------------------------------------------

    def script(self, model_id: str, *steps: Step, default: Step | None = None) -> "Upstream":
        """Replace ``model_id``'s queue with ``steps`` (and its default answer, if given).
        Scripting a model makes it known to the server."""
        with self._lock:
            self.models.add(model_id)
            self._steps[model_id] = deque(steps)
            if default is not None:
                self._defaults[model_id] = default
        return self

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._steps.clear()
            self._defaults.clear()

    def _take(self, model: str) -> tuple[float, Step | None]:
        delay = 0.0
        with self._lock:
            queue = self._steps.get(model)
            while queue:
                step = queue.popleft()
                if isinstance(step, Delay):
                    delay += step.ms / 1000
                    continue
                return delay, step
            return delay, self._defaults.get(model)

    def _next(self, name: str) -> int:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + 1
            return self._counters[name]

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> str:
        if self._runner is not None:
            assert self.base_url
            return self.base_url
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}{_BASE_PATH[self.kind]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        await self._runner.cleanup()
        self._runner = None
        self.base_url = None

    async def __aenter__(self) -> "Upstream":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- handling -------------------------------------------------------------------

    def _record(self, request: web.Request, raw: bytes) -> RecordedRequest:
        headers = {}
        for name, value in request.headers.items():
            low = name.lower()
            if low == "authorization":
                value = value.split(" ", 1)[0] + " [redacted]" if " " in value else "[redacted]"
            elif low in ("x-api-key", "x-goog-api-key"):
                value = "[redacted]"
            headers[low] = value
        query = {k: ("[redacted]" if k == "key" else v) for k, v in request.query.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(request.method, request.path, query, headers, body, raw)
        self.requests.append(rec)
        return rec

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec = self._record(request, raw)
        d = self._dialect
        try:
            model, url_stream = d.route(request)
            d.auth(request)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise self._bad_json() from None
            if self.kind == "gemini":
                rec.model = model
                d.validate(body, model)  # type: ignore[call-arg]
                stream = url_stream
                sse = request.query.get("alt") == "sse"
            else:
                rec.model = body.get("model") if isinstance(body, dict) else None
                d.validate(body)
                model = body["model"]
                stream = d.wants_stream(body, url_stream)
                sse = True
            rec.stream = stream
        except _Reject as rej:
            rec.status = rej.status
            return web.json_response(rej.payload, status=rej.status, headers=rej.headers)
        assert model is not None
        delay, step = self._take(model)
        if delay:
            await asyncio.sleep(delay)
        if step is None:
            step = Reply(text=echo_text(d.conversation(body)[1]))
        return await self._answer(request, rec, body, model, stream, sse, step)

    def _bad_json(self) -> _Reject:
        if self.kind == "openai":
            return self._dialect.error(400, "We could not parse the JSON body of your request. (HINT: This likely "
                                            "means you aren't using your HTTP library correctly.)")
        if self.kind == "anthropic":
            return self._dialect.error(400, "There was an error parsing the body of your request as JSON.")
        return self._dialect.error(400, "Invalid JSON payload received. Unexpected token.")

    def _answer_of(self, step: Reply | ReplyToolCall | StreamCut, body: Any) -> _Answer:
        prompt_text, last = self._dialect.conversation(body)
        n_msgs = len(body.get("messages") or body.get("contents") or [])
        if isinstance(step, ReplyToolCall):
            args = step.arguments if isinstance(step.arguments, Mapping) else json.loads(step.arguments)
            prefix = {"openai": "call_mock", "anthropic": "toolu_mock", "gemini": "gcall_mock"}[self.kind]
            cid = step.id or f"{prefix}{self._next('call')}"
            text, calls, finish = step.text, [(cid, step.name, dict(args))], "tool_calls"
            out_text = text + json.dumps(dict(args))
            given = step.usage
        else:
            text, calls = step.text, []
            finish = step.finish_reason if isinstance(step, Reply) else "stop"
            out_text = text
            given = step.usage if isinstance(step, Reply) else None
        guess = Usage(prompt_tokens=4 * n_msgs + _tokens(prompt_text), completion_tokens=max(1, _tokens(out_text)))
        return _Answer(text, calls, finish, _usage_of(given, guess))

    async def _answer(self, request: web.Request, rec: RecordedRequest, body: Any, model: str, stream: bool,
                      sse: bool, step: Step) -> web.StreamResponse:
        d = self._dialect
        if isinstance(step, Stall):
            assert self._closing is not None
            await self._closing.wait()
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=499)
        if isinstance(step, Raw):
            rec.status = step.status
            return web.Response(status=step.status, body=step.body, content_type=step.content_type,
                                headers=dict(step.headers))
        if isinstance(step, Fail) and not (stream and step.in_stream):
            rej = d.error(step.status, step.message, step.type, step.retry_after)
            rec.status = rej.status
            return web.json_response(rej.payload, status=rej.status, headers=rej.headers)
        include_usage = d.includes_usage(body) if stream else True
        if isinstance(step, Fail):  # an error event inside a started stream
            answer = self._answer_of(Reply(text="partial answer"), body)
            events = d.events(answer, model, include_usage)[:2] + [d.stream_error(step)]
            return await self._send_stream(request, rec, events, cut=None)
        assert isinstance(step, (Reply, ReplyToolCall, StreamCut))
        answer = self._answer_of(step, body)
        cut = step if isinstance(step, StreamCut) else None
        if not stream:
            payload = json.dumps(d.body(answer, model)).encode()
            if cut is None:
                rec.status = 200
                return web.Response(status=200, body=payload, content_type="application/json")
            return await self._send_truncated(request, rec, payload, cut)
        events = d.events(answer, model, include_usage)
        if not sse:  # Gemini without alt=sse streams one JSON array
            docs = [json.loads(e.decode().removeprefix("data: ")) for e in events]
            rec.status = 200
            return web.json_response(docs)
        if cut is not None:
            events = events[:max(0, min(cut.after_chunks, len(events) - 1))]
        return await self._send_stream(request, rec, events, cut)

    async def _send_stream(self, request: web.Request, rec: RecordedRequest, events: list[bytes],
                           cut: StreamCut | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
        rec.status = 200
        await resp.prepare(request)
        for ev in events:
            await resp.write(ev)
        if cut is not None and cut.abort:
            await asyncio.sleep(0.01)  # let the kernel take the bytes before the drop
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def _send_truncated(self, request: web.Request, rec: RecordedRequest, payload: bytes,
                              cut: StreamCut) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(payload)
        rec.status = 200
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if cut.abort:
            await asyncio.sleep(0.01)
            if request.transport is not None:
                request.transport.close()
        return resp


# ---- synchronous callers -----------------------------------------------------------

class UpstreamThread:
    """Upstreams served from a private event loop in a daemon thread."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams = upstreams
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mock-upstreams", daemon=True)
        self._running = False

    def start(self) -> "UpstreamThread":
        if not self._running:
            self._thread.start()
            self._running = True
            for up in self.upstreams:
                asyncio.run_coroutine_threadsafe(up.start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._running:
            return
        for up in self.upstreams:
            asyncio.run_coroutine_threadsafe(up.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._running = False

    def __getitem__(self, kind: str) -> Upstream:
        for up in self.upstreams:
            if up.kind == kind:
                return up
        raise KeyError(kind)

    def __enter__(self) -> "UpstreamThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_in_thread(*upstreams: Upstream | str, key: str | None = "mock-key") -> UpstreamThread:
    """Start upstreams (``Upstream`` objects, or kind names made with ``key``) on a background
    thread and return the running handle; ``stop()`` it (or use it as a context manager)."""
    ups = [u if isinstance(u, Upstream) else Upstream(u, key=key) for u in (upstreams or KINDS)]
    return UpstreamThread(ups).start()


# ---- a minimal client, for tests that exercise a wire against these servers ---------

@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes                    # everything received
    chunks: list[bytes]            # as the bytes arrived
    error: BaseException | None    # a transport error that ended the body early


async def exchange(req: Any, *, timeout: float = 10.0) -> Exchange:
    """Send a wire's ``HttpRequest`` with aiohttp; never raises for HTTP or payload errors."""
    import aiohttp

    chunks: list[bytes] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.request(req.method, req.url, headers=req.headers, data=req.body) as resp:
            error: BaseException | None = None
            try:
                async for data in resp.content.iter_any():
                    chunks.append(data)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                error = exc
            return Exchange(resp.status, {k.lower(): v for k, v in resp.headers.items()}, b"".join(chunks),
                            chunks, error)
