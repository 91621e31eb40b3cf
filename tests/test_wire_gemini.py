"""The Gemini wire: contents/parts translation, schema reduction, usage, SSE, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from unhardcoded.providers import ProviderError, Target
from unhardcoded.providers.gemini import SKIP_SIGNATURE, WIRE, gemini_schema
from unhardcoded.testing.upstreams import Fail, Reply, ReplyToolCall, StreamCut, Upstream, Usage, exchange

KEY = "AIzaSyA-abcdefghijklmnopqrstuvwxyz0123"
T = Target("gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta", "gemini-3-flash-preview",
           api_key=KEY)
PNG = "iVBORw0KGgo="


def build(body, stream=False, target=T):
    req = WIRE.build(body, target, stream)
    return req, req.json()


# ---- build -----------------------------------------------------------------------------

def test_urls_and_headers():
    req, _ = build({"messages": [{"role": "user", "content": "hi"}]})
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-3-flash-preview:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and KEY not in req.url
    req, _ = build({"messages": [{"role": "user", "content": "hi"}]}, stream=True,
                   target=Target("g", "gemini", "http://h/v1beta", "models/gemini-2.5-flash", api_key=None))
    assert req.url == "http://h/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert "x-goog-api-key" not in req.headers


def test_contents_roles_system_and_merging():
    _, out = build({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
    ], "policy_ir": {}})
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in French."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                               {"role": "model", "parts": [{"text": "c"}]},
                               {"role": "user", "parts": [{"text": "d"}]}]
    assert set(out) == {"contents", "systemInstruction"}


def test_images():
    _, out = build({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.webp"}},
    ]}]})
    assert out["contents"][0]["parts"] == [{"inlineData": {"mimeType": "image/png", "data": PNG}},
                                           {"fileData": {"mimeType": "image/webp",
                                                         "fileUri": "https://example.com/x.webp"}}]


def test_tool_calls_results_names_and_signatures():
    _, out = build({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is cold.", "tool_calls": [
            {"id": "g1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
             "extra_content": {"google": {"thought_signature": "c2lnMQ=="}}}]},
        {"role": "tool", "tool_call_id": "g1", "content": "[1, 2]"},
    ]})
    model1, user1, model2, user2 = out["contents"][1:]
    assert model1["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SKIP_SIGNATURE},
        {"functionCall": {"name": "get_time", "args": {}}}]
    assert user1 == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
        {"functionResponse": {"name": "get_weather", "response": {"temp": -3}}}]}
    assert model2["parts"][1] == {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}},
                                  "thoughtSignature": "c2lnMQ=="}
    assert user2["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"result": [1, 2]}}}]


def test_function_responses_open_the_merged_user_turn():
    _, out = build({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "note"},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]})
    assert out["contents"][2]["parts"] == [{"functionResponse": {"name": "f", "response": {"result": "done"}}},
                                           {"text": "note"}]


def test_schema_reduction():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": False,
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "title": "Unit"}},
        "properties": {
            "city": {"type": "string", "format": "uri", "default": "x", "examples": ["Oslo"]},
            "unit": {"$ref": "#/$defs/Unit"},
            "days": {"type": ["integer", "null"], "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string", "additionalProperties": False}},
            "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
                     "description": "When"},
            "mode": {"const": "fast"},
        },
        "required": ["city", "ghost"],
    }
    out = gemini_schema(schema)
    assert out == {"type": "object", "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["c", "f"], "title": "Unit"},
        "days": {"type": "integer", "nullable": True, "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "when": {"type": "string", "format": "date-time", "nullable": True, "description": "When"},
        "mode": {"type": "string", "enum": ["fast"]},
    }, "required": ["city"]}


def test_tools_tool_config_and_generation_config():
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": False}}},
             {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}]
    _, out = build({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "required",
                    "temperature": 0.5, "top_p": 0.8, "max_completion_tokens": 99, "stop": "END", "seed": 4,
                    "response_format": {"type": "json_object"}})
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "w", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}}},
        {"name": "ping"}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert out["generationConfig"] == {"temperature": 0.5, "topP": 0.8, "seed": 4, "maxOutputTokens": 99,
                                       "stopSequences": ["END"], "responseMimeType": "application/json"}
    named = {"type": "function", "function": {"name": "ping"}}
    for choice, cfg in (("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}),
                        (named, {"mode": "ANY", "allowedFunctionNames": ["ping"]})):
        assert build({"messages": [{"role": "user", "content": "x"}], "tools": tools,
                      "tool_choice": choice})[1]["toolConfig"] == {"functionCallingConfig": cfg}
    _, out = build({"messages": [{"role": "user", "content": "x"}], "n": 2, "max_tokens": 5,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
                        "type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}}}})
    assert out["generationConfig"] == {"maxOutputTokens": 5, "candidateCount": 2,
                                       "responseMimeType": "application/json",
                                       "responseSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    assert "candidateCount" not in build({"messages": [{"role": "user", "content": "x"}],
                                          "temperature": 1})[1]["generationConfig"]


# ---- parse -----------------------------------------------------------------------------

def response(parts, finish="STOP", usage=None, **extra):
    cand = {"finishReason": finish, "index": 0}
    if parts is not None:
        cand["content"] = {"role": "model", "parts": parts}
    return json.dumps({"candidates": [cand], "usageMetadata": usage or {"promptTokenCount": 5,
                                                                        "candidatesTokenCount": 2,
                                                                        "totalTokenCount": 7},
                       "modelVersion": "gemini-3-flash-preview", "responseId": "resp-1", **extra}).encode()


def test_parse_text_thoughts_and_calls():
    body = response([{"text": "thinking...", "thought": True}, {"text": "Sure. "},
                     {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "c2ln"},
                     {"functionCall": {"name": "g", "args": {}}}])
    out = WIRE.parse(200, {}, body, T)
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Sure. " and out["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["function"] for c in msg["tool_calls"]] == [{"name": "f", "arguments": '{"x": 1}'},
                                                           {"name": "g", "arguments": "{}"}]
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    ids = [c["id"] for c in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) <= 40 for i in ids)
    assert ids == [c["id"] for c in WIRE.parse(200, {}, body, T)["choices"][0]["message"]["tool_calls"]]
    other = response([{"functionCall": {"name": "f", "args": {"x": 1}}}], responseId="resp-2")
    assert WIRE.parse(200, {}, other, T)["choices"][0]["message"]["tool_calls"][0]["id"] != ids[0]
    given_id = response([{"functionCall": {"name": "f", "args": {}, "id": "abc123"}}])
    assert WIRE.parse(200, {}, given_id, T)["choices"][0]["message"]["tool_calls"][0]["id"] == "abc123"


@pytest.mark.parametrize("reason,finish", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"),
])
def test_finish_reasons(reason, finish):
    assert WIRE.parse(200, {}, response([{"text": "x"}], reason), T)["choices"][0]["finish_reason"] == finish


def test_filtered_or_truncated_candidate_without_content_is_not_an_error():
    out = WIRE.parse(200, {}, response(None, "SAFETY"), T)
    assert out["choices"][0]["finish_reason"] == "content_filter" and out["choices"][0]["message"]["content"] == ""
    out = WIRE.parse(200, {}, response(None, "MAX_TOKENS"), T)
    assert out["choices"][0]["finish_reason"] == "length"


def test_allowed_tools_offer_only_those_and_a_custom_tool_is_refused():
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b", "c")]
    base = {"messages": [{"role": "user", "content": "x"}], "tools": tools}
    for mode, cfg in (("required", {"mode": "ANY"}), ("auto", {"mode": "AUTO"})):
        _, out = build({**base, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
            "mode": mode, "tools": [{"type": "function", "function": {"name": n}} for n in ("c", "a")]}}})
        assert [d["name"] for d in out["tools"][0]["functionDeclarations"]] == ["a", "c"]
        assert out["toolConfig"] == {"functionCallingConfig": cfg}
    with pytest.raises(ProviderError) as e:
        build({**base, "tools": [{"type": "custom", "custom": {"name": "grammar"}}]})
    assert e.value.kind == "bad_request" and "'grammar'" in e.value.message


def test_usage_with_thoughts_cache_and_tool_prompt():
    usage = {"promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 50,
             "thoughtsTokenCount": 200, "toolUsePromptTokenCount": 10, "totalTokenCount": 1260}
    out = WIRE.parse(200, {}, response([{"text": "x"}], usage=usage), T)["usage"]
    assert out == {"prompt_tokens": 1010, "completion_tokens": 250, "total_tokens": 1260,
                   "prompt_tokens_details": {"cached_tokens": 600},
                   "completion_tokens_details": {"reasoning_tokens": 200}}
    assert out["prompt_tokens"] + out["completion_tokens"] == out["total_tokens"]


def test_blocked_prompt_is_a_content_filter_error():
    body = json.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                       "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}}).encode()
    with pytest.raises(ProviderError) as e:
        WIRE.parse(200, {}, body, T)
    assert e.value.kind == "content_filter" and "PROHIBITED_CONTENT" in e.value.message


@pytest.mark.parametrize("body", [b"oops", b"{}", json.dumps({"candidates": []}).encode(), response([], "STOP"),
                                  response(None, "STOP"), response(None, "MALFORMED_FUNCTION_CALL")])
def test_malformed_is_bad_response(body):
    with pytest.raises(ProviderError) as e:
        WIRE.parse(200, {}, body, T)
    assert e.value.kind == "bad_response"


# ---- errors ----------------------------------------------------------------------------

def gerr(code, status, message, details=None):
    err = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return json.dumps({"error": err}).encode()


@pytest.mark.parametrize("status,body,kind", [
    (429, gerr(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), "rate_limit"),
    (403, gerr(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"), "auth_error"),
    (401, gerr(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), "auth_error"),
    (400, gerr(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
               [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]), "auth_error"),
    (400, gerr(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"foo\""), "bad_request"),
    (400, gerr(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens "
                                        "allowed (1048576)."), "context_overflow"),
    (400, gerr(400, "FAILED_PRECONDITION", "User location is not supported; please enable billing."),
     "payment_required"),
    (404, gerr(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"), "model_unavailable"),
    (503, gerr(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), "server_error"),
    (500, gerr(500, "INTERNAL", "An internal error has occurred."), "server_error"),
    (504, gerr(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), "timeout"),
    (502, b"<html>bad gateway</html>", "server_error"),
])
def test_error_classification(status, body, kind):
    assert WIRE.error(status, {}, body).kind == kind


def test_retry_after_from_header_or_retry_info():
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}]
    assert WIRE.error(429, {}, gerr(429, "RESOURCE_EXHAUSTED", "quota", details)).retry_after_s == 27.0
    assert WIRE.error(429, {"retry-after": "4"}, gerr(429, "RESOURCE_EXHAUSTED", "quota", details)).retry_after_s == 4
    assert WIRE.error(429, {}, gerr(429, "RESOURCE_EXHAUSTED", "quota")).retry_after_s is None


def test_key_never_in_error_message():
    body = gerr(400, "INVALID_ARGUMENT", f"API key not valid: {KEY} (url ...?key={KEY})")
    for e in (WIRE.error(400, {}, body), WIRE.error(400, {}, body, target=T)):
        assert KEY not in e.message and KEY not in str(e)


# ---- stream decoder --------------------------------------------------------------------

def sse(doc):
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\r\n\r\n"


def piece(parts=None, finish=None, usage=None):
    cand = {"index": 0}
    if parts is not None:
        cand["content"] = {"role": "model", "parts": parts}
    if finish:
        cand["finishReason"] = finish
    doc = {"candidates": [cand], "modelVersion": "gemini-3-flash-preview", "responseId": "resp-1"}
    if usage:
        doc["usageMetadata"] = usage
    return doc


STREAM = b"".join(sse(d) for d in [
    piece([{"text": "The weather ", "thought": True}], usage={"promptTokenCount": 8, "totalTokenCount": 8}),
    piece([{"text": "Bonjour "}], usage={"promptTokenCount": 8, "totalTokenCount": 8}),
    piece([{"text": "\u00e0 tous \u2600"}]),
    piece([{"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "c2ln"},
           {"functionCall": {"name": "g", "args": {}}}]),
    piece([{"text": ""}], "STOP", {"promptTokenCount": 8, "candidatesTokenCount": 6, "thoughtsTokenCount": 3,
                                   "totalTokenCount": 17}),
])


def decode(data, cuts=None):
    dec = WIRE.stream(T)
    out, prev = [], 0
    for cut in sorted(cuts or []) + [len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    return out + dec.close()


def test_stream_translation():
    chunks = decode(STREAM)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Bonjour \u00e0 tous \u2600"
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [(tc["index"], tc["function"]["name"]) for tc in calls] == [(0, "f"), (1, "g")]
    assert calls[0]["extra_content"]["google"]["thought_signature"] == "c2ln"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    # the same ids as a non-streamed answer with the same content would get
    whole = response([{"functionCall": {"name": "f", "args": {"x": 1}}}, {"functionCall": {"name": "g", "args": {}}}])
    assert [tc["id"] for tc in calls] == [c["id"] for c in WIRE.parse(200, {}, whole, T)["choices"][0]["message"][
        "tool_calls"]]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_stream_any_split_gives_the_same_chunks(cuts):
    assert decode(STREAM, cuts) == decode(STREAM)


def test_stream_byte_by_byte():
    assert decode(STREAM, list(range(len(STREAM)))) == decode(STREAM)


def test_stream_without_finish_reason_is_interrupted():
    dec = WIRE.stream(T)
    assert dec.feed(STREAM[: STREAM.rindex(b"data: ")])
    with pytest.raises(ProviderError) as e:
        dec.close()
    assert e.value.kind == "stream_interrupted"


def test_stream_errors_and_blocks():
    with pytest.raises(ProviderError) as e:
        WIRE.stream(T).feed(sse(piece([{"text": "a"}])) + sse({"error": {"code": 503, "status": "UNAVAILABLE",
                                                                          "message": "overloaded"}}))
    assert e.value.kind == "server_error"
    with pytest.raises(ProviderError) as e:
        WIRE.stream(T).feed(sse({"promptFeedback": {"blockReason": "SAFETY"}}))
    assert e.value.kind == "content_filter"


# ---- against the strict mock server ----------------------------------------------------

@pytest.fixture
async def upstream():
    up = Upstream("gemini", key=KEY)
    await up.start()
    yield up
    await up.stop()


def tgt(up, key=KEY, model="gemini-3-flash-preview"):
    return Target("gemini", "gemini", up.base_url, model, api_key=key)


async def call(body, t, stream=False):
    ex = await exchange(WIRE.build(body, t, stream))
    if not stream:
        return WIRE.parse(ex.status, ex.headers, ex.body, t)
    if ex.status != 200:
        raise WIRE.error(ex.status, ex.headers, ex.body)
    dec = WIRE.stream(t)
    return [c for data in ex.chunks for c in dec.feed(data)] + dec.close()


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}}]


async def test_roundtrip_with_tools_signatures_and_usage(upstream):
    t = tgt(upstream)
    upstream.script("gemini-3-flash-preview", ReplyToolCall("get_weather", {"city": "Oslo"}),
                    Reply("Cold.", usage=Usage(300, 40, cached_tokens=100, reasoning_tokens=30)))
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
    out = await call({"messages": history, "tools": TOOLS, "tool_choice": "auto"}, t, stream=True)
    call_delta = next(tc for c in out if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", []))
    assert call_delta["function"]["name"] == "get_weather"
    history += [{"role": "assistant", "content": None, "tool_calls": [
                    {k: call_delta[k] for k in ("id", "type", "function", "extra_content")}]},
                {"role": "tool", "tool_call_id": call_delta["id"], "content": "-3C"}]
    out = await call({"messages": history, "tools": TOOLS}, t)
    assert out["choices"][0]["message"]["content"] == "Cold."
    assert out["usage"] == {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340,
                            "prompt_tokens_details": {"cached_tokens": 100},
                            "completion_tokens_details": {"reasoning_tokens": 30}}
    sent = upstream.requests[-1].body
    assert sent["contents"][2]["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                                   "response": {"result": "-3C"}}
    assert "additionalProperties" not in json.dumps(sent["tools"])


async def test_history_from_another_provider_is_accepted(upstream):
    t = tgt(upstream)
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "toolu_01XYZ", "type": "function", "function": {"name": "get_weather",
                                                                         "arguments": '{"city":"Rome"}'}}]},
               {"role": "tool", "tool_call_id": "toolu_01XYZ", "content": '{"temp": 20}'}]
    out = await call({"messages": history, "tools": TOOLS}, t)
    assert out["choices"][0]["message"]["content"].startswith("Echo:")


async def test_failures_interruptions_and_bad_keys(upstream):
    t = tgt(upstream)
    upstream.script("gemini-3-flash-preview", Fail(429, "quota", retry_after=9), StreamCut(after_chunks=2))
    body = {"messages": [{"role": "user", "content": "a long enough question to stream in pieces"}]}
    with pytest.raises(ProviderError) as e:
        await call(body, t)
    assert (e.value.kind, e.value.retry_after_s) == ("rate_limit", 9.0)
    with pytest.raises(ProviderError) as e:
        await call(body, t, stream=True)
    assert e.value.kind == "stream_interrupted"
    bad = "AIzaSyWRONG-0000000000000000000000000"
    with pytest.raises(ProviderError) as e:
        await call(body, tgt(upstream, key=bad))
    assert e.value.kind == "auth_error" and bad not in e.value.message
    with pytest.raises(ProviderError) as e:
        await call(body, tgt(upstream, key=None))
    assert e.value.kind == "auth_error"
    with pytest.raises(ProviderError) as e:
        await call(body, tgt(upstream, model="gemini-0"))
    assert e.value.kind == "model_unavailable"

