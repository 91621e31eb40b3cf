"""The OpenAI-compatible wire: pass-through build, normalising parse, SSE decoder, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from unhardcoded.providers import WIRES, ProviderError, Target
from unhardcoded.providers.base import SSEParser
from unhardcoded.providers.openai import WIRE
from unhardcoded.testing.upstreams import Fail, Raw, Reply, ReplyToolCall, StreamCut, Upstream, Usage, exchange

KEY = "sk-test-0123456789abcdef"
T = Target("openai", "openai", "https://api.openai.com/v1", "gpt-5.4-mini", api_key=KEY)


def built(body, target=T, stream=False):
    req = WIRE.build(body, target, stream)
    return req, req.json()


# ---- build -----------------------------------------------------------------------------

def test_registry_exposes_three_wires():
    assert set(WIRES) == {"openai", "anthropic", "gemini"}
    assert all(w.name == k for k, w in WIRES.items())


def test_build_replaces_model_and_strips_router_fields():
    body = {"model": "router-alias", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
            "policy_ir": {"x": 1}, "flow_ir": {}, "requirements": [], "session": "s1", "timeout_ms": 100,
            "first_token_timeout_ms": 50, "_filters": [1], "x_trace": "t", "seed": 7}
    req, out = built(body)
    assert req.method == "POST" and req.url == "https://api.openai.com/v1/chat/completions"
    assert out == {"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
                   "seed": 7}
    assert body["model"] == "router-alias" and "policy_ir" in body  # the caller's dict is untouched


def test_build_auth_header_and_extra_headers():
    req, _ = built({"messages": []})
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    local = Target("ollama", "openai", "http://localhost:11434/v1", "llama3", api_key=None,
                   headers={"X-Title": "demo"})
    req, _ = built({"messages": []}, local)
    assert "Authorization" not in req.headers and req.headers["X-Title"] == "demo"


def test_build_streaming_asks_for_usage_and_keeps_other_stream_options():
    _, out = built({"messages": [], "stream_options": {"foo": 1}}, stream=True)
    assert out["stream"] is True and out["stream_options"] == {"foo": 1, "include_usage": True}
    _, out = built({"messages": [], "stream": True, "stream_options": {"include_usage": False}}, stream=False)
    assert "stream" not in out and "stream_options" not in out


def test_build_strips_gemini_extra_content_except_for_google():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": "abc"}}}
    body = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": None, "tool_calls": [call]}]}
    _, out = built(body)
    assert out["messages"][1]["tool_calls"][0] == {"id": "c1", "type": "function",
                                                    "function": {"name": "f", "arguments": "{}"}}
    google = Target("g", "openai", "https://generativelanguage.googleapis.com/v1beta/openai", "gemini-3-flash-preview",
                    api_key="k")
    _, out = built(body, google)
    assert out["messages"][1]["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "abc"}}
    assert "extra_content" in body["messages"][1]["tool_calls"][0]


# ---- parse -----------------------------------------------------------------------------

def completion(**over):
    doc = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5.4-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_fills_usage_when_missing():
    out = WIRE.parse(200, {}, completion(), T)
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                            "prompt_tokens_details": {"cached_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 0}}
    assert out["choices"][0]["message"]["content"] == "hi"


def test_parse_keeps_cached_and_reasoning_tokens_and_extras():
    usage = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140, "cost": 0.01,
             "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 25}}
    out = WIRE.parse(200, {}, completion(usage=usage), T)["usage"]
    assert out["prompt_tokens_details"] == {"cached_tokens": 64, "audio_tokens": 0}
    assert out["completion_tokens_details"]["reasoning_tokens"] == 25
    assert out["total_tokens"] == 140 and out["cost"] == 0.01


def test_parse_deepseek_cache_hits_and_missing_total():
    out = WIRE.parse(200, {}, completion(usage={"prompt_tokens": 10, "completion_tokens": 5,
                                                "prompt_cache_hit_tokens": 8}), T)["usage"]
    assert out["prompt_tokens_details"]["cached_tokens"] == 8 and out["total_tokens"] == 15


@pytest.mark.parametrize("body", [
    b"<html>gateway</html>", b"[]", json.dumps({"choices": []}).encode(), json.dumps({"id": "x"}).encode(),
    json.dumps({"choices": [{"index": 0, "finish_reason": "stop"}]}).encode(),
])
def test_parse_malformed_2xx_is_bad_response(body):
    with pytest.raises(ProviderError) as e:
        WIRE.parse(200, {}, body, T)
    assert e.value.kind == "bad_response"


def test_parse_200_carrying_an_error_object_is_classified():
    body = json.dumps({"error": {"message": "Rate limit exceeded upstream", "code": 429}}).encode()
    with pytest.raises(ProviderError) as e:
        WIRE.parse(200, {}, body, T)
    assert e.value.kind == "rate_limit"


def test_parse_non_2xx_raises_classified():
    with pytest.raises(ProviderError) as e:
        WIRE.parse(503, {"retry-after": "3"}, b'{"error":{"message":"busy","type":"server_error"}}', T)
    assert (e.value.kind, e.value.status, e.value.retry_after_s) == ("server_error", 503, 3.0)


# ---- errors ----------------------------------------------------------------------------

def err(message, type_=None, code=None):
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


@pytest.mark.parametrize("status,body,kind", [
    (401, err("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), "auth_error"),
    (403, err("Project does not have access"), "auth_error"),
    (429, err("Rate limit reached", "requests", "rate_limit_exceeded"), "rate_limit"),
    (429, err("You exceeded your current quota", "insufficient_quota", "insufficient_quota"), "payment_required"),
    (402, err("Insufficient credits"), "payment_required"),
    (404, err("The model `x` does not exist", "invalid_request_error", "model_not_found"), "model_unavailable"),
    (400, err("This model's maximum context length is 128000 tokens", "invalid_request_error",
              "context_length_exceeded"), "context_overflow"),
    (400, err("Please reduce the length of the messages."), "context_overflow"),
    (400, err("Invalid value for 'temperature'", "invalid_request_error"), "bad_request"),
    (400, err("Your request was rejected by the safety system", "invalid_request_error",
              "content_policy_violation"), "content_filter"),
    (500, err("The server had an error", "server_error"), "server_error"),
    (502, b"<html>Bad gateway</html>", "server_error"),
    (504, b"", "timeout"),
    (408, b"", "timeout"),
])
def test_error_classification(status, body, kind):
    e = WIRE.error(status, {}, body)
    assert isinstance(e, ProviderError) and e.kind == kind and e.status == status


def test_error_carries_retry_after():
    assert WIRE.error(429, {"retry-after": "20"}, err("slow down")).retry_after_s == 20.0
    assert WIRE.error(429, {}, err("slow down")).retry_after_s is None


def test_error_never_contains_the_key():
    body = err(f"Incorrect API key provided: {KEY}. Header was 'Bearer {KEY}'", code="invalid_api_key")
    for e in (WIRE.error(401, {}, body), WIRE.error(401, {}, body, target=T)):
        assert KEY not in e.message and KEY not in str(e) and "[redacted]" in e.message
    odd = Target("x", "openai", "http://h/v1", "m", api_key="plainsecretvalue")
    e = WIRE.error(401, {}, err("bad key plainsecretvalue"), target=odd)
    assert "plainsecretvalue" not in e.message


# ---- stream decoder --------------------------------------------------------------------

def chunk(delta, finish=None, **extra):
    doc = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5.4-mini",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


STREAM = b"".join([
    b": keep-alive comment\n\n",
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo \u00e9t\u00e9 \u2713"}),  # multi-byte UTF-8, split anywhere below
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "f", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
    chunk({}, "tool_calls"),
    b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": None,
                            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).encode()
    + b"\n\n",
    b"data: [DONE]\n\n",
])


def decode(data: bytes, splits=None):
    dec = WIRE.stream(T)
    out = []
    if splits is None:
        out += dec.feed(data)
    else:
        prev = 0
        for cut in sorted(splits) + [len(data)]:
            out += dec.feed(data[prev:cut])
            prev = cut
    return out + dec.close()


def test_stream_decodes_text_tools_and_usage():
    chunks = decode(STREAM)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello \u00e9t\u00e9 \u2713"
    args = "".join(tc["function"].get("arguments", "") for d in deltas for tc in d.get("tool_calls", []))
    assert args == '{"a": 1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []  # vLLM's null choices normalised
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_stream_byte_by_byte_equals_whole():
    dec = WIRE.stream(T)
    out = []
    for i in range(len(STREAM)):
        out += dec.feed(STREAM[i:i + 1])
    assert out + dec.close() == decode(STREAM)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=25))
def test_stream_any_split_gives_the_same_chunks(cuts):
    assert decode(STREAM, cuts) == decode(STREAM)


def test_stream_crlf_and_multiline_data():
    doc = json.dumps({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}, indent=1)
    multi = "".join(f"data: {line}\r\n" for line in doc.splitlines()).encode() + b"\r\n"
    out = decode(multi + b"data: [DONE]\r\n\r\n")
    assert out == [json.loads(doc)]


def test_stream_without_done_is_interrupted():
    dec = WIRE.stream(T)
    assert len(dec.feed(STREAM[: STREAM.index(b"data: [DONE]")])) == 8
    with pytest.raises(ProviderError) as e:
        dec.close()
    assert e.value.kind == "stream_interrupted"


def test_stream_cut_inside_an_event_is_interrupted_not_garbage():
    dec = WIRE.stream(T)
    dec.feed(chunk({"content": "a"}) + b'data: {"choices": [{"ind')
    with pytest.raises(ProviderError) as e:
        dec.close()
    assert e.value.kind in ("stream_interrupted", "bad_response")


@pytest.mark.parametrize("error,kind", [
    ({"message": "Rate limit reached", "code": 429}, "rate_limit"),
    ({"message": "The server had an error", "type": "server_error"}, "server_error"),
    ({"message": "maximum context length exceeded", "code": "context_length_exceeded"}, "context_overflow"),
])
def test_stream_error_object_raises_with_kind(error, kind):
    dec = WIRE.stream(T)
    with pytest.raises(ProviderError) as e:
        dec.feed(chunk({"content": "a"}) + b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    assert e.value.kind == kind


def test_stream_ignores_events_after_done_and_rejects_garbage():
    assert decode(b"data: [DONE]\n\n" + chunk({"content": "late"})) == []
    with pytest.raises(ProviderError) as e:
        WIRE.stream(T).feed(b"data: {not json\n\n")
    assert e.value.kind == "bad_response"


def test_sse_parser_framing_rules():
    p = SSEParser()
    evs = p.feed(b"event: a\r\ndata: 1\r\ndata:2\r\n\r\n:comment\n\ndata: x\r")
    assert [(e.event, e.data) for e in evs] == [("a", "1\n2")]
    evs = p.feed(b"\ndata: y\n\n")
    assert [(e.event, e.data) for e in evs] == [("message", "x\ny")]
    assert [e.data for e in p.feed(b"data: tail")] == [] and [e.data for e in p.close()] == ["tail"]
    p = SSEParser()
    assert p.feed(b"\xef") == [] and p.feed(b"\xbb") == []
    evs = p.feed(b"\xbfevent: ping\n\ndata: z\n\n")  # BOM dropped; an event without data is not dispatched
    assert [(e.event, e.data) for e in evs] == [("message", "z")]


def test_build_without_messages_does_not_invent_them():
    assert "messages" not in built({"model": "x"})[1]


# ---- against the strict mock server ----------------------------------------------------

@pytest.fixture
async def upstream():
    up = Upstream("openai", key=KEY)
    await up.start()
    yield up
    await up.stop()


def target_for(up, key=KEY, model="gpt-5.4-mini"):
    return Target("openai", "openai", up.base_url, model, api_key=key)


BODY = {"model": "alias", "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "ping"}],
        "policy_ir": {"p": 1}, "x_debug": True, "timeout_ms": 500}


async def test_roundtrip_non_stream(upstream):
    t = target_for(upstream)
    upstream.script("gpt-5.4-mini", Reply("pong", usage=Usage(11, 3, cached_tokens=5, reasoning_tokens=2)))
    ex = await exchange(WIRE.build(BODY, t, False))
    out = WIRE.parse(ex.status, ex.headers, ex.body, t)
    assert out["choices"][0]["message"]["content"] == "pong"
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2
    sent = upstream.requests[-1]
    assert sent.body["model"] == "gpt-5.4-mini" and "policy_ir" not in sent.body
    assert sent.headers["authorization"] == "Bearer [redacted]"


async def test_roundtrip_stream_and_tool_loop(upstream):
    t = target_for(upstream)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {
        "q": {"type": "string"}}}}}]
    upstream.script("gpt-5.4-mini", ReplyToolCall("lookup", {"q": "x"}), Reply("found it"))
    ex = await exchange(WIRE.build({**BODY, "tools": tools}, t, True))
    dec = WIRE.stream(t)
    chunks = [c for data in ex.chunks for c in dec.feed(data)] + dec.close()
    first = next(d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", []))
    assert first["function"]["name"] == "lookup"
    args = "".join(d["function"].get("arguments", "") for c in chunks if c["choices"]
                   for d in c["choices"][0]["delta"].get("tool_calls", []))
    assert json.loads(args) == {"q": "x"}
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    follow = {**BODY, "tools": tools, "messages": BODY["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": first["id"], "type": "function",
                                                               "function": {"name": "lookup", "arguments": args}}]},
        {"role": "tool", "tool_call_id": first["id"], "content": "42"}]}
    ex = await exchange(WIRE.build(follow, t, False))
    assert WIRE.parse(ex.status, ex.headers, ex.body, t)["choices"][0]["message"]["content"] == "found it"


async def test_wrong_key_is_auth_error_without_the_key(upstream):
    bad = "sk-wrong-key-9999999999"
    t = target_for(upstream, key=bad)
    ex = await exchange(WIRE.build(BODY, t, False))
    with pytest.raises(ProviderError) as e:
        WIRE.parse(ex.status, ex.headers, ex.body, t)
    assert e.value.kind == "auth_error" and bad not in e.value.message


async def test_failures_and_cuts(upstream):
    t = target_for(upstream)
    upstream.script("gpt-5.4-mini", Fail(429, "slow down", retry_after=7), Raw(200, b"not json"),
                    StreamCut(after_chunks=3))
    ex = await exchange(WIRE.build(BODY, t, False))
    with pytest.raises(ProviderError) as e:
        WIRE.parse(ex.status, ex.headers, ex.body, t)
    assert (e.value.kind, e.value.retry_after_s) == ("rate_limit", 7.0)
    ex = await exchange(WIRE.build(BODY, t, False))
    with pytest.raises(ProviderError) as e:
        WIRE.parse(ex.status, ex.headers, ex.body, t)
    assert e.value.kind == "bad_response"
    ex = await exchange(WIRE.build(BODY, t, True))
    dec = WIRE.stream(t)
    got = [c for data in ex.chunks for c in dec.feed(data)]
    assert len(got) == 3 and ex.error is not None
    with pytest.raises(ProviderError) as e:
        dec.close()
    assert e.value.kind == "stream_interrupted"


async def test_unknown_model_is_model_unavailable(upstream):
    t = target_for(upstream, model="gpt-nonexistent")
    ex = await exchange(WIRE.build(BODY, t, False))
    assert WIRE.error(ex.status, ex.headers, ex.body).kind == "model_unavailable"


# ---- the SSE framing and event payloads, fast paths against their definitions ------------------

def _events_by_definition(stream: bytes) -> list[tuple[str, str]]:
    """WHATWG framing over the whole stream at once: CRLF and CR are line ends like LF."""
    text = stream.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out, event, data = [], "", []
    for line in lines[:-1]:  # the last piece has no line end yet
        if line == "":
            if data:
                out.append((event or "message", "\n".join(data)))
            event, data = "", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    return out


_SSE_PIECES = st.sampled_from([b"data: ", b"data:", b"event: ", b"x", b"{\"a\":1}", b"\n", b"\n\n", b":c\n",
                               b"\r\n", b"\r", "\u00e9".encode(), b"[DONE]", b" "])


@given(st.lists(_SSE_PIECES, max_size=40), st.lists(st.integers(0, 400), max_size=8), st.booleans())
def test_sse_parser_equals_the_definition_however_split(pieces, cuts, lf_only) -> None:
    stream = b"".join(pieces)
    if lf_only:
        stream = stream.replace(b"\r", b"")
    stream += b"\n\n"  # ends with a complete event boundary
    bounds = sorted({min(c, len(stream)) for c in cuts})
    p = SSEParser()
    got = []
    prev = 0
    for b in [*bounds, len(stream)]:
        got += [(e.event, e.data) for e in p.feed(stream[prev:b])]
        prev = b
    if stream.endswith(b"\r"):  # a CR at the very end waits for a possible LF
        got += [(e.event, e.data) for e in p.close()]
    assert got == _events_by_definition(stream)


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                    max_leaves=20))
def test_event_json_reads_what_the_standard_library_reads(value) -> None:
    import json

    from unhardcoded.providers.base import event_json
    text = json.dumps(value)
    assert event_json(text) == json.loads(text)


def test_event_json_refuses_what_the_standard_library_refuses() -> None:
    from unhardcoded.providers.base import event_json
    assert event_json('{"n": 18446744073709551616}') == {"n": 2.0**64}  # past 64 bits: a double, as json_body
    assert event_json('[NaN]')[0] != event_json('[NaN]')[0]  # the standard library's NaN, as before
    assert event_json('[1e400, "\\ud800"]') == [float("inf"), "\ud800"]
    for bad in ("{", "[1,]", "x", "[" * 100_000):
        with pytest.raises(ValueError):
            event_json(bad)
