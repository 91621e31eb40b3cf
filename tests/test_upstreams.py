"""The strict mock upstreams: what they refuse, how they answer, how they are scripted."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from unhardcoded.providers import WIRES, HttpRequest, Target
from unhardcoded.testing.upstreams import (
    Delay, Fail, Raw, Reply, Stall, StreamCut, Upstream, Usage, echo_text, exchange, run_in_thread,
)

KEY = "sk-mock-secret-key-123456"
MODEL = {"openai": "gpt-5.4-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-3-flash-preview"}


@pytest.fixture
async def servers():
    ups = {k: Upstream(k, key=KEY) for k in MODEL}
    for up in ups.values():
        await up.start()
    yield ups
    for up in ups.values():
        await up.stop()


def raw_request(up, path, body, headers=None, method="POST"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    root = up.base_url.rsplit("/", 1)[0]
    return HttpRequest(method, root + path, {"Content-Type": "application/json", **(headers or {})}, data)


OA_AUTH = {"Authorization": f"Bearer {KEY}"}
AN_AUTH = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
GE_AUTH = {"x-goog-api-key": KEY}
OA_PATH, AN_PATH = "/v1/chat/completions", "/v1/messages"
GE_PATH = "/v1beta/models/gemini-3-flash-preview:generateContent"


async def rejected(up, path, body, headers, method="POST"):
    ex = await exchange(raw_request(up, path, body, headers, method))
    assert ex.status >= 400, ex.body
    return ex.status, json.loads(ex.body)


# ---- OpenAI ----------------------------------------------------------------------------

OA_OK = {"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_openai_accepts_a_minimal_request(servers):
    ex = await exchange(raw_request(servers["openai"], OA_PATH, OA_OK, OA_AUTH))
    assert ex.status == 200 and json.loads(ex.body)["choices"][0]["message"]["content"] == "Echo: hi"


@pytest.mark.parametrize("path,body,headers,method,status,needle", [
    ("/v1/completions", OA_OK, OA_AUTH, "POST", 404, "Invalid URL"),
    (OA_PATH, OA_OK, OA_AUTH, "GET", 404, "Invalid URL"),
    (OA_PATH, OA_OK, {}, "POST", 401, "didn't provide an API key"),
    (OA_PATH, OA_OK, {"Authorization": "Bearer sk-nope-nope-nope"}, "POST", 401, "Incorrect API key"),
    (OA_PATH, b"{not json", OA_AUTH, "POST", 400, "parse the JSON"),
    (OA_PATH, {"messages": OA_OK["messages"]}, OA_AUTH, "POST", 400, "model parameter"),
    (OA_PATH, {"model": "gpt-5.4-mini"}, OA_AUTH, "POST", 400, "'messages' is a required property"),
    (OA_PATH, {**OA_OK, "policy_ir": {}}, OA_AUTH, "POST", 400, "Unrecognized request argument supplied: policy_ir"),
    (OA_PATH, {**OA_OK, "stream_options": {"include_usage": True}}, OA_AUTH, "POST", 400, "stream_options"),
    (OA_PATH, {**OA_OK, "model": "gpt-0"}, OA_AUTH, "POST", 404, "does not exist"),
    (OA_PATH, {**OA_OK, "messages": [{"role": "user", "content": "x"},
                                     {"role": "tool", "tool_call_id": "call_1", "content": "r"}]},
     OA_AUTH, "POST", 400, "must be a response to a preceeding message with 'tool_calls'"),
    (OA_PATH, {**OA_OK, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f",
                                                                                           "arguments": "{}"}}]},
        {"role": "user", "content": "y"}]}, OA_AUTH, "POST", 400, "did not have response messages: c1"),
    (OA_PATH, {**OA_OK, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f",
                                                                                           "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]}, OA_AUTH, "POST", 400, "expected a string"),
])
async def test_openai_rejections(servers, path, body, headers, method, status, needle):
    got_status, doc = await rejected(servers["openai"], path, body, headers, method)
    assert got_status == status and needle in doc["error"]["message"]
    assert set(doc["error"]) == {"message", "type", "param", "code"}


# ---- Anthropic -------------------------------------------------------------------------

AN_OK = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
TU = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}


def an(**over):
    return {**AN_OK, **over}


@pytest.mark.parametrize("path,body,headers,status,etype,needle", [
    ("/v1/complete", AN_OK, AN_AUTH, 404, "not_found_error", "Not Found"),
    (AN_PATH, AN_OK, {"anthropic-version": "2023-06-01"}, 401, "authentication_error", "x-api-key"),
    (AN_PATH, AN_OK, {**AN_AUTH, "x-api-key": "sk-ant-wrong"}, 401, "authentication_error", "invalid x-api-key"),
    (AN_PATH, AN_OK, {"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version"),
    (AN_PATH, b"nope", AN_AUTH, 400, "invalid_request_error", "JSON"),
    (AN_PATH, {k: v for k, v in AN_OK.items() if k != "max_tokens"}, AN_AUTH, 400, "invalid_request_error",
     "max_tokens: Field required"),
    (AN_PATH, an(max_tokens=0), AN_AUTH, 400, "invalid_request_error", "max_tokens"),
    (AN_PATH, an(messages=[]), AN_AUTH, 400, "invalid_request_error", "at least one message"),
    (AN_PATH, an(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]), AN_AUTH, 400,
     "invalid_request_error", "top-level `system`"),
    (AN_PATH, an(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), AN_AUTH, 400,
     "invalid_request_error", "roles must alternate"),
    (AN_PATH, an(messages=[{"role": "user", "content": "a"}, TU,
                           {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}]}]),
     AN_AUTH, 400, "invalid_request_error", "unexpected `tool_use_id`"),
    (AN_PATH, an(messages=[{"role": "user", "content": "a"}, TU, {"role": "user", "content": "no result"}]),
     AN_AUTH, 400, "invalid_request_error", "without `tool_result` blocks"),
    (AN_PATH, an(messages=[{"role": "user", "content": "a"},
                           {"role": "assistant", "content": [{"type": "tool_use", "id": "call:1", "name": "f",
                                                              "input": {}}]}]),
     AN_AUTH, 400, "invalid_request_error", "pattern"),
    (AN_PATH, an(messages=[{"role": "user", "content": "a"}, TU, {"role": "user", "content": [
        {"type": "text", "text": "first"}, {"type": "tool_result", "tool_use_id": "toolu_1"}]}]),
     AN_AUTH, 400, "invalid_request_error", "must come before"),
    (AN_PATH, an(messages=[{"role": "user", "content": ""}]), AN_AUTH, 400, "invalid_request_error", "non-empty"),
    (AN_PATH, an(temperature=1.5), AN_AUTH, 400, "invalid_request_error", "temperature"),
    (AN_PATH, an(response_format={"type": "json_object"}), AN_AUTH, 400, "invalid_request_error",
     "Extra inputs are not permitted"),
    (AN_PATH, an(tools=[{"name": "f", "input_schema": {"type": "string"}}]), AN_AUTH, 400, "invalid_request_error",
     "input_schema"),
    (AN_PATH, an(model="claude-0"), AN_AUTH, 404, "not_found_error", "claude-0"),
])
async def test_anthropic_rejections(servers, path, body, headers, status, etype, needle):
    got_status, doc = await rejected(servers["anthropic"], path, body, headers)
    assert got_status == status and doc["type"] == "error"
    assert doc["error"]["type"] == etype and needle in doc["error"]["message"]


async def test_anthropic_accepts_a_valid_tool_exchange(servers):
    body = an(messages=[{"role": "user", "content": "a"}, TU, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}, {"type": "text", "text": "next?"}]}],
        system="s", tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "tool", "name": "f"})
    ex = await exchange(raw_request(servers["anthropic"], AN_PATH, body, AN_AUTH))
    assert ex.status == 200, ex.body
    assert json.loads(ex.body)["content"][0]["text"] == "Echo: r next?"


# ---- Gemini ----------------------------------------------------------------------------

GE_OK = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
FC = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},
                                  "thoughtSignature": "skip_thought_signature_validator"}]}


def ge(contents, **over):
    return {"contents": contents, **over}


@pytest.mark.parametrize("path,body,headers,status,gstatus,needle", [
    ("/v1beta/models/gemini-3-flash-preview:countTokens", GE_OK, GE_AUTH, 404, "NOT_FOUND", "not found"),
    ("/v1/models/gemini-3-flash-preview:generateContent", GE_OK, GE_AUTH, 404, "NOT_FOUND", "not found"),
    (GE_PATH, GE_OK, {}, 403, "PERMISSION_DENIED", "unregistered callers"),
    (GE_PATH, GE_OK, {"x-goog-api-key": "AIza-wrong"}, 400, "INVALID_ARGUMENT", "API key not valid"),
    (GE_PATH, b"{", GE_AUTH, 400, "INVALID_ARGUMENT", "Invalid JSON payload"),
    (GE_PATH, {"messages": []}, GE_AUTH, 400, "INVALID_ARGUMENT", 'Unknown name "messages"'),
    (GE_PATH, {"contents": []}, GE_AUTH, 400, "INVALID_ARGUMENT", "contents is not specified"),
    (GE_PATH, ge([{"role": "assistant", "parts": [{"text": "x"}]}]), GE_AUTH, 400, "INVALID_ARGUMENT", "valid role"),
    (GE_PATH, ge([{"role": "user", "parts": []}]), GE_AUTH, 400, "INVALID_ARGUMENT", "must not be empty"),
    (GE_PATH, ge([{"role": "user", "parts": [{"text": "a"}]}, FC, {"role": "user", "parts": [
        {"functionResponse": {"name": "g", "response": {}}}]}]), GE_AUTH, 400, "INVALID_ARGUMENT",
     "does not match any function call"),
    (GE_PATH, ge([{"role": "user", "parts": [{"text": "a"}]}, FC, {"role": "user", "parts": [{"text": "b"}]}]),
     GE_AUTH, 400, "INVALID_ARGUMENT", "number of function response parts"),
    (GE_PATH, ge([{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}}]}, {"role": "user", "parts": [
            {"functionResponse": {"name": "f", "response": {}}}]}]), GE_AUTH, 400, "INVALID_ARGUMENT",
     "thought_signature"),
    (GE_PATH, ge([{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "Zm9yZ2Vk"}]}, {"role": "user", "parts": [
            {"functionResponse": {"name": "f", "response": {}}}]}]), GE_AUTH, 400, "INVALID_ARGUMENT",
     "Corrupted thought signature"),
    (GE_PATH, ge([{"role": "user", "parts": [{"text": "a"}]}, FC, {"role": "user", "parts": [
        {"functionResponse": {"name": "f", "response": "plain"}}]}]), GE_AUTH, 400, "INVALID_ARGUMENT", "Struct"),
    (GE_PATH, {**GE_OK, "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}]}]},
     GE_AUTH, 400, "INVALID_ARGUMENT", 'Unknown name "additionalProperties"'),
    (GE_PATH, {**GE_OK, "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
        "type": "object", "properties": {}}}]}]}, GE_AUTH, 400, "INVALID_ARGUMENT", "non-empty for OBJECT"),
    (GE_PATH, {**GE_OK, "generationConfig": {"max_tokens": 5}}, GE_AUTH, 400, "INVALID_ARGUMENT",
     'Unknown name "max_tokens"'),
    ("/v1beta/models/gemini-0:generateContent", GE_OK, GE_AUTH, 404, "NOT_FOUND", "models/gemini-0 is not found"),
])
async def test_gemini_rejections(servers, path, body, headers, status, gstatus, needle):
    got_status, doc = await rejected(servers["gemini"], path, body, headers)
    assert got_status == status and doc["error"]["status"] == gstatus and doc["error"]["code"] == status
    assert needle in doc["error"]["message"]


async def test_gemini_key_may_come_as_query_parameter_and_is_redacted(servers):
    up = servers["gemini"]
    req = raw_request(up, GE_PATH + f"?key={KEY}", GE_OK)
    ex = await exchange(req)
    assert ex.status == 200
    rec = up.requests[-1]
    assert rec.query["key"] == "[redacted]" and KEY not in json.dumps(rec.headers)


# ---- recording, scripting, defaults ----------------------------------------------------

async def test_requests_are_recorded_with_keys_redacted(servers):
    for kind, path, body, headers in (("openai", OA_PATH, OA_OK, OA_AUTH), ("anthropic", AN_PATH, AN_OK, AN_AUTH),
                                      ("gemini", GE_PATH, GE_OK, GE_AUTH)):
        up = servers[kind]
        await exchange(raw_request(up, path, body, headers))
        await exchange(raw_request(up, path, b"garbage", headers))
        ok, bad = up.requests[-2:]
        assert ok.body == body and ok.status == 200 and ok.model == MODEL[kind]
        assert bad.body is None and bad.raw == b"garbage" and bad.status == 400
        assert KEY not in json.dumps(ok.headers) and "[redacted]" in json.dumps(ok.headers)


async def test_default_echo_is_deterministic_with_usage(servers):
    up = servers["anthropic"]
    docs = []
    for _ in range(2):
        ex = await exchange(raw_request(up, AN_PATH, an(messages=[{"role": "user", "content": "What is 2+2?"}]),
                                        AN_AUTH))
        docs.append(json.loads(ex.body))
    assert docs[0]["content"] == docs[1]["content"] == [{"type": "text", "text": "Echo: What is 2+2?"}]
    assert docs[0]["usage"] == docs[1]["usage"] and docs[0]["usage"]["input_tokens"] > 0
    assert docs[0]["usage"]["output_tokens"] > 0
    assert echo_text("x " * 100).endswith("...") and len(echo_text("x " * 100)) < 100


async def test_steps_are_consumed_in_order_then_default(servers):
    up = servers["openai"]
    up.script("gpt-5.4-mini", Reply("one"), Fail(503, "down"), default=Reply("always"))
    got = []
    for _ in range(4):
        ex = await exchange(raw_request(up, OA_PATH, OA_OK, OA_AUTH))
        doc = json.loads(ex.body)
        got.append((ex.status, doc["choices"][0]["message"]["content"] if ex.status == 200 else doc["error"]["type"]))
    assert got == [(200, "one"), (503, "server_error"), (200, "always"), (200, "always")]


async def test_rejected_requests_do_not_consume_steps(servers):
    up = servers["openai"]
    up.script("gpt-5.4-mini", Reply("scripted"))
    await exchange(raw_request(up, OA_PATH, OA_OK, {}))
    ex = await exchange(raw_request(up, OA_PATH, OA_OK, OA_AUTH))
    assert json.loads(ex.body)["choices"][0]["message"]["content"] == "scripted"


async def test_scripting_makes_a_model_known(servers):
    up = servers["openai"]
    up.script("my-finetune", Reply("ft"))
    ex = await exchange(raw_request(up, OA_PATH, {**OA_OK, "model": "my-finetune"}, OA_AUTH))
    assert ex.status == 200


async def test_delay_then_answer(servers):
    up = servers["gemini"]
    up.script("gemini-3-flash-preview", Delay(150), Reply("late"))
    t0 = time.monotonic()
    ex = await exchange(raw_request(up, GE_PATH, GE_OK, GE_AUTH))
    assert time.monotonic() - t0 >= 0.14
    assert json.loads(ex.body)["candidates"][0]["content"]["parts"][0]["text"] == "late"


async def test_stall_never_answers(servers):
    up = servers["anthropic"]
    up.script("claude-haiku-4-5", Stall())
    # wait for the upstream to hold the request (a loaded machine may take a while to deliver it),
    # then check that no answer comes
    pending = asyncio.ensure_future(exchange(raw_request(up, AN_PATH, AN_OK, AN_AUTH), timeout=30))
    deadline = time.monotonic() + 10
    while not up.requests and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(up.requests) == 1
    await asyncio.sleep(0.3)
    assert not pending.done() and up.requests[-1].status is None
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_fail_carries_retry_after_in_each_shape(servers):
    for kind, path, body, headers in (("openai", OA_PATH, OA_OK, OA_AUTH), ("anthropic", AN_PATH, AN_OK, AN_AUTH),
                                      ("gemini", GE_PATH, GE_OK, GE_AUTH)):
        servers[kind].script(MODEL[kind], Fail(429, "slow down", retry_after=2.5))
        ex = await exchange(raw_request(servers[kind], path, body, headers))
        assert ex.status == 429 and ex.headers["retry-after"] == "2.5"
        err = WIRES[kind].error(ex.status, ex.headers, ex.body)
        assert (err.kind, err.retry_after_s) == ("rate_limit", 2.5)


async def test_stream_cut_abort_and_clean(servers):
    up = servers["openai"]
    up.script("gpt-5.4-mini", StreamCut(after_chunks=2), StreamCut(after_chunks=2, abort=False),
              StreamCut(after_chunks=1))
    body = {**OA_OK, "stream": True}
    ex = await exchange(raw_request(up, OA_PATH, body, OA_AUTH))
    assert ex.error is not None and b"[DONE]" not in ex.body and ex.body.count(b"data: ") == 2
    ex = await exchange(raw_request(up, OA_PATH, body, OA_AUTH))
    assert ex.error is None and b"[DONE]" not in ex.body and ex.body.count(b"data: ") == 2
    ex = await exchange(raw_request(up, OA_PATH, OA_OK, OA_AUTH))  # not streamed: a truncated JSON body
    assert ex.error is not None
    with pytest.raises(ValueError):
        json.loads(ex.body)


async def test_raw_and_in_stream_failures(servers):
    up = servers["anthropic"]
    up.script("claude-haiku-4-5", Raw(200, b"<html>proxy</html>", content_type="text/html"),
              Fail(529, "Overloaded", in_stream=True))
    ex = await exchange(raw_request(up, AN_PATH, AN_OK, AN_AUTH))
    assert ex.status == 200 and ex.body == b"<html>proxy</html>"
    ex = await exchange(raw_request(up, AN_PATH, an(stream=True), AN_AUTH))
    assert ex.status == 200 and b"event: error" in ex.body and b"overloaded_error" in ex.body


async def test_streams_are_in_each_providers_format(servers):
    for kind, path, body, headers, marker in (
            ("openai", OA_PATH, {**OA_OK, "stream": True}, OA_AUTH, b"data: [DONE]\n\n"),
            ("anthropic", AN_PATH, an(stream=True), AN_AUTH, b"event: message_stop\n"),
            ("gemini", GE_PATH.replace("generateContent", "streamGenerateContent?alt=sse"), GE_OK, GE_AUTH,
             b'"finishReason": "STOP"')):
        ex = await exchange(raw_request(servers[kind], path, body, headers))
        assert ex.status == 200 and ex.headers["content-type"].startswith("text/event-stream")
        assert marker in ex.body
    ex = await exchange(raw_request(servers["gemini"], GE_PATH.replace("generateContent", "streamGenerateContent"),
                                    GE_OK, GE_AUTH))
    docs = json.loads(ex.body)  # without alt=sse Gemini streams one JSON array
    assert isinstance(docs, list) and docs[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_openai_usage_chunk_only_when_asked(servers):
    up = servers["openai"]
    ex = await exchange(raw_request(up, OA_PATH, {**OA_OK, "stream": True}, OA_AUTH))
    assert b'"usage"' not in ex.body
    ex = await exchange(raw_request(up, OA_PATH, {**OA_OK, "stream": True,
                                                  "stream_options": {"include_usage": True}}, OA_AUTH))
    assert b'"choices": [], "usage"' in ex.body


@pytest.mark.parametrize("kind", list(MODEL))
async def test_neutral_usage_survives_every_wire(servers, kind):
    up = servers[kind]
    t = Target(kind, kind, up.base_url, MODEL[kind], api_key=KEY)
    usage = Usage(1000, 120, cached_tokens=700, reasoning_tokens=20 if kind != "anthropic" else 0)
    up.script(MODEL[kind], Reply("ok", usage=usage), Reply("ok", usage=usage))
    body = {"messages": [{"role": "user", "content": "u"}]}
    ex = await exchange(WIRES[kind].build(body, t, False))
    out = WIRES[kind].parse(ex.status, ex.headers, ex.body, t)["usage"]
    ex = await exchange(WIRES[kind].build(body, t, True))
    dec = WIRES[kind].stream(t)
    streamed = ([c for d in ex.chunks for c in dec.feed(d)] + dec.close())[-1]["usage"]
    for u in (out, streamed):
        assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (1000, 120, 1120)
        assert u["prompt_tokens_details"]["cached_tokens"] == 700
        assert u["completion_tokens_details"]["reasoning_tokens"] == usage.reasoning_tokens


async def test_upstream_context_manager_and_unknown_kind():
    with pytest.raises(ValueError):
        Upstream("cohere")
    async with Upstream("openai", key=None) as up:  # keyless, like a local Ollama
        ex = await exchange(raw_request(up, OA_PATH, OA_OK, {}))
        assert ex.status == 200
    assert up.base_url is None


def test_run_in_thread_serves_synchronous_callers():
    with run_in_thread("openai", "anthropic", "gemini", key=KEY) as running:
        up = running["anthropic"]
        assert up.base_url.startswith("http://127.0.0.1:")
        up.script("claude-haiku-4-5", Reply("from a thread"))
        req = urllib.request.Request(up.base_url + "/messages", data=json.dumps(AN_OK).encode(),
                                     headers={"content-type": "application/json", **AN_AUTH}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["content"][0]["text"] == "from a thread"
        bad = urllib.request.Request(running["openai"].base_url + "/chat/completions",
                                     data=json.dumps(OA_OK).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=5)
        assert e.value.code == 401
        e.value.close()
        base = running["gemini"].base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/models", timeout=1)


async def test_stop_releases_stalled_requests():
    up = Upstream("openai", key=KEY)
    await up.start()
    up.script("gpt-5.4-mini", Stall())
    task = asyncio.ensure_future(exchange(raw_request(up, OA_PATH, OA_OK, OA_AUTH), timeout=30))
    for _ in range(1000):  # until the upstream holds the stalled request
        if up.requests:
            break
        await asyncio.sleep(0.01)
    assert up.requests and not task.done()
    t0 = time.monotonic()
    await up.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(aiohttp.ClientError):  # released: the connection closes, the client is not left waiting
        await asyncio.wait_for(task, 10)
