"""POST /v1/compact end to end: the official SDK posts a conversation, the router seals its aged
middle with a routed summarizing call to the strict mock providers, on both servers; and
x_router.compact, the cue to do so."""

from __future__ import annotations

import hashlib
import json

import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unhardcoded.runtime.limits import CallerSpec
from unhardcoded.server.app import HTTPError
from unhardcoded.server.compact import SEAL_HEADER, read_request, split, transcript
from unhardcoded.testing.upstreams import Fail, Reply, Usage

from .harness import policy, start_stack

SYSTEM = {"role": "system", "content": "You are a build agent. Tools: run, read."}
FLASH = "gemini-3-flash-preview"  # the cheapest price_in in the test catalog: the default summarizer


def turns(n: int, start: int = 0) -> list[dict]:
    return [{"role": "user", "content": f"step {i}: build module m{i}"} if i % 2 == 0 else
            {"role": "assistant", "content": f"done m{i - 1}, wrote src/m{i - 1}.py"} for i in range(start, start + n)]


async def compact(stack, body: dict, client: openai.AsyncOpenAI | None = None, **kw) -> dict:
    return await (client or stack.client).post("/compact", body=body, cast_to=object, **kw)


def _sent(stack) -> int:
    return sum(len(up.requests) for up in stack.ups.values())


async def test_the_aged_middle_is_sealed_and_the_head_and_tail_come_back_byte_for_byte(stack) -> None:
    stack.gemini.script(FLASH, Reply("Built m0..m4; files src/m0.py to src/m4.py.", usage=Usage(321, 17)))
    msgs = [SYSTEM, *turns(10)]
    out = await compact(stack, {"messages": msgs, "keep_recent": 4, "session": "agent-7"})
    sealed = {"role": "system", "content": f"{SEAL_HEADER}\nBuilt m0..m4; files src/m0.py to src/m4.py."}
    assert out["compacted"] is True and out["sealed"] == 6
    assert out["messages"] == [SYSTEM, sealed, *msgs[-4:]]
    assert out["usage"]["prompt_tokens"] == 321 and out["usage"]["completion_tokens"] == 17
    x = out["x_router"]
    assert x["provider"] == "ge" and x["model_family"] == FLASH and x["compact"] is False
    # the summarizer was asked with our instructions and the aged turns, and nothing else
    sent = stack.gemini.requests[-1].body
    told = json.dumps(sent["systemInstruction"])
    assert "condense a conversation" in told and "build agent" not in told
    text = sent["contents"][0]["parts"][0]["text"]
    assert text.startswith("user: step 0: build module m0\n\nassistant: done m0, wrote src/m0.py")
    assert "step 4" in text and "step 6" not in text and "m6" not in text
    assert sent["generationConfig"]["maxOutputTokens"] == 512
    # traced like a chat call, in the caller's session, and its decision replays
    stack.store.flush()
    rec = stack.store.get(x["trace_id"])
    assert rec["status"] == "ok" and rec["session"] == "agent-7" and rec["answer"]["provider_id"] == "ge"
    status, same = await stack.post("/x/replay", {"trace_id": x["trace_id"]})
    assert status == 200 and same["identical"] is True


async def test_nothing_to_seal_is_answered_without_a_call(stack) -> None:
    before = _sent(stack)
    for msgs, keep in (([SYSTEM, *turns(6)], 6), ([SYSTEM, SYSTEM, *turns(3)], 3), ([*turns(2)], 5),
                       ([SYSTEM], 1)):
        assert await compact(stack, {"messages": msgs, "keep_recent": keep}) == {"messages": msgs, "compacted": False}
    assert _sent(stack) == before


async def test_the_tail_never_begins_with_a_tool_result_without_its_call(stack) -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "run", "arguments": '{"cmd": "make"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "read", "arguments": '{"path": "log"}'}}]}
    results = [{"role": "tool", "tool_call_id": "call_1", "content": "ok"},
               {"role": "tool", "tool_call_id": "call_2", "content": "no errors"}]
    msgs = [SYSTEM, *turns(4), call, *results, {"role": "user", "content": "ship it"}]
    stack.gemini.script(FLASH, Reply("Modules m0 and m2 built."))
    out = await compact(stack, {"messages": msgs, "keep_recent": 2})
    assert out["compacted"] is True and out["sealed"] == 4
    assert out["messages"][2:] == [call, *results, msgs[-1]]  # the seam moved back to the call
    # the compacted conversation is one a strict provider accepts: every result has its call
    stack.openai.script("gpt-5.4-mini", Reply("shipped"))
    r = await stack.client.chat.completions.create(model="family:gpt-5.4-mini", messages=out["messages"])
    assert r.choices[0].message.content == "shipped"


async def test_a_second_compaction_appends_and_never_rewrites_the_first(stack) -> None:
    stack.gemini.script(FLASH, Reply("first summary"), Reply("second summary"))
    first = await compact(stack, {"messages": [SYSTEM, *turns(8)], "keep_recent": 2})
    grown = [*first["messages"], *turns(8, start=8)]
    second = await compact(stack, {"messages": grown, "keep_recent": 2})
    assert second["compacted"] is True and second["messages"][:2] == first["messages"][:2]
    assert second["messages"][2] == {"role": "system", "content": f"{SEAL_HEADER}\nsecond summary"}
    assert second["messages"][3:] == grown[-2:]
    said = stack.gemini.requests[-1].body["contents"][0]["parts"][0]["text"]
    assert "first summary" not in said and said.startswith("user: step 6: build module m6\n")


async def test_a_policy_a_model_and_instructions_choose_the_summarizer(stack) -> None:
    stack.anthropic.script("claude-haiku-4-5", Reply("haiku summary"))
    pol = policy(["family_eq", "claude-haiku-4-5"])
    out = await compact(stack, {"messages": [SYSTEM, *turns(6)], "keep_recent": 2, "policy_ir": pol,
                                "max_tokens": 64, "instructions": "List the files only."})
    assert out["x_router"]["provider"] == "an" and out["messages"][1]["content"].endswith("haiku summary")
    sent = stack.anthropic.requests[-1].body
    assert sent["max_tokens"] == 64 and sent["system"] in ("List the files only.", [{"type": "text", "text": "List the files only."}])
    stack.openai.script("gpt-5.5", Reply("big summary"))
    out = await compact(stack, {"messages": [SYSTEM, *turns(6)], "keep_recent": 2, "model": "family:gpt-5.5"})
    assert out["x_router"]["model_family"] == "gpt-5.5" and out["messages"][1]["content"].endswith("big summary")
    assert "policy_ir" not in stack.openai.requests[-1].body


async def test_no_summary_gives_the_messages_back_with_the_reason_and_the_cost(stack) -> None:
    msgs = [SYSTEM, *turns(6)]
    stack.gemini.script(FLASH, Reply("   ", usage=Usage(40, 1)))
    out = await compact(stack, {"messages": msgs, "keep_recent": 2})
    assert out["compacted"] is False and out["messages"] == msgs and out["reason"]["code"] == "empty_summary"
    assert out["usage"]["prompt_tokens"] == 40 and out["x_router"]["provider"] == "ge"
    # every route failing is the same: nothing lost, the receipt says what happened
    stack.gemini.script(FLASH, default=Fail(500))
    out = await compact(stack, {"messages": msgs, "keep_recent": 2, "policy_ir": policy(["family_eq", FLASH])})
    assert out["compacted"] is False and out["messages"] == msgs
    assert out["reason"]["code"] == "server_error" and "ge/" in out["reason"]["message"]
    stack.store.flush()
    assert stack.store.get(out["x_router"]["trace_id"])["status"] == "error"


BAD = [
    ([1, 2], "$", "bad_request_body"),
    ({"messages": []}, "$.messages", "bad_messages"),
    ({"messages": [SYSTEM, {"role": "robot", "content": "x"}]}, "$.messages[1].role", "bad_messages"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "$.messages[0].content[0]", "bad_messages"),
    ({"messages": turns(2), "keep_recent": 0}, "$.keep_recent", "bad_parameter"),
    ({"messages": turns(2), "keep_recent": True}, "$.keep_recent", "bad_parameter"),
    ({"messages": turns(2), "keep_recent": "6"}, "$.keep_recent", "bad_parameter"),
    ({"messages": turns(2), "max_tokens": 0}, "$.max_tokens", "bad_parameter"),
    ({"messages": turns(2), "stream": True}, "$.stream", "unsupported_parameter"),
    ({"messages": turns(2), "bad key": 1}, '$["bad key"]', "unsupported_parameter"),
    ({"messages": turns(2), "instructions": " "}, "$.instructions", "bad_parameter"),
    ({"messages": turns(2), "model": "flow:triage"}, "$.model", "unsupported_parameter"),
    ({"messages": turns(2), "model": 5}, "$.model", "bad_model"),
    ({"messages": turns(2), "policy_ir": ["no_such_op"]}, "$.policy_ir[0]", "invalid_policy"),
    ({"messages": turns(2), "session": ""}, "$.session", "bad_session"),
]


@pytest.mark.parametrize("body, path, code", BAD)
async def test_a_bad_body_is_a_400_at_its_path_and_calls_nothing(stack, body, path, code) -> None:
    before = _sent(stack)
    with pytest.raises(openai.BadRequestError) as e:
        await compact(stack, body)
    assert e.value.body["param"] == path and e.value.body["code"] == code
    assert _sent(stack) == before


async def test_a_policy_refused_at_admission_is_a_400_and_the_caller_key_is_never_said(stack) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await compact(stack, {"messages": [SYSTEM, *turns(6)], "keep_recent": 2,
                              "policy_ir": ["policy", ["cmp", "no_such_field", "ge", 1], ["zero"], ["ordered"],
                                            ["id"], ["always", {"action": "next_candidate"}]]})
    assert e.value.body["code"] == "invalid_policy" and e.value.body["param"].startswith("$")
    assert "caller-key" not in e.value.response.text


async def test_the_session_header_names_the_summary_call_s_session(stack) -> None:
    out = await compact(stack, {"messages": [SYSTEM, *turns(6)], "keep_recent": 2},
                        options={"headers": {"X-Unhardcoded-Session": "from-header"}})
    stack.store.flush()
    assert stack.store.get(out["x_router"]["trace_id"])["session"] == "from-header"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_a_named_caller_s_limits_and_envelope_hold_for_its_summaries(tmp_path, server) -> None:
    callers = {"a": CallerSpec("a", frozenset({_sha("key-a")}), requests_per_minute=2,
                               envelope=["family_eq", "gpt-5.4-mini"])}
    s = await start_stack(tmp_path, server=server, callers=callers)
    a = openai.AsyncOpenAI(base_url=s.base_url, api_key="key-a", max_retries=0)
    try:
        msgs = [SYSTEM, *turns(6)]
        out = await compact(s, {"messages": msgs, "keep_recent": 2}, client=a)
        assert out["compacted"] is True and out["x_router"]["model_family"] == "gpt-5.4-mini"  # not the cheapest
        assert await compact(s, {"messages": msgs, "keep_recent": 7}, client=a) == \
            {"messages": msgs, "compacted": False}  # no call, not counted
        await a.chat.completions.create(model="", messages=turns(1))
        before = _sent(s)
        with pytest.raises(openai.RateLimitError) as e:
            await compact(s, {"messages": msgs, "keep_recent": 2}, client=a)
        assert e.value.body["code"] == "rate_limit_exceeded" and _sent(s) == before
        s.store.flush()
        assert s.store.get(out["x_router"]["trace_id"])["caller"] == "a"
    finally:
        await a.close()
        await s.close()


# ---- the cue: x_router.compact -------------------------------------------------------------

@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_x_router_says_compact_once_a_call_s_input_reaches_the_threshold(tmp_path, server) -> None:
    s = await start_stack(tmp_path, server=server, compact_at_tokens=1000)
    try:
        s.openai.script("gpt-5.4-mini", Reply("a", usage=Usage(999, 3)), Reply("b", usage=Usage(1000, 3)),
                        Reply("c", usage=Usage(1500, 3)))
        said = []
        for _ in range(2):
            r = await s.client.chat.completions.create(model="family:gpt-5.4-mini", messages=turns(1))
            said.append(r.model_extra["x_router"]["compact"])
        chunks = [c async for c in await s.client.chat.completions.create(
            model="family:gpt-5.4-mini", messages=turns(1), stream=True, stream_options={"include_usage": True})]
        said.append(chunks[-1].model_extra["x_router"]["compact"])
        assert said == [False, True, True]
    finally:
        await s.close()


# ---- the parts, without a server ------------------------------------------------------------

def test_the_seam_and_the_head() -> None:
    tool = {"role": "tool", "tool_call_id": "c", "content": "r"}
    call = {"role": "assistant", "content": None, "tool_calls": []}
    dev = {"role": "developer", "content": "d"}
    assert split([SYSTEM, dev, *turns(5)], 2) == (2, 5)
    assert split([SYSTEM, *turns(2), call, tool, tool], 2) == (1, 3)
    assert split([SYSTEM, call, tool, tool], 2) is None  # the call is the first non-head message
    assert split([SYSTEM, tool, tool], 1) is None  # results without a call are never sealed alone
    assert split(turns(4), 3) == (0, 1)


def test_the_transcript_names_roles_tools_and_non_text_parts() -> None:
    said = transcript([
        {"role": "user", "name": "ada", "content": [{"type": "text", "text": "look"},
                                                   {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"p": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ])
    assert said.split("\n\n") == ["user (ada): look [image_url]", 'assistant: calling [calls read({"p": 1}) id=c1]',
                                  "tool result (c1): 42", "assistant: no"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=12)
_bodies = st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system", "x"])},
                                               optional={"content": _json}) | _json, max_size=5) | _json,
    "keep_recent": _json | st.integers(-3, 9), "max_tokens": _json, "model": _json, "session": _json,
    "instructions": _json, "policy_ir": _json}) | _json


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_any_body_is_read_or_refused_with_a_400_at_a_path(body) -> None:
    try:
        req = read_request(body)
    except HTTPError as err:
        assert err.status == 400 and err.param is not None and err.param.startswith("$")
        return
    assert type(req["keep_recent"]) is int and req["keep_recent"] >= 1
    split(req["messages"], req["keep_recent"])
    transcript(req["messages"])
