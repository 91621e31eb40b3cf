"""OpenAI Chat Completions, and every API that copies it.

OpenAI, OpenRouter, Groq, Together, DeepSeek, Ollama and vLLM all take the router's own
request shape, so ``build`` is a pass-through: the model id becomes the provider's, the
router's private fields go, streaming asks for the usage chunk. ``parse`` and the stream
decoder mostly normalise: ``usage`` is always complete, ``choices`` is always a list.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .base import (
    HttpRequest, ProviderError, SSEDecoder, SSEEvent, Target, event_json, error_text, json_body, retry_after, scrub,
    status_kind, usage_block, dump_body, target_headers,
)

# Fields the router reads itself; no provider knows them (OpenAI answers 400 to unknown ones).
ROUTER_ONLY_FIELDS = frozenset({
    "policy_ir", "flow_ir", "requirements", "session", "timeout_ms", "first_token_timeout_ms", "_filters",
})

# Error ``code``/``type`` strings from OpenAI-compatible bodies that say more than the status.
_CODE_KINDS = {
    "invalid_api_key": "auth_error",
    "authentication_error": "auth_error",
    "permission_denied": "auth_error",
    "insufficient_quota": "payment_required",
    "billing_hard_limit_reached": "payment_required",
    "billing_not_active": "payment_required",
    "model_not_found": "model_unavailable",
    "context_length_exceeded": "context_overflow",
    "rate_limit_exceeded": "rate_limit",
    "tokens": "rate_limit",
    "requests": "rate_limit",
    "content_filter": "content_filter",
    "content_policy_violation": "content_filter",
    "server_error": "server_error",
}


def _keeps_extra_content(target: Target) -> bool:
    # ``tool_calls[].extra_content`` carries Gemini thought signatures (Google's own OpenAI
    # layer defines it). Google's endpoint wants it back; OpenAI rejects unknown nested fields.
    return "generativelanguage.googleapis.com" in target.base_url


def _strip_extra_content(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages
    if not any(isinstance(m, dict) and m.get("tool_calls") for m in messages):
        return messages  # the common case: nothing to strip, the caller's list as it is
    out = []
    for msg in messages:
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if isinstance(calls, list) and any(isinstance(c, dict) and "extra_content" in c for c in calls):
            msg = {**msg, "tool_calls": [
                {k: v for k, v in c.items() if k != "extra_content"} if isinstance(c, dict) else c for c in calls
            ]}
        out.append(msg)
    return out


def normalize_usage(usage: Any) -> dict[str, Any]:
    """Complete an OpenAI-style ``usage`` (zeros where the provider said nothing), keeping extras."""
    u = usage if isinstance(usage, dict) else {}
    ptd = u.get("prompt_tokens_details") if isinstance(u.get("prompt_tokens_details"), dict) else {}
    ctd = u.get("completion_tokens_details") if isinstance(u.get("completion_tokens_details"), dict) else {}
    # DeepSeek reports cache hits at the top level instead of in prompt_tokens_details.
    cached = ptd.get("cached_tokens") or u.get("prompt_cache_hit_tokens") or 0
    base = usage_block(u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0,
                       total=u.get("total_tokens") or None, cached=cached,
                       reasoning=ctd.get("reasoning_tokens") or 0)
    out = {**u, **base}
    out["prompt_tokens_details"] = {**ptd, **base["prompt_tokens_details"]}
    out["completion_tokens_details"] = {**ctd, **base["completion_tokens_details"]}
    return out


def classify(status: int, err: Any, text: str) -> str:
    """Error kind from an OpenAI-style ``error`` object, falling back to the status."""
    if isinstance(err, dict):
        for field in ("code", "type"):
            kind = _CODE_KINDS.get(str(err.get(field) or "").lower())
            if kind:
                return kind
    return status_kind(status, text)


def _embedded_status(err: Any, default: int) -> int:
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, int) and 400 <= code < 600:
        return code
    if isinstance(code, str) and code.isdigit() and 400 <= int(code) < 600:
        return int(code)
    return default


def _headers(target: Target, stream: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return headers


class OpenAIWire:
    name = "openai"

    def build(self, body: Mapping[str, Any], target: Target, stream: bool) -> HttpRequest:
        out = {k: v for k, v in body.items()
               if k not in ROUTER_ONLY_FIELDS and not k.startswith(("_", "x_"))}  # the router's own fields go
        out["model"] = target.model_id
        if stream:
            out["stream"] = True
            opts = out.get("stream_options") if isinstance(out.get("stream_options"), dict) else {}
            out["stream_options"] = {**opts, "include_usage": True}
        else:
            out.pop("stream", None)
            out.pop("stream_options", None)
        if "messages" in out and not _keeps_extra_content(target):
            out["messages"] = _strip_extra_content(out.get("messages"))
        return HttpRequest("POST", f"{target.base_url}/chat/completions", target_headers(target, stream, _headers),
                           dump_body(out))

    def parse(self, status: int, headers: Mapping[str, str], body: bytes, target: Target) -> dict[str, Any]:
        if not 200 <= status < 300:
            raise self.error(status, headers, body, target=target)
        doc = json_body(body, "openai")
        if not isinstance(doc, dict):
            raise ProviderError("bad_response", "openai: body is not an object", status)
        if doc.get("error") and not doc.get("choices"):
            # Some gateways (OpenRouter) answer 200 with an error object.
            raise self.error(_embedded_status(doc["error"], 502), headers, body, target=target)
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
            raise ProviderError("bad_response", "openai: response has no choices with a message", status)
        doc.setdefault("object", "chat.completion")
        doc["usage"] = normalize_usage(doc.get("usage"))
        return doc

    def stream(self, target: Target) -> "OpenAIStream":
        return OpenAIStream(self, target)

    def error(self, status: int, headers: Mapping[str, str], body: bytes, *,
              target: Target | None = None) -> ProviderError:
        text = error_text(body)
        err = None
        try:
            doc = json.loads(body)
            if isinstance(doc, list) and doc:
                doc = doc[0]
            err = doc.get("error") if isinstance(doc, dict) else None
        except ValueError:
            pass
        kind = classify(status, err, text)
        key = target.api_key if target else None
        return ProviderError(kind, scrub(f"HTTP {status}: {text}", key), status,
                             retry_after_s=retry_after(headers))


class OpenAIStream(SSEDecoder):
    """``data: {chunk}`` events until ``data: [DONE]``."""

    wire = "openai"
    end_marker = "[DONE]"

    def __init__(self, wire: OpenAIWire, target: Target) -> None:
        super().__init__()
        self._wire = wire
        self._key = target.api_key

    def _handle(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if self._done:
                continue
            data = ev.data.strip()
            if data == "[DONE]":
                self._done = True
                continue
            try:
                chunk = event_json(data)
            except ValueError:
                raise ProviderError("bad_response", scrub(f"openai: undecodable stream event: {data[:120]}",
                                                          self._key)) from None
            if not isinstance(chunk, dict):
                raise ProviderError("bad_response", "openai: stream event is not an object")
            if chunk.get("error") and not chunk.get("choices"):
                err = chunk["error"]
                status = _embedded_status(err, 500)
                text = err.get("message") if isinstance(err, dict) else str(err)
                raise ProviderError(classify(status, err, str(text)),
                                    scrub(f"stream error: {text}", self._key), status)
            if not isinstance(chunk.get("choices"), list):
                chunk["choices"] = []  # vLLM sends null on the usage-only chunk
            if isinstance(chunk.get("usage"), dict):
                chunk["usage"] = normalize_usage(chunk["usage"])
            out.append(chunk)
        return out


WIRE = OpenAIWire()
