"""OpenAI's Responses API (POST /v1/responses) end to end: the official SDK's `responses`
client against our server against the strict mock providers, on both servers."""

from __future__ import annotations

import json

import openai
import pytest

from unhardcoded.testing.upstreams import Fail, Reply, ReplyToolCall, StreamCut


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather by city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _calls(stack) -> int:
    return sum(len(up.requests) for up in stack.ups.values())


async def test_a_text_answer_is_a_response_object_with_usage_and_its_receipt(stack) -> None:
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="Hello there",
                                            instructions="Be brief.", max_output_tokens=50, temperature=0.2)
    x = r.model_extra["x_router"]
    assert r.object == "response" and r.status == "completed" and r.id == f"resp_{x['trace_id']}"
    assert r.output_text == "Echo: Hello there" and r.model == "gpt-5.4-mini"
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens > 0 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Be brief." and r.max_output_tokens == 50 and r.temperature == 0.2
    sent = stack.openai.requests[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    assert sent["max_tokens"] == 50 and "instructions" not in sent and "input" not in sent
    stack.store.flush()
    rec = stack.store.get(x["trace_id"])
    assert rec["answer"]["provider_id"] == "oa" and rec["status"] == "ok"
    status, same = await stack.post("/x/replay", {"trace_id": x["trace_id"]})
    assert status == 200 and same["identical"] is True


async def test_a_policy_and_a_profile_path_route_it_like_a_chat_call(stack) -> None:
    pol = ["policy", ["family_eq", "claude-haiku-4-5"], ["zero"], ["ordered"], ["id"],
           ["always", {"action": "next_candidate"}]]
    r = await stack.client.responses.create(model="", input="Hi", extra_body={"policy_ir": pol})
    assert r.model_extra["x_router"]["provider"] == "an" and r.output_text == "Echo: Hi"
    assert stack.anthropic.requests[-1].body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    status, body = await stack.post("/default/v1/responses", {"input": "Hi"})
    assert status == 200 and body["object"] == "response"


@pytest.mark.parametrize("family, wire", [("gpt-5.4-mini", "openai"), ("claude-haiku-4-5", "anthropic"),
                                          ("gemini-3-flash-preview", "gemini")])
async def test_a_tool_round_trip_in_items(stack, family, wire) -> None:
    """The model calls a function (a function_call item); the caller sends the call and its
    output back as items; every wire receives them as its own tool call and result."""
    up = getattr(stack, wire)
    up.script(family, ReplyToolCall("get_weather", {"city": "Paris"}, id="call_w1" if wire != "gemini" else None))
    r = await stack.client.responses.create(model=f"family:{family}", input="Weather in Paris?", tools=[WEATHER],
                                            tool_choice="required")
    call = [o for o in r.output if o.type == "function_call"]
    assert len(call) == 1 and call[0].name == "get_weather" and json.loads(call[0].arguments) == {"city": "Paris"}
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": call[0].call_id, "name": "get_weather",
              "arguments": call[0].arguments},
             {"type": "function_call_output", "call_id": call[0].call_id, "output": "18 C, sunny"}]
    r2 = await stack.client.responses.create(model=f"family:{family}", input=items, tools=[WEATHER])
    assert r2.status == "completed" and r2.output_text  # the strict mock accepted the call/result pairing
    if wire == "openai":
        msgs = up.requests[-1].body["messages"]
        assert msgs[1] == {"role": "assistant", "content": None, "tool_calls": [
            {"id": call[0].call_id, "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": call[0].arguments}}]}
        assert msgs[2] == {"role": "tool", "tool_call_id": call[0].call_id, "content": "18 C, sunny"}
        assert up.requests[-1].body["tools"] == [{"type": "function", "function": {
            k: v for k, v in WEATHER.items() if k != "type"}}]


async def test_streamed_text_arrives_as_response_events_in_order(stack) -> None:
    async with stack.client.responses.stream(model="family:gpt-5.4-mini", input="Tell me") as st:
        events = [ev async for ev in st]
        final = await st.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "Echo: Tell me"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage.output_tokens > 0 and final.model_extra["x_router"]["provider"] == "oa"
    assert final.id == events[0].response.id == f"resp_{final.model_extra['x_router']['trace_id']}"


async def test_a_streamed_tool_call_is_a_function_call_item(stack) -> None:
    stack.anthropic.script("claude-haiku-4-5", ReplyToolCall("get_weather", {"city": "Oslo"}, id="toolu_1"))
    async with stack.client.responses.stream(model="family:claude-haiku-4-5", input="Oslo?", tools=[WEATHER]) as st:
        events = [ev async for ev in st]
        final = await st.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert len(calls) == 1 and json.loads(calls[0].arguments) == {"city": "Oslo"} and calls[0].status == "completed"
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == calls[0].arguments


async def test_a_length_cut_answer_is_incomplete(stack) -> None:
    stack.openai.script("gpt-5.4-mini", Reply("partial", finish_reason="length"))
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="Long story", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


async def test_structured_output_is_asked_of_the_provider(stack) -> None:
    fmt = {"type": "json_schema", "name": "city", "schema": {"type": "object", "properties": {"n": {"type": "string"}}},
           "strict": True}
    await stack.client.responses.create(model="family:gpt-5.4-mini", input="x", text={"format": fmt})
    assert stack.openai.requests[-1].body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "city", "schema": fmt["schema"], "strict": True}}


async def test_every_route_failing_is_a_json_error_not_a_stream(stack) -> None:
    for up, fam in ((stack.openai, "gpt-5.4-mini"),):
        up.script(fam, Fail(500), Fail(500), Fail(500))
    pol = ["policy", ["family_eq", "gpt-5.4-mini"], ["zero"], ["ordered"], ["id"], ["always", {"action": "next_candidate"}]]
    with pytest.raises(openai.APIStatusError) as e:
        await stack.client.responses.create(model="", input="x", stream=True, extra_body={"policy_ir": pol})
    assert e.value.status_code >= 500 and e.value.body["code"] and "x_router" in e.value.response.json()


async def test_a_stream_cut_after_content_ends_with_response_failed(stack) -> None:
    stack.openai.script("gpt-5.4-mini", StreamCut(after_chunks=2))
    st = await stack.client.responses.create(model="family:gpt-5.4-mini", input="x", stream=True)
    kinds = [ev.type async for ev in st]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds


@pytest.mark.parametrize("body, code, param", [
    ({"input": "x", "conversation": "conv_1"}, "unsupported_parameter", "$.conversation"),
    ({"input": "x", "background": True}, "unsupported_parameter", "$.background"),
    ({"input": "x", "flow_ir": ["flow", {}]}, "unsupported_parameter", "$.flow_ir"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "unsupported_tool", "$.tools[0].type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "bad_parameter", "$.tools[0].name"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "unsupported_parameter", "$.input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "unsupported_parameter",
     "$.input[0].content[0].type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "bad_messages", "$.input[0].role"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "bad_messages", "$.input[0].call_id"),
    ({"input": []}, "bad_messages", "$.input"),
    ({}, "bad_messages", "$.input"),
    ({"input": "x", "instructions": 3}, "bad_parameter", "$.instructions"),
    ({"input": "x", "max_output_tokens": 0}, "bad_parameter", "$.max_output_tokens"),
    ({"input": "x", "max_output_tokens": "many"}, "bad_parameter", "$.max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "bad_parameter", "$.text.format.type"),
    ({"input": "x", "tool_choice": {"type": "function"}, "tools": [WEATHER]}, "bad_parameter", "$.tool_choice.name"),
    ({"input": "x", "model": "flow:two-drafts"}, "unsupported_parameter", "$.model"),
])
async def test_what_cannot_be_served_is_a_400_at_its_path_before_any_call(stack, body, code, param) -> None:
    before = _calls(stack)
    status, out = await stack.post("/v1/responses", body)
    assert status == 400, out
    assert out["error"]["code"] == code and out["error"]["param"] == param, out
    assert _calls(stack) == before


async def test_the_responses_path_takes_only_post(stack) -> None:
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.base_url + "/responses") as r:
            assert r.status == 405 and r.headers["allow"] == "POST"


def test_streamed_custom_tool_calls_are_custom_tool_call_items() -> None:
    """A custom tool's call, streamed in pieces (as OpenAI's chat stream sends it), is one
    custom_tool_call item with its input whole (no server: the translation alone)."""
    from unhardcoded.server.responses import ResponsesStream
    out = ResponsesStream({"input": "x"}, 0, "m")
    events = out.start("tr_1")
    for piece in ({"index": 0, "id": "call_1", "type": "custom", "custom": {"name": "sql", "input": "SELECT"}},
                  {"index": 0, "custom": {"input": " 1"}}):
        events += out.feed({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
    events += out.feed({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                        "x_router": {"trace_id": "tr_1"}})
    kinds = [k for k, _ in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.custom_tool_call_input.delta", "response.custom_tool_call_input.delta",
                     "response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    final = events[-1][1]["response"]
    assert final["output"] == [{"type": "custom_tool_call", "id": "fc_tr_1_0", "call_id": "call_1", "name": "sql",
                                "input": "SELECT 1", "status": "completed"}]
    assert final["usage"]["total_tokens"] == 3 and [e["sequence_number"] for _, e in events] == list(range(8))
