"""Google Gemini API (``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``).

Bridging notes:

* Roles are ``user`` and ``model``; system/developer messages become ``systemInstruction``;
  consecutive same-role turns are merged (a turn answering N function calls must hold
  exactly N ``functionResponse`` parts).
* A ``tool`` message has only the call's id; Gemini wants the function's name, recovered
  from the earlier assistant tool call with that id. Results that are not a JSON object
  are wrapped as ``{"result": ...}`` (``response`` must be an object).
* Function declarations take an OpenAPI subset of JSON Schema: :func:`gemini_schema`
  keeps what Gemini accepts, inlines local ``$ref`` and drops the rest.
* Thought signatures: Gemini 3 rejects a replayed ``functionCall`` without the
  ``thoughtSignature`` it came with. ``parse`` carries it on the tool call as
  ``extra_content.google.thought_signature`` (the field Google's own OpenAI layer uses);
  ``build`` puts it back, and for history from elsewhere uses the placeholder value
  Google documents for that case.
* Usage: Gemini counts thinking (``thoughtsTokenCount``) apart from
  ``candidatesTokenCount``. Here ``completion_tokens`` = candidates + thoughts, with the
  thoughts also reported as ``completion_tokens_details.reasoning_tokens``, which is how
  OpenAI reports reasoning models (and thinking is billed at the output rate).
  ``toolUsePromptTokenCount`` is added to ``prompt_tokens`` so the three counts add up.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from .base import (
    HttpRequest, ProviderError, SSEDecoder, SSEEvent, Target, event_json, chat_chunk, content_text, error_text, json_body,
    function_tools, refuse_unsupported, parse_data_url, retry_after, scrub, status_kind, target_headers, tool_arguments, usage_block,
    dump_body,
)

# Documented placeholder for function calls whose signature is unknown (history that
# started on another model). Only the first functionCall of a turn needs one.
SKIP_SIGNATURE = "skip_thought_signature_validator"

FILTER_REASONS = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})

_STATUS_KINDS = {
    "RESOURCE_EXHAUSTED": "rate_limit",
    "PERMISSION_DENIED": "auth_error",
    "UNAUTHENTICATED": "auth_error",
    "NOT_FOUND": "model_unavailable",
    "UNAVAILABLE": "server_error",
    "INTERNAL": "server_error",
    "UNKNOWN": "server_error",
    "DEADLINE_EXCEEDED": "timeout",
}

# Schema keys Gemini's function-declaration / response schema accepts (an OpenAPI 3 subset).
SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "minProperties",
    "maxProperties", "anyOf", "propertyOrdering",
})
_FORMATS = {"string": {"enum", "date-time"}, "number": {"float", "double"}, "integer": {"int32", "int64"}}
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")


# ---- schema ----------------------------------------------------------------------

def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for key in ref[2:].split("/"):
        key = key.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def gemini_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A JSON Schema reduced to what Gemini accepts (unknown keys dropped, refs inlined)."""
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    if depth > 24:
        return {"type": "object"}
    if isinstance(schema.get("$ref"), str):
        target = _resolve(schema["$ref"], root)
        merged = {**(target if isinstance(target, dict) else {"type": "object"}),
                  **{k: v for k, v in schema.items() if k != "$ref"}}
        return gemini_schema(merged, root, depth + 1)
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        if "null" in kind:
            out["nullable"] = True
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if rest else None
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        non_null = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(non_null) < len(variants):
            out["nullable"] = True
        if len(non_null) == 1 and not kind:
            return {**gemini_schema(non_null[0], root, depth + 1), **out,
                    **({"description": schema["description"]} if isinstance(schema.get("description"), str) else {})}
        out["anyOf"] = [gemini_schema(v, root, depth + 1) for v in non_null]
    for key, val in schema.items():
        if key not in SCHEMA_KEYS or key in ("type", "anyOf"):
            continue
        if key == "properties" and isinstance(val, dict):
            out[key] = {name: gemini_schema(sub, root, depth + 1) for name, sub in val.items()}
        elif key == "items":
            out[key] = gemini_schema(val, root, depth + 1)
        else:
            out[key] = val
    if "const" in schema and "enum" not in out:
        out["enum"] = [schema["const"]]
    if kind:
        out["type"] = kind
    if "enum" in out:
        if out.get("type", "string") == "string" and isinstance(out["enum"], list):
            out["enum"] = [str(v) for v in out["enum"]]
            out.setdefault("type", "string")
        else:
            del out["enum"]
    if "format" in out and out["format"] not in _FORMATS.get(str(out.get("type")), set()):
        del out["format"]
    if isinstance(out.get("required"), list) and isinstance(out.get("properties"), dict):
        out["required"] = [r for r in out["required"] if r in out["properties"]]
        if not out["required"]:
            del out["required"]
    return out


# ---- request ---------------------------------------------------------------------

def _media_part(url: Any) -> dict[str, Any] | None:
    if not isinstance(url, str):
        return None
    data = parse_data_url(url)
    if data:
        return {"inlineData": {"mimeType": data[0], "data": data[1]}}
    if url.startswith(("http://", "https://", "gs://")):
        low = url.lower().split("?")[0]
        mime = next((m for ext, m in ((".png", "image/png"), (".webp", "image/webp"), (".gif", "image/gif"),
                                      (".pdf", "application/pdf")) if low.endswith(ext)), "image/jpeg")
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    return None


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text") and part.get("text"):
            parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            ref = part.get("image_url")
            media = _media_part(ref.get("url") if isinstance(ref, dict) else ref)
            if media:
                parts.append(media)
        elif kind == "file" and isinstance(part.get("file"), dict):
            media = _media_part(part["file"].get("file_data"))
            if media:
                parts.append(media)
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            if audio.get("data"):
                parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                             "data": audio["data"]}})
    return parts


def _signature(call: Mapping[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _function_response(content: Any) -> dict[str, Any]:
    if isinstance(content, list):
        content = content_text(content)
    if isinstance(content, str):
        try:
            value = json.loads(content)
        except ValueError:
            value = content
    else:
        value = content
    return value if isinstance(value, dict) else {"result": value}


def convert_messages(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages -> (system texts, Gemini ``contents``)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id -> function name
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
            gem_role, parts = "user", _user_parts(msg.get("content"))
        elif role == "assistant":
            gem_role, parts = "model", []
            text = content_text(msg.get("content"))
            if text:
                parts.append({"text": text})
            first_call = True
            for call in msg.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                fn = call.get("function") if isinstance(call.get("function"), dict) else {}
                name = str(fn.get("name") or "")
                if call.get("id") is not None:
                    names[str(call["id"])] = name
                part: dict[str, Any] = {"functionCall": {"name": name, "args": tool_arguments(fn.get("arguments"))}}
                sig = _signature(call) or (SKIP_SIGNATURE if first_call else None)
                if sig:
                    part["thoughtSignature"] = sig
                first_call = False
                parts.append(part)
        elif role == "tool":
            call_id = str(msg.get("tool_call_id") or "")
            name = names.get(call_id) or str(msg.get("name") or "") or "function"
            gem_role = "user"
            parts = [{"functionResponse": {"name": name, "response": _function_response(msg.get("content"))}}]
        else:
            continue
        if not parts:
            continue
        if contents and contents[-1]["role"] == gem_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gem_role, "parts": parts})
    for turn in contents:
        if turn["role"] == "user":  # function responses first, in the order of the calls
            turn["parts"].sort(key=lambda p: "functionResponse" not in p)
    return system, contents


def _tools(tools: Any) -> list[dict[str, Any]]:
    decls = []
    for tool in tools if isinstance(tools, list) else []:
        fn = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else None
        if not fn or not fn.get("name"):
            continue
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = gemini_schema(fn.get("parameters")) if isinstance(fn.get("parameters"), dict) else None
        if params and params.get("properties"):  # Gemini rejects an OBJECT with no properties
            decl["parameters"] = params
        decls.append(decl)
    return [{"functionDeclarations": decls}] if decls else []


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        cfg: dict[str, Any] = {"mode": "AUTO"}
    elif choice == "none":
        cfg = {"mode": "NONE"}
    elif choice == "required":
        cfg = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        cfg = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    else:
        return None
    return {"functionCallingConfig": cfg}


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}

    def num(field: str) -> Any:
        v = body.get(field)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if num(src) is not None:
            cfg[dst] = num(src)
    limit = num("max_tokens") or num("max_completion_tokens")
    if limit:
        cfg["maxOutputTokens"] = int(limit)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s]
    if stops:
        cfg["stopSequences"] = stops
    if num("n") is not None:
        cfg["candidateCount"] = int(num("n"))
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        cfg["responseMimeType"] = "application/json"
        spec = rf.get("json_schema") if isinstance(rf.get("json_schema"), dict) else {}
        if rf["type"] == "json_schema" and isinstance(spec.get("schema"), dict):
            cfg["responseSchema"] = gemini_schema(spec["schema"])
    return cfg


# ---- response --------------------------------------------------------------------

def finish_reason(reason: Any, has_calls: bool) -> str:
    reason = str(reason or "")
    if reason == "MAX_TOKENS":
        return "length"
    if reason in FILTER_REASONS:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def gemini_usage(meta: Any) -> dict[str, Any]:
    m = meta if isinstance(meta, dict) else {}
    prompt = int(m.get("promptTokenCount") or 0) + int(m.get("toolUsePromptTokenCount") or 0)
    thoughts = int(m.get("thoughtsTokenCount") or 0)
    completion = int(m.get("candidatesTokenCount") or 0) + thoughts
    return usage_block(prompt, completion, total=m.get("totalTokenCount") or None,
                       cached=int(m.get("cachedContentTokenCount") or 0), reasoning=thoughts)


def call_id(call: Mapping[str, Any], response_id: str, n: int) -> str:
    """Gemini's own call id when it gives a usable one, else a stable one derived from the response."""
    given = call.get("id")
    if isinstance(given, str) and _CALL_ID.fullmatch(given):
        return given
    seed = json.dumps([response_id, n, call.get("name"), call.get("args")], sort_keys=True, ensure_ascii=False)
    return "call_" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def _tool_call(part: Mapping[str, Any], response_id: str, n: int) -> dict[str, Any]:
    fc = part["functionCall"] if isinstance(part.get("functionCall"), dict) else {}
    call: dict[str, Any] = {"id": call_id(fc, response_id, n), "type": "function",
                            "function": {"name": str(fc.get("name") or ""),
                                         "arguments": json.dumps(fc.get("args") or {}, ensure_ascii=False)}}
    if isinstance(part.get("thoughtSignature"), str):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _blocked(doc: Mapping[str, Any], status: int | None) -> ProviderError | None:
    feedback = doc.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if reason:
        return ProviderError("content_filter", f"gemini: prompt blocked ({reason})", status)
    return None


def classify(status: int | None, gstatus: Any, text: str, details: Any = None) -> str:
    gstatus = str(gstatus or "")
    low = text.lower()
    reasons = {d.get("reason") for d in details if isinstance(d, dict)} if isinstance(details, list) else set()
    if "API_KEY_INVALID" in reasons or "api key not valid" in low or "api key expired" in low:
        return "auth_error"
    if gstatus == "INVALID_ARGUMENT":
        return status_kind(400, text)
    if gstatus == "FAILED_PRECONDITION":
        return "payment_required" if "billing" in low else "bad_request"
    if gstatus in _STATUS_KINDS:
        return _STATUS_KINDS[gstatus]
    if status is None:
        return "server_error" if gstatus else "unknown"
    return status_kind(status, text)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    if isinstance(doc, list) and doc:
        doc = doc[0]
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {}


def _retry_delay(err: Mapping[str, Any]) -> float | None:
    for d in err.get("details") or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            m = re.fullmatch(r"\s*([0-9.]+)s\s*", str(d.get("retryDelay") or ""))
            if m:
                return float(m.group(1))
    return None


def _headers(target: Target, stream: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["x-goog-api-key"] = target.api_key
    headers.update(target.headers)
    return headers


class GeminiWire:
    name = "gemini"

    def build(self, body: Mapping[str, Any], target: Target, stream: bool) -> HttpRequest:
        system, contents = convert_messages(body.get("messages"))
        out: dict[str, Any] = {"contents": contents}
        if system:
            out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        refuse_unsupported(body, "gemini")
        offered, choice = function_tools(body, "gemini")
        tools = _tools(offered)
        if tools:
            out["tools"] = tools
            cfg = _tool_config(choice)
            if cfg:
                out["toolConfig"] = cfg
        gen = _generation_config(body)
        if gen:
            out["generationConfig"] = gen
        model = target.model_id.removeprefix("models/")
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return HttpRequest("POST", f"{target.base_url}/models/{model}:{action}",
                           target_headers(target, stream, _headers), dump_body(out))

    def parse(self, status: int, headers: Mapping[str, str], body: bytes, target: Target) -> dict[str, Any]:
        if not 200 <= status < 300:
            raise self.error(status, headers, body, target=target)
        doc = json_body(body, "gemini")
        if isinstance(doc, list) and len(doc) == 1:
            doc = doc[0]
        if not isinstance(doc, dict):
            raise ProviderError("bad_response", "gemini: body is not an object", status)
        if isinstance(doc.get("error"), dict):
            code = doc["error"].get("code")
            raise self.error(code if isinstance(code, int) and 400 <= code < 600 else 500, headers, body,
                             target=target)
        candidates = doc.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise _blocked(doc, status) or ProviderError("bad_response", "gemini: response has no candidates", status)
        response_id = str(doc.get("responseId") or "")
        choices, n = [], 0
        for i, cand in enumerate(candidates):
            if not isinstance(cand, dict):
                raise ProviderError("bad_response", "gemini: candidate is not an object", status)
            content = cand.get("content") if isinstance(cand.get("content"), dict) else {}
            parts = content.get("parts") if isinstance(content.get("parts"), list) else []
            text, calls = [], []
            for part in parts:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    text.append(part["text"])
                elif "functionCall" in part:
                    calls.append(_tool_call(part, response_id, n))
                    n += 1
            reason = cand.get("finishReason")
            if not text and not calls and reason not in FILTER_REASONS and reason != "MAX_TOKENS":
                raise ProviderError("bad_response", f"gemini: candidate without content (finishReason={reason})",
                                    status)
            joined = "".join(text)
            message: dict[str, Any] = {"role": "assistant", "content": joined if joined or not calls else None}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": int(cand.get("index", i) or 0), "message": message,
                            "finish_reason": finish_reason(reason, bool(calls))})
        return {
            "id": response_id or "gemini",
            "object": "chat.completion",
            "created": 0,
            "model": str(doc.get("modelVersion") or target.model_id),
            "choices": choices,
            "usage": gemini_usage(doc.get("usageMetadata")),
        }

    def stream(self, target: Target) -> "GeminiStream":
        return GeminiStream(target)

    def error(self, status: int, headers: Mapping[str, str], body: bytes, *,
              target: Target | None = None) -> ProviderError:
        text = error_text(body)
        err = _error_object(body)
        kind = classify(status, err.get("status"), text, err.get("details"))
        label = f" {err['status']}" if err.get("status") else ""
        wait = retry_after(headers)
        return ProviderError(kind, scrub(f"HTTP {status}{label}: {text}", target.api_key if target else None),
                             status, retry_after_s=wait if wait is not None else _retry_delay(err))


class GeminiStream(SSEDecoder):
    """Each SSE event is a whole GenerateContentResponse; a ``finishReason`` ends the answer."""

    wire = "gemini"
    end_marker = "a finishReason"

    def __init__(self, target: Target) -> None:
        super().__init__()
        self._key = target.api_key
        self._id = ""
        self._model = target.model_id
        self._usage: Any = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate index -> tool calls so far
        self._n = 0  # tool calls across candidates, for ids as parse() makes them

    def _tail(self) -> list[dict[str, Any]]:
        return [chat_chunk(self._id or "gemini", self._model, None, usage=gemini_usage(self._usage))]

    def _handle(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            try:
                doc = event_json(ev.data)
            except ValueError:
                raise ProviderError("bad_response", scrub(f"gemini: undecodable event: {ev.data[:120]}",
                                                          self._key)) from None
            for item in doc if isinstance(doc, list) else [doc]:
                out.extend(self._response(item))
        return out

    def _response(self, doc: Any) -> list[dict[str, Any]]:
        if not isinstance(doc, dict):
            raise ProviderError("bad_response", "gemini: stream event is not an object")
        if isinstance(doc.get("error"), dict):
            err = doc["error"]
            text = str(err.get("message") or "stream error")
            raise ProviderError(classify(err.get("code") if isinstance(err.get("code"), int) else None,
                                         err.get("status"), text, err.get("details")),
                                scrub(f"stream {err.get('status') or 'error'}: {text}", self._key),
                                err.get("code") if isinstance(err.get("code"), int) else None)
        self._id = str(doc.get("responseId") or self._id)
        self._model = str(doc.get("modelVersion") or self._model)
        if doc.get("usageMetadata"):
            self._usage = doc["usageMetadata"]
        candidates = doc.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            blocked = _blocked(doc, None)
            if blocked:
                raise blocked
            return []
        out: list[dict[str, Any]] = []
        cid = self._id or "gemini"
        for i, cand in enumerate(candidates):
            if not isinstance(cand, dict):
                continue
            idx = int(cand.get("index", i) or 0)
            if idx not in self._started:
                self._started.add(idx)
                out.append(chat_chunk(cid, self._model, {"role": "assistant", "content": ""}, index=idx))
            content = cand.get("content") if isinstance(cand.get("content"), dict) else {}
            for part in content.get("parts") if isinstance(content.get("parts"), list) else []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str) and part["text"]:
                    out.append(chat_chunk(cid, self._model, {"content": part["text"]}, index=idx))
                elif "functionCall" in part:
                    k = self._calls.get(idx, 0)
                    self._calls[idx] = k + 1
                    call = _tool_call(part, self._id, self._n)
                    self._n += 1
                    out.append(chat_chunk(cid, self._model, {"tool_calls": [{"index": k, **call}]}, index=idx))
            if cand.get("finishReason"):
                self._done = True
                out.append(chat_chunk(cid, self._model, {},
                                      finish_reason(cand["finishReason"], bool(self._calls.get(idx))), index=idx))
        return out


WIRE = GeminiWire()
