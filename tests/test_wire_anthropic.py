"""The Anthropic Messages wire: translation both ways, id rewriting, SSE events, errors."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, strategies as st

from unhardcoded.providers import ProviderError, Target
from unhardcoded.providers.anthropic import ID_PREFIX, WIRE, caller_tool_id, wire_tool_id
from unhardcoded.testing.upstreams import Fail, Reply, ReplyToolCall, StreamCut, Upstream, Usage, exchange

KEY = "sk-ant-api03-abcdefghijklmnop"
T = Target("anthropic", "anthropic", "https://api.anthropic.com/v1", "claude-haiku-4-5", api_key=KEY)
PNG = "iVBORw0KGgo="


def build(body, stream=False, target=T):
    req = WIRE.build(body, target, stream)
    return req, req.json()


# ---- build -----------------------------------------------------------------------------

def test_build_url_headers_and_defaults():
    req, out = build({"messages": [{"role": "user", "content": "hi"}], "policy_ir": {}, "seed": 3, "n": 1})
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    assert out == {"model": "claude-haiku-4-5", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    keyless = Target("a", "anthropic", "http://h/v1", "m", api_key=None, headers={"anthropic-beta": "x"})
    req, _ = build({"messages": []}, target=keyless)
    assert "x-api-key" not in req.headers and req.headers["anthropic-beta"] == "x"
    _, out = build({"messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert out["stream"] is True


def test_system_and_developer_messages_become_top_level_system():
    _, out = build({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": "b"},
    ]})
    assert out["system"] == "Be brief.\n\nUse French."
    assert [m["role"] for m in out["messages"]] == ["user"]
    assert [b["text"] for b in out["messages"][0]["content"]] == ["a", "b"]


def test_consecutive_turns_are_merged_into_alternation():
    _, out = build({"messages": [
        {"role": "user", "content": "1"}, {"role": "user", "content": "2"},
        {"role": "assistant", "content": "3"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": ""},  # empty: dropped, not sent as an empty turn
        {"role": "user", "content": "5"},
    ]})
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert [b["text"] for b in out["messages"][1]["content"]] == ["3", "4"]


@pytest.mark.parametrize("body,expected", [
    ({"max_tokens": 100}, 100), ({"max_completion_tokens": 77}, 77), ({}, 4096),
    ({"max_tokens": None, "max_completion_tokens": 5}, 5),
])
def test_max_tokens(body, expected):
    _, out = build({"messages": [{"role": "user", "content": "x"}], **body})
    assert out["max_tokens"] == expected


def test_sampling_and_stop_mapping():
    _, out = build({"messages": [{"role": "user", "content": "x"}], "temperature": 1.7, "top_p": 0.9,
                    "stop": "END", "user": "u-1"})
    assert out["temperature"] == 1.0 and out["top_p"] == 0.9 and out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    _, out = build({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"], "temperature": 0.2})
    assert out["stop_sequences"] == ["a", "b"] and out["temperature"] == 0.2


def test_images_data_urls_and_http_urls():
    _, out = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}]})
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


def test_tools_and_tool_choice():
    base = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    _, out = build(base)
    assert out["tools"] == [{"name": "get_weather", "description": "Weather by city", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    assert "tool_choice" not in out
    cases = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"},
             json.dumps({"type": "function", "function": {"name": "get_weather"}}): {"type": "tool",
                                                                                      "name": "get_weather"}}
    for choice, expected in cases.items():
        choice = json.loads(choice) if choice.startswith("{") else choice
        assert build({**base, "tool_choice": choice})[1]["tool_choice"] == expected
    _, out = build({**base, "tool_choice": "required", "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    _, out = build({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"})
    assert "tool_choice" not in out and "tools" not in out


def test_allowed_tools_offer_only_those_and_a_custom_tool_is_refused():
    two = [*TOOLS, {"type": "function", "function": {"name": "ping"}}]
    base = {"messages": [{"role": "user", "content": "x"}], "tools": two}
    for mode, expected in (("required", {"type": "any"}), ("auto", {"type": "auto"})):
        _, out = build({**base, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
            "mode": mode, "tools": [{"type": "function", "function": {"name": "ping"}}]}}})
        assert [t["name"] for t in out["tools"]] == ["ping"] and out["tool_choice"] == expected
    with pytest.raises(ProviderError) as e:
        build({**base, "tools": [*two, {"type": "custom", "custom": {"name": "sql"}}]})
    assert e.value.kind == "bad_request" and "'sql'" in e.value.message


def test_several_choices_are_refused_rather_than_answered_with_one():
    base = {"messages": [{"role": "user", "content": "x"}]}
    assert build({**base, "n": 1})[1]["messages"]
    with pytest.raises(ProviderError) as e:
        build({**base, "n": 3})
    assert e.value.kind == "bad_request" and "n=3" in e.value.message


def test_tool_calls_and_results_with_ids_from_another_provider():
    weird = "functions.get_weather:0"  # a Kimi-style id, outside Anthropic's charset
    _, out = build({"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_abc123", "type": "function", "function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Paris"}'}},
            {"id": weird, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "sunny"},
        {"role": "tool", "tool_call_id": weird, "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ], "tools": TOOLS})
    a, u = out["messages"][1], out["messages"][2]
    assert a["content"][0] == {"type": "text", "text": "Checking."}
    uses = [b for b in a["content"] if b["type"] == "tool_use"]
    assert [b["id"] for b in uses] == ["call_abc123", wire_tool_id(weird)]
    assert uses[0]["input"] == {"city": "Paris"}
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", uses[1]["id"])
    assert [b["type"] for b in u["content"]] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in u["content"][:2]] == [b["id"] for b in uses]
    assert u["content"][0]["content"] == "sunny"
    assert u["content"][1]["content"] == [{"type": "text", "text": "rain"}]


def test_tool_results_open_the_merged_user_turn():
    _, out = build({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "(a note typed while the tool ran)"},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]})
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in out["messages"][2]["content"]] == ["tool_result", "text"]


def test_tool_call_arguments_that_are_not_an_object_are_kept():
    _, out = build({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": ""}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}},
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
    ]})
    assert [b["input"] for b in out["messages"][1]["content"]] == [{}, {"arguments": [1, 2]}, {"arguments": "{oops"}]


def test_final_assistant_prefill_loses_trailing_whitespace():
    _, out = build({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "The answer is "}]})
    assert out["messages"][-1]["content"] == [{"type": "text", "text": "The answer is"}]


def test_response_format_becomes_a_system_instruction():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    _, out = build({"messages": [{"role": "system", "content": "Count."}, {"role": "user", "content": "x"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
    assert out["system"].startswith("Count.\n\n") and "JSON" in out["system"]
    assert json.dumps(schema, sort_keys=True) in out["system"]
    assert "response_format" not in out
    _, out = build({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})
    assert "JSON object" in out["system"]
    _, out = build({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}})
    assert "system" not in out


# ---- id rewriting ----------------------------------------------------------------------

ids = st.one_of(st.text(max_size=40), st.from_regex(r"[a-zA-Z0-9_-]{1,30}", fullmatch=True),
                st.builds(lambda s: ID_PREFIX + s, st.from_regex(r"[a-zA-Z0-9_-]{0,20}", fullmatch=True)))


@given(ids, ids)
def test_id_rewriting_is_injective_valid_and_stable(a, b):
    wa, wb = wire_tool_id(a), wire_tool_id(b)
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", wa)
    assert wa == wire_tool_id(a)
    assert (wa == wb) == (a == b)
    assert caller_tool_id(wa) == a


@given(st.from_regex(r"[a-zA-Z0-9_-]{1,40}", fullmatch=True))
def test_valid_ids_pass_through_unchanged(s):
    if not s.startswith(ID_PREFIX):
        assert wire_tool_id(s) == s


def test_id_rewriting_examples():
    assert wire_tool_id("call_Xy9") == "call_Xy9"
    assert wire_tool_id("toolu_01A") == "toolu_01A"
    assert wire_tool_id("a:b") != wire_tool_id("a_b") and wire_tool_id("a:b").startswith(ID_PREFIX)
    assert wire_tool_id(None) == wire_tool_id("")
    assert wire_tool_id("abc\n") != "abc\n"  # a trailing newline is not in the charset


# ---- parse -----------------------------------------------------------------------------

def message(content, stop_reason="end_turn", usage=None):
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                       "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                       "usage": usage or {"input_tokens": 10, "output_tokens": 5}}).encode()


def test_parse_text_and_tool_use():
    out = WIRE.parse(200, {}, message([
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ], "tool_use"), T)
    choice = out["choices"][0]
    assert out["object"] == "chat.completion" and out["id"] == "msg_1"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_01", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    only_tool = WIRE.parse(200, {}, message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                                            "tool_use"), T)
    assert only_tool["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize("stop,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
])
def test_stop_reasons(stop, finish):
    assert WIRE.parse(200, {}, message([{"type": "text", "text": "x"}], stop), T)["choices"][0][
        "finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_in_prompt():
    usage = {"input_tokens": 20, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300,
             "output_tokens": 50}
    out = WIRE.parse(200, {}, message([{"type": "text", "text": "x"}], usage=usage), T)["usage"]
    assert out["prompt_tokens"] == 1320 and out["completion_tokens"] == 50 and out["total_tokens"] == 1370
    assert out["prompt_tokens_details"]["cached_tokens"] == 1000
    assert out["prompt_tokens_details"]["cache_creation_tokens"] == 300
    assert out["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize("body", [b"nope", b"{}", json.dumps({"type": "message", "content": "text"}).encode(), b"[]"])
def test_parse_malformed_is_bad_response(body):
    with pytest.raises(ProviderError) as e:
        WIRE.parse(200, {}, body, T)
    assert e.value.kind == "bad_response"


# ---- errors ----------------------------------------------------------------------------

def aerr(etype, msg, **extra):
    return json.dumps({"type": "error", "error": {"type": etype, "message": msg, **extra},
                       "request_id": "req_1"}).encode()


@pytest.mark.parametrize("status,body,kind", [
    (529, aerr("overloaded_error", "Overloaded"), "server_error"),
    (529, b"", "server_error"),
    (429, aerr("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"), "rate_limit"),
    (429, aerr("rate_limit_error", "You have reached your specified workspace API usage limits",
               details={"error_code": "enforced_spend_limit_reached"}), "payment_required"),
    (401, aerr("authentication_error", "invalid x-api-key"), "auth_error"),
    (403, aerr("permission_error", "Your API key does not have permission"), "auth_error"),
    (404, aerr("not_found_error", "model: claude-nope"), "model_unavailable"),
    (400, aerr("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"), "context_overflow"),
    (400, aerr("invalid_request_error", "messages.1.content: Field required"), "bad_request"),
    (400, aerr("invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
     "payment_required"),
    (402, aerr("billing_error", "billing issue"), "payment_required"),
    (413, aerr("request_too_large", "Request exceeds the maximum allowed number of bytes."), "bad_request"),
    (500, aerr("api_error", "Internal server error"), "server_error"),
    (504, aerr("timeout_error", "Request timed out"), "timeout"),
])
def test_error_classification(status, body, kind):
    e = WIRE.error(status, {}, body)
    assert e.kind == kind and e.status == status


def test_error_retry_after_and_key_redaction():
    e = WIRE.error(429, {"retry-after": "12"}, aerr("rate_limit_error", f"slow down {KEY}"), target=T)
    assert e.retry_after_s == 12.0 and KEY not in e.message and KEY not in str(e)
    e = WIRE.error(401, {}, aerr("authentication_error", f"invalid x-api-key {KEY}"))
    assert KEY not in e.message


# ---- stream decoder --------------------------------------------------------------------

def ev(doc):
    return f"event: {doc['type']}\ndata: {json.dumps(doc, ensure_ascii=False)}\n\n".encode()


STREAM = b"".join([
    ev({"type": "message_start", "message": {"id": "msg_9", "type": "message", "role": "assistant",
                                             "model": "claude-haiku-4-5", "content": [], "stop_reason": None,
                                             "usage": {"input_tokens": 25, "cache_read_input_tokens": 100,
                                                       "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
    ev({"type": "ping"}),
    ev({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
    ev({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me think"}}),
    ev({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
    ev({"type": "content_block_stop", "index": 0}),
    ev({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    ev({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Okay, "}}),
    ev({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "checking \u00fc\u2603."}}),
    ev({"type": "content_block_stop", "index": 1}),
    ev({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_7",
                                                                     "name": "get_weather", "input": {}}}),
    ev({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ev({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta",
                                                             "partial_json": "{\"city\": \"Pa"}}),
    ev({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
    ev({"type": "content_block_stop", "index": 2}),
    ev({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 42}}),
    ev({"type": "message_stop"}),
])


def decode(data, cuts=None):
    dec = WIRE.stream(T)
    out, prev = [], 0
    for cut in sorted(cuts or []) + [len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    return out + dec.close()


def test_stream_translates_events_to_openai_chunks():
    chunks = decode(STREAM)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_9" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Okay, checking \u00fc\u2603."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_7", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Paris"}
    assert all(tc["index"] == 0 for tc in calls)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (
        125, 42, 100)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_stream_any_split_gives_the_same_chunks(cuts):
    assert decode(STREAM, cuts) == decode(STREAM)


def test_stream_byte_by_byte():
    assert decode(STREAM, list(range(len(STREAM)))) == decode(STREAM)


def test_stream_without_message_stop_is_interrupted():
    dec = WIRE.stream(T)
    got = dec.feed(STREAM[: STREAM.index(b"event: message_stop")])
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in got)
    with pytest.raises(ProviderError) as e:
        dec.close()
    assert e.value.kind == "stream_interrupted"


@pytest.mark.parametrize("etype,kind", [("overloaded_error", "server_error"), ("rate_limit_error", "rate_limit"),
                                        ("invalid_request_error", "bad_request"), ("api_error", "server_error")])
def test_stream_error_event(etype, kind):
    dec = WIRE.stream(T)
    with pytest.raises(ProviderError) as e:
        dec.feed(STREAM[:200] + STREAM[200:STREAM.index(b"event: content_block_start")]
                 + ev({"type": "error", "error": {"type": etype, "message": "boom"}}))
    assert e.value.kind == kind


# ---- against the strict mock server ----------------------------------------------------

@pytest.fixture
async def upstream():
    up = Upstream("anthropic", key=KEY)
    await up.start()
    yield up
    await up.stop()


def tgt(up, key=KEY, model="claude-haiku-4-5"):
    return Target("anthropic", "anthropic", up.base_url, model, api_key=key)


async def call(wire_body, t, stream=False):
    ex = await exchange(WIRE.build(wire_body, t, stream))
    if not stream:
        return WIRE.parse(ex.status, ex.headers, ex.body, t)
    if ex.status != 200:
        raise WIRE.error(ex.status, ex.headers, ex.body)
    dec = WIRE.stream(t)
    return [c for data in ex.chunks for c in dec.feed(data)] + dec.close()


async def test_roundtrip_non_stream_and_stream(upstream):
    t = tgt(upstream)
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                         {"role": "user", "content": "again"}], "max_completion_tokens": 64, "stop": "###",
            "temperature": 1.5, "response_format": {"type": "json_object"}}
    upstream.script("claude-haiku-4-5", Reply("hi", usage=Usage(500, 7, cached_tokens=400, cache_creation_tokens=50)))
    out = await call(body, t)
    assert out["choices"][0]["message"]["content"] == "hi"
    assert out["usage"]["prompt_tokens"] == 500 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 400
    sent = upstream.requests[-1].body
    assert sent["max_tokens"] == 64 and sent["stop_sequences"] == ["###"] and "JSON" in sent["system"]
    chunks = await call(body, t, stream=True)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Echo: hello again"  # the default echo answers the merged user turn


async def test_cross_provider_tool_conversation_is_accepted(upstream):
    t = tgt(upstream)
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9f8e7d", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "fc:1/odd id", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_9f8e7d", "content": "cold"},
        {"role": "tool", "tool_call_id": "fc:1/odd id", "content": "warm"},
    ]
    upstream.script("claude-haiku-4-5", ReplyToolCall("get_weather", {"city": "Paris"}, text="One more."),
                    Reply("Done."))
    out = await call({"messages": history, "tools": TOOLS}, t)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and msg["content"] == "One more."
    history += [msg, {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": "mild"}]
    chunks = await call({"messages": history, "tools": TOOLS}, t, stream=True)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(r.status == 200 for r in upstream.requests)


async def test_unmatched_tool_result_is_rejected_by_the_server(upstream):
    t = tgt(upstream)
    body = {"messages": [{"role": "user", "content": "x"},
                         {"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "b", "content": "?"}]}
    with pytest.raises(ProviderError) as e:
        await call(body, t)
    assert e.value.kind == "bad_request" and "tool_use_id" in e.value.message


async def test_failures_and_interruptions(upstream):
    t = tgt(upstream)
    upstream.script("claude-haiku-4-5", Fail(529, "Overloaded"), Fail(429, "slow", retry_after=3),
                    StreamCut(after_chunks=5), Fail(529, "Overloaded", in_stream=True))
    body = {"messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ProviderError) as e:
        await call(body, t)
    assert e.value.kind == "server_error" and e.value.status == 529
    with pytest.raises(ProviderError) as e:
        await call(body, t)
    assert (e.value.kind, e.value.retry_after_s) == ("rate_limit", 3.0)
    with pytest.raises(ProviderError) as e:
        await call(body, t, stream=True)
    assert e.value.kind == "stream_interrupted"
    with pytest.raises(ProviderError) as e:
        await call(body, t, stream=True)
    assert e.value.kind == "server_error"


async def test_wrong_key_and_unknown_model(upstream):
    bad = "sk-ant-wrong-0000000000"
    with pytest.raises(ProviderError) as e:
        await call({"messages": [{"role": "user", "content": "x"}]}, tgt(upstream, key=bad))
    assert e.value.kind == "auth_error" and bad not in e.value.message
    with pytest.raises(ProviderError) as e:
        await call({"messages": [{"role": "user", "content": "x"}]}, tgt(upstream, model="claude-nope"))
    assert e.value.kind == "model_unavailable"


@pytest.mark.parametrize("wire", ["anthropic", "gemini"])
@pytest.mark.parametrize("extra", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 2},
                                   {"logit_bias": {"50256": -100}}])
def test_logprobs_and_logit_bias_are_refused_before_sending_not_dropped(wire, extra):
    from unhardcoded.providers import WIRES
    target = T if wire == "anthropic" else Target("gemini", "gemini", "https://g.example/v1beta", "gemini-x")
    base = {"messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ProviderError) as e:
        WIRES[wire].build({**base, **extra}, target, False)
    assert e.value.kind == "bad_request" and e.value.message.startswith(wire) and next(iter(extra)) in e.value.message
    WIRES[wire].build({**base, "logprobs": False, "logit_bias": {}}, target, False)  # asking for none is served
