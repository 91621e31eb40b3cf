"""Anthropic Messages API (``POST /v1/messages``).

What differs from the router's OpenAI shape, and how it is bridged:

* System and developer messages become the top-level ``system`` string (their position
  in the conversation is not kept: the API has nowhere to put it).
* Turns must alternate user/assistant, so consecutive same-role turns are merged;
  OpenAI ``tool`` messages become ``tool_result`` blocks of a user turn (placed before
  any text of that turn, as the API wants them first).
* Tool-call ids must match ``^[a-zA-Z0-9_-]+$``. :func:`wire_tool_id` maps every id
  injectively into that charset, on the ``tool_use`` and the ``tool_result`` side alike,
  so a conversation whose ids were minted by another provider carries over.
* ``max_tokens`` is required (default 4096); ``temperature`` is clamped to the API's 0..1.
* There is no ``response_format``: JSON modes become a system instruction (see
  :func:`_json_instruction`).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Mapping

from .base import (
    HttpRequest, ProviderError, SSEDecoder, SSEEvent, Target, event_json, chat_chunk, content_text, error_text, json_body,
    function_tools, refuse_unsupported, parse_data_url, retry_after, scrub, status_kind, target_headers, tool_arguments, usage_block,
    dump_body,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_ID_CHARSET = re.compile(r"[a-zA-Z0-9_-]+")
# Ids that need rewriting get this prefix plus their unpadded base64url (whose alphabet is
# exactly the allowed charset). Valid ids that happen to start with the prefix are encoded
# too, which keeps the mapping injective: no rewritten id can equal an untouched one.
ID_PREFIX = "uhid_"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_ERROR_TYPES = {
    "authentication_error": "auth_error",
    "permission_error": "auth_error",
    "billing_error": "payment_required",
    "not_found_error": "model_unavailable",
    "rate_limit_error": "rate_limit",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "timeout",
    "request_too_large": "bad_request",
}


# ---- tool-call ids -------------------------------------------------------------

def wire_tool_id(raw: Any) -> str:
    """A caller's tool-call id as Anthropic accepts it: unchanged when already valid."""
    s = "" if raw is None else str(raw)
    if _ID_CHARSET.fullmatch(s) and not s.startswith(ID_PREFIX):
        return s
    return ID_PREFIX + base64.urlsafe_b64encode(s.encode("utf-8")).decode("ascii").rstrip("=")


def caller_tool_id(wire_id: str) -> str:
    """Inverse of :func:`wire_tool_id` (ids Anthropic minted itself come back unchanged)."""
    if not wire_id.startswith(ID_PREFIX):
        return wire_id
    enc = wire_id[len(ID_PREFIX):]
    try:
        return base64.urlsafe_b64decode(enc + "=" * (-len(enc) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return wire_id


# ---- request -------------------------------------------------------------------

def _image_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str):
        return None
    data = parse_data_url(url)
    if data:
        return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _file_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    ref = part.get("file") if isinstance(part.get("file"), dict) else {}
    data = parse_data_url(str(ref.get("file_data") or ""))
    if data and data[0] in ("application/pdf", "text/plain"):
        return {"type": "document", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
    return None


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """User-side content (a string or OpenAI parts) as Anthropic blocks; empty text dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        block = None
        if kind in ("text", "input_text"):
            text = str(part.get("text") or "")
            block = {"type": "text", "text": text} if text.strip() else None
        elif kind == "image_url":
            block = _image_block(part)
        elif kind == "file":
            block = _file_block(part)
        if block:
            blocks.append(block)
    return blocks


def _assistant_blocks(msg: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = content_text(msg.get("content"))
    if text.strip():
        blocks.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        blocks.append({"type": "tool_use", "id": wire_tool_id(call.get("id")), "name": str(fn.get("name") or ""),
                       "input": tool_arguments(fn.get("arguments"))})
    return blocks


def _tool_result(msg: Mapping[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": wire_tool_id(msg.get("tool_call_id"))}
    content = msg.get("content")
    if isinstance(content, list):
        inner = [b for b in _content_blocks(content) if b["type"] in ("text", "image")]
        if inner:
            block["content"] = inner
    elif content is not None and str(content) != "":
        block["content"] = content if isinstance(content, str) else json.dumps(content)
    return block


def convert_messages(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages -> (system texts, alternating Anthropic turns)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            text = content_text(msg.get("content"))
            if text.strip():
                system.append(text)
            continue
        if role == "user":
            blocks = _content_blocks(msg.get("content"))
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg)]
        else:
            continue  # legacy "function" messages have no id to pair with
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results must open the turn
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":
        # The API refuses a final (prefill) assistant turn ending in whitespace.
        last = turns[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
    return system, turns


def _json_instruction(response_format: Any) -> str | None:
    # The Messages API has no response_format. JSON modes are honoured by instruction:
    # the model is told to answer with JSON only (and given the schema when there is one);
    # checking the answer is the router's job, as it is for any provider.
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond with a single valid JSON object and nothing else: no prose, no Markdown code fences."
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format.get("json_schema"), dict) else {}
        schema = spec.get("schema", {})
        return ("Respond with a single valid JSON value that conforms to the following JSON Schema, and nothing"
                " else: no prose, no Markdown code fences.\nJSON Schema: "
                + json.dumps(schema, ensure_ascii=False, sort_keys=True))
    return None


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else []:
        fn = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else None
        if not fn or not fn.get("name"):
            continue
        schema = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        schema = {"type": "object", "properties": {}, **schema} if schema.get("type") in (None, "object") else {
            "type": "object", "properties": {"value": schema}}
        entry: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        out = None
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _max_tokens(body: Mapping[str, Any]) -> int:
    for field in ("max_tokens", "max_completion_tokens"):
        v = body.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return DEFAULT_MAX_TOKENS


# ---- response ------------------------------------------------------------------

def finish_reason(stop_reason: Any, has_tool_calls: bool = False) -> str:
    if stop_reason is None:
        return "tool_calls" if has_tool_calls else "stop"
    return STOP_REASONS.get(str(stop_reason), "stop")


def anthropic_usage(u: Any) -> dict[str, Any]:
    """prompt = input + cache reads + cache writes (Anthropic counts them apart); cached = reads."""
    u = u if isinstance(u, dict) else {}
    inp = int(u.get("input_tokens") or 0)
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    return usage_block(inp + read + write, int(u.get("output_tokens") or 0), cached=read,
                       cache_creation_tokens=write)


def classify(status: int | None, etype: Any, text: str, details: Any = None) -> str:
    etype = str(etype or "")
    low = text.lower()
    if etype == "invalid_request_error":
        if "credit balance" in low:
            return "payment_required"
        return status_kind(status if status and status >= 400 else 400, text)
    if etype == "rate_limit_error" and (
            (isinstance(details, dict) and details.get("error_code") == "enforced_spend_limit_reached")
            or "spend limit" in low):
        return "payment_required"
    if etype in _ERROR_TYPES:
        return _ERROR_TYPES[etype]
    if status is None:
        return "server_error" if etype else "unknown"
    return status_kind(status, text)


def _error_parts(body: bytes) -> tuple[Any, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return err.get("type"), err.get("details")
    return None, None


def _headers(target: Target, stream: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION,
               "Accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    headers.update(target.headers)
    return headers


class AnthropicWire:
    name = "anthropic"

    def build(self, body: Mapping[str, Any], target: Target, stream: bool) -> HttpRequest:
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            # the Messages API answers one message: sending it would return 1 choice for n
            raise ProviderError("bad_request", f"anthropic: n={n} asks for several choices; "
                                "the Messages API answers one")
        system, turns = convert_messages(body.get("messages"))
        instruction = _json_instruction(body.get("response_format"))
        if instruction:
            system.append(instruction)
        out: dict[str, Any] = {"model": target.model_id, "max_tokens": _max_tokens(body), "messages": turns}
        if system:
            out["system"] = "\n\n".join(system)
        if isinstance(body.get("temperature"), (int, float)):
            out["temperature"] = min(1.0, max(0.0, float(body["temperature"])))
        if isinstance(body.get("top_p"), (int, float)):
            out["top_p"] = body["top_p"]
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        stops = [s for s in stops if isinstance(s, str) and s.strip()]
        if stops:
            out["stop_sequences"] = stops
        refuse_unsupported(body, "anthropic")
        offered, choice = function_tools(body, "anthropic")
        tools = _tools(offered)
        if tools:
            out["tools"] = tools
            choice = _tool_choice(choice, body.get("parallel_tool_calls"))
            if choice:
                out["tool_choice"] = choice
        if isinstance(body.get("user"), str) and body["user"]:
            out["metadata"] = {"user_id": body["user"]}
        if stream:
            out["stream"] = True
        return HttpRequest("POST", f"{target.base_url}/messages", target_headers(target, stream, _headers),
                           dump_body(out))

    def parse(self, status: int, headers: Mapping[str, str], body: bytes, target: Target) -> dict[str, Any]:
        if not 200 <= status < 300:
            raise self.error(status, headers, body, target=target)
        doc = json_body(body, "anthropic")
        if isinstance(doc, dict) and doc.get("type") == "error":
            raise self.error(500, headers, body, target=target)
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise ProviderError("bad_response", "anthropic: response has no content list", status)
        text, calls = [], []
        for block in doc["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                calls.append({"id": str(block.get("id") or f"toolu_{len(calls)}"), "type": "function",
                              "function": {"name": str(block.get("name") or ""),
                                           "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        joined = "".join(text)
        message: dict[str, Any] = {"role": "assistant", "content": joined if joined or not calls else None}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": str(doc.get("id") or "msg"),
            "object": "chat.completion",
            "created": 0,
            "model": str(doc.get("model") or target.model_id),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": finish_reason(doc.get("stop_reason"), bool(calls))}],
            "usage": anthropic_usage(doc.get("usage")),
        }

    def stream(self, target: Target) -> "AnthropicStream":
        return AnthropicStream(target)

    def error(self, status: int, headers: Mapping[str, str], body: bytes, *,
              target: Target | None = None) -> ProviderError:
        text = error_text(body)
        etype, details = _error_parts(body)
        kind = classify(status, etype, text, details)
        label = f" {etype}" if etype else ""
        return ProviderError(kind, scrub(f"HTTP {status}{label}: {text}", target.api_key if target else None),
                             status, retry_after_s=retry_after(headers))


class AnthropicStream(SSEDecoder):
    """Messages SSE events -> OpenAI chunks; ``message_stop`` is the end marker."""

    wire = "anthropic"
    end_marker = "message_stop"

    def __init__(self, target: Target) -> None:
        super().__init__()
        self._key = target.api_key
        self._id = "msg"
        self._model = target.model_id
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # content block index -> tool_calls index
        self._stop_reason: Any = None
        self._started = False

    def _chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None, **kw: Any) -> dict[str, Any]:
        return chat_chunk(self._id, self._model, delta, finish, **kw)

    def _handle(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if self._done:
                continue
            try:
                data = event_json(ev.data)
            except ValueError:
                raise ProviderError("bad_response", scrub(f"anthropic: undecodable event: {ev.data[:120]}",
                                                          self._key)) from None
            if not isinstance(data, dict):
                raise ProviderError("bad_response", "anthropic: stream event is not an object")
            kind = data.get("type") or ev.event
            if kind == "message_start":
                msg = data.get("message") if isinstance(data.get("message"), dict) else {}
                self._id = str(msg.get("id") or self._id)
                self._model = str(msg.get("model") or self._model)
                if isinstance(msg.get("usage"), dict):
                    self._usage.update({k: v for k, v in msg["usage"].items() if v is not None})
                self._started = True
                out.append(self._chunk({"role": "assistant", "content": ""}))
            elif kind == "content_block_start":
                block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
                if block.get("type") == "tool_use":
                    n = self._tools[int(data.get("index", 0))] = len(self._tools)
                    out.append(self._chunk({"tool_calls": [{
                        "index": n, "id": str(block.get("id") or f"toolu_{n}"), "type": "function",
                        "function": {"name": str(block.get("name") or ""), "arguments": ""}}]}))
                    if block.get("input"):
                        out.append(self._chunk({"tool_calls": [{"index": n, "function": {
                            "arguments": json.dumps(block["input"], ensure_ascii=False)}}]}))
                elif block.get("type") == "text" and block.get("text"):
                    out.append(self._chunk({"content": block["text"]}))
            elif kind == "content_block_delta":
                delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    out.append(self._chunk({"content": delta["text"]}))
                elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                    n = self._tools.get(int(data.get("index", 0)))
                    if n is not None:
                        out.append(self._chunk({"tool_calls": [{"index": n, "function": {
                            "arguments": delta["partial_json"]}}]}))
                # thinking_delta / signature_delta / citations_delta: not part of the OpenAI shape
            elif kind == "message_delta":
                delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
                if delta.get("stop_reason"):
                    self._stop_reason = delta["stop_reason"]
                if isinstance(data.get("usage"), dict):  # cumulative counts
                    self._usage.update({k: v for k, v in data["usage"].items() if v is not None})
            elif kind == "message_stop":
                self._done = True
                out.append(self._chunk({}, finish_reason(self._stop_reason, bool(self._tools))))
                out.append(self._chunk(None, usage=anthropic_usage(self._usage)))
            elif kind == "error":
                err = data.get("error") if isinstance(data.get("error"), dict) else {}
                text = str(err.get("message") or err.get("type") or "stream error")
                raise ProviderError(classify(None, err.get("type"), text, err.get("details")),
                                    scrub(f"stream {err.get('type') or 'error'}: {text}", self._key))
            # ping, content_block_stop and future event types carry nothing to forward
        return out


WIRE = AnthropicWire()
