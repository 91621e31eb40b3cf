"""Stored responses: ``previous_response_id``, ``responses.retrieve``, ``responses.delete`` and
``responses.input_items.list`` with the official SDK against the router, on both servers; the
store itself (``traces/responses.py``) without a server."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import openai
import pytest

from unhardcoded.runtime.limits import CallerSpec
from unhardcoded.testing.upstreams import ReplyToolCall
from unhardcoded.traces.responses import ResponseStore, StoredResponse, page

from .harness import start_stack

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather by city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _sent(stack) -> int:
    return sum(len(up.requests) for up in stack.ups.values())


def _texts(messages) -> list[tuple[str, str]]:
    """(role, text) of the chat messages a mock OpenAI received."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        out.append((m["role"], content))
    return out


async def test_a_call_goes_on_from_a_stored_response_without_its_instructions(stack) -> None:
    r1 = await stack.client.responses.create(model="family:gpt-5.4-mini", input="My name is Ada",
                                             instructions="Be brief.")
    assert r1.store is True and r1.previous_response_id is None
    r2 = await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r1.id,
                                             input="What is my name?", instructions="Answer in French.")
    assert r2.previous_response_id == r1.id and r2.store is True and r2.id != r1.id
    # as on OpenAI: the earlier turns and their answers come first; the earlier instructions do not
    assert _texts(stack.openai.requests[-1].body["messages"]) == [
        ("system", "Answer in French."), ("user", "My name is Ada"), ("assistant", "Echo: My name is Ada"),
        ("user", "What is my name?")]
    r3 = await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r2.id, input="Thanks")
    assert _texts(stack.openai.requests[-1].body["messages"]) == [
        ("user", "My name is Ada"), ("assistant", "Echo: My name is Ada"), ("user", "What is my name?"),
        ("assistant", "Echo: What is my name?"), ("user", "Thanks")]
    assert r3.output_text == "Echo: Thanks"


async def test_a_stored_response_is_retrieved_as_it_was_answered(stack) -> None:
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="Hello", max_output_tokens=40,
                                            metadata={"ticket": "T-1"})
    got = await stack.client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "Echo: Hello" and got.status == "completed"
    assert got.usage.total_tokens == r.usage.total_tokens and got.max_output_tokens == 40
    assert got.metadata == {"ticket": "T-1"} and got.model == r.model
    assert got.model_extra["x_router"] == {"trace_id": r.model_extra["x_router"]["trace_id"]}
    # the receipt is the trace: the stored response links to it
    stack.store.flush()
    assert stack.store.get(got.model_extra["x_router"]["trace_id"])["status"] == "ok"


async def test_input_items_list_every_turn_a_page_at_a_time(stack) -> None:
    r1 = await stack.client.responses.create(model="family:gpt-5.4-mini", input="one")
    r2 = await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r1.id,
                                             input=[{"role": "user", "content": "two"}])
    items = await stack.client.responses.input_items.list(r2.id)
    # newest first by default: this call's input, the first answer, the first input
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert [i.role for i in items.data] == ["user", "assistant", "user"]
    assert items.data[1].id == r1.output[0].id and items.has_more is False
    assert items.first_id == items.data[0].id and items.last_id == items.data[-1].id
    assert len({i.id for i in items.data}) == 3
    first = await stack.client.responses.input_items.list(r2.id, order="asc", limit=2)
    assert [i.role for i in first.data] == ["user", "assistant"] and first.has_more is True
    rest = await stack.client.responses.input_items.list(r2.id, order="asc", limit=2, after=first.last_id)
    assert [i.role for i in rest.data] == ["user"] and rest.has_more is False
    assert rest.data[0].content[0].text == "two"


async def test_a_deleted_response_is_gone_and_the_ones_after_it_keep_their_turns(stack) -> None:
    r1 = await stack.client.responses.create(model="family:gpt-5.4-mini", input="first")
    r2 = await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r1.id, input="second")
    assert await stack.client.responses.delete(r1.id) is None  # the SDK reads the 200 as done
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.retrieve(r1.id)
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.delete(r1.id)
    before = _sent(stack)
    with pytest.raises(openai.NotFoundError) as e:
        await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r1.id, input="x")
    assert e.value.body["code"] == "previous_response_not_found" and e.value.body["param"] == "$.previous_response_id"
    assert _sent(stack) == before  # refused before any provider was asked
    await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r2.id, input="third")
    assert [t for _, t in _texts(stack.openai.requests[-1].body["messages"])] == [
        "first", "Echo: first", "second", "Echo: second", "third"]


async def test_store_false_keeps_nothing(stack) -> None:
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="secret", store=False)
    assert r.store is False and r.output_text == "Echo: secret"
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r.id, input="x")
    assert stack.app.response_store.count() == 0


async def test_a_streamed_response_is_stored_before_its_last_event(stack) -> None:
    async with stack.client.responses.stream(model="family:gpt-5.4-mini", input="streamed") as st:
        async for ev in st:
            if ev.type == "response.completed":
                # the last event has not been read through yet, and the response is already kept
                kept = await stack.client.responses.retrieve(ev.response.id)
                assert kept.output_text == "Echo: streamed"
        final = await st.get_final_response()
    assert final.store is True
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=final.id, input="more")
    assert r.output_text == "Echo: more"
    assert [t for _, t in _texts(stack.openai.requests[-1].body["messages"])] == ["streamed", "Echo: streamed", "more"]


@pytest.mark.parametrize("family, wire", [("gpt-5.4-mini", "openai"), ("claude-haiku-4-5", "anthropic"),
                                          ("gemini-3-flash-preview", "gemini")])
async def test_a_tool_result_goes_on_from_the_call_it_answers(stack, family, wire) -> None:
    """The caller sends only the tool's output with previous_response_id: every wire's strict
    mock receives the call (from the stored response) and its result paired."""
    up = getattr(stack, wire)
    up.script(family, ReplyToolCall("get_weather", {"city": "Paris"}, id="call_w1" if wire != "gemini" else None))
    r1 = await stack.client.responses.create(model=f"family:{family}", input="Weather in Paris?", tools=[WEATHER],
                                             tool_choice="required")
    call = next(o for o in r1.output if o.type == "function_call")
    r2 = await stack.client.responses.create(model=f"family:{family}", previous_response_id=r1.id, tools=[WEATHER],
                                             input=[{"type": "function_call_output", "call_id": call.call_id,
                                                     "output": "18 C, sunny"}])
    assert r2.status == "completed" and r2.output_text
    if wire == "openai":
        msgs = up.requests[-1].body["messages"]
        assert msgs[1]["tool_calls"][0]["id"] == call.call_id
        assert msgs[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18 C, sunny"}


async def test_a_response_that_cannot_be_stored_is_still_answered(stack, monkeypatch) -> None:
    def full_disk(entry):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(stack.app.response_store, "put", full_disk)
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="Hello")
    assert r.output_text == "Echo: Hello" and r.store is False
    async with stack.client.responses.stream(model="family:gpt-5.4-mini", input="Hi") as st:
        async for _ in st:
            pass
        final = await st.get_final_response()
    assert final.output_text == "Echo: Hi" and final.store is False


@pytest.mark.parametrize("query, param", [("limit=0", "$.limit"), ("limit=101", "$.limit"), ("limit=x", "$.limit"),
                                          ("order=up", "$.order"), ("after=nope", "$.after")])
async def test_a_bad_input_items_query_is_a_400_at_its_path(stack, query, param) -> None:
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="x")
    status, out = await stack.get(f"/v1/responses/{r.id}/input_items?{query}")
    assert status == 400 and out["error"]["param"] == param, out


async def test_the_stored_paths_answer_only_their_methods_and_known_ids(stack) -> None:
    import aiohttp
    r = await stack.client.responses.create(model="family:gpt-5.4-mini", input="x")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{stack.base_url}/responses/{r.id}", data=b"{}") as resp:
            assert resp.status == 405 and resp.headers["allow"] == "HEAD, GET, DELETE"
        async with s.delete(f"{stack.base_url}/responses/{r.id}/input_items") as resp:
            assert resp.status == 405 and resp.headers["allow"] == "HEAD, GET"
        async with s.get(f"{stack.base_url}/responses/{r.id}?stream=true") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "$.stream"
        # a profile in the base URL (as the SDK is given it) reaches the same store
        async with s.get(f"{stack.base_url.removesuffix('/v1')}/default/v1/responses/{r.id}") as resp:
            assert resp.status == 200 and (await resp.json())["id"] == r.id
    status, out = await stack.get("/v1/responses/resp_nope")
    assert status == 404 and out["error"]["code"] == "not_found"


@pytest.mark.parametrize("body, param", [({"input": "x", "store": "yes"}, "$.store"),
                                         ({"input": "x", "previous_response_id": 3}, "$.previous_response_id"),
                                         ({"input": "x", "previous_response_id": ""}, "$.previous_response_id")])
async def test_a_malformed_store_or_previous_id_is_a_400(stack, body, param) -> None:
    before = _sent(stack)
    status, out = await stack.post("/v1/responses", body)
    assert status == 400 and out["error"]["param"] == param and out["error"]["code"] == "bad_parameter", out
    assert _sent(stack) == before


# ---- whose responses -------------------------------------------------------------------------

def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(params=["uvicorn", "granian"])
async def tenants(tmp_path, request):
    callers = {n: CallerSpec(n, frozenset({sha(f"key-{n}")})) for n in ("a", "b")}
    s = await start_stack(tmp_path, server=request.param, callers=callers,
                          caller_keys_sha256=frozenset({sha("operator")}))
    clients = {n: openai.AsyncOpenAI(base_url=s.base_url, api_key=f"key-{n}", max_retries=0) for n in ("a", "b")}
    clients["op"] = openai.AsyncOpenAI(base_url=s.base_url, api_key="operator", max_retries=0)
    yield s, clients
    for c in clients.values():
        await c.close()
    await s.close()


async def test_a_named_caller_reaches_only_its_own_responses(tenants) -> None:
    s, c = tenants
    mine = await c["a"].responses.create(model="family:gpt-5.4-mini", input="a's secret")
    for attempt in (c["b"].responses.retrieve(mine.id), c["b"].responses.input_items.list(mine.id),
                    c["b"].responses.delete(mine.id),
                    c["b"].responses.create(model="family:gpt-5.4-mini", previous_response_id=mine.id, input="x")):
        with pytest.raises(openai.NotFoundError) as e:
            await attempt
        assert "a's secret" not in e.value.response.text
    assert (await c["a"].responses.retrieve(mine.id)).output_text == "Echo: a's secret"
    assert (await c["op"].responses.retrieve(mine.id)).id == mine.id  # the operator's key reads every one
    ops = await c["op"].responses.create(model="family:gpt-5.4-mini", input="the operator's")
    with pytest.raises(openai.NotFoundError):
        await c["a"].responses.retrieve(ops.id)
    await c["a"].responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await c["op"].responses.retrieve(mine.id)


async def test_an_operator_can_turn_storing_off(tmp_path) -> None:
    s = await start_stack(tmp_path, store_responses=False)
    try:
        r = await s.client.responses.create(model="family:gpt-5.4-mini", input="x")
        assert r.store is False and r.output_text == "Echo: x"
        with pytest.raises(openai.BadRequestError) as e:
            await s.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r.id, input="y")
        assert e.value.body["code"] == "unsupported_parameter" and "store_responses" in e.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            await s.client.responses.retrieve(r.id)
        assert not (tmp_path / "responses.sqlite3").exists()
    finally:
        await s.close()


# ---- the store alone -------------------------------------------------------------------------

def _entry(rid: str, *, caller: str | None = None, at_ms: int | None = None) -> StoredResponse:
    return StoredResponse(rid, rid.removeprefix("resp_"), caller, int(time.time() * 1000) if at_ms is None else at_ms,
                          None, {"id": rid, "output": [{"type": "message", "id": f"msg_{rid}", "role": "assistant",
                                                        "content": [{"type": "output_text", "text": "hi"}]}]},
                          [{"type": "message", "id": f"in_{rid}", "role": "user", "content": "hello"}])


def test_a_stored_response_survives_a_restart(tmp_path) -> None:
    first = ResponseStore(tmp_path / "r.sqlite3")
    first.put(_entry("resp_1", caller="a"))
    first.close()
    again = ResponseStore(tmp_path / "r.sqlite3")
    got = again.get("resp_1", "a")
    assert got is not None and got.caller == "a" and got.conversation() == [
        {"type": "message", "id": "in_resp_1", "role": "user", "content": "hello"},
        {"type": "message", "id": "msg_resp_1", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}]
    assert again.get("resp_1", "b") is None and again.get("resp_1") is not None
    assert again.delete("resp_1", "b") is False and again.delete("resp_1", "a") is True
    assert again.get("resp_1") is None


def test_an_expired_response_is_not_read_and_is_purged(tmp_path) -> None:
    old = int(time.time() * 1000) - 31 * 86_400_000
    kept = ResponseStore(tmp_path / "kept.sqlite3", retention_days=None)  # kept for ever: nothing purges
    kept.put(_entry("resp_old", at_ms=old))
    assert kept.get("resp_old") is not None and kept.count() == 1
    kept.close()
    store = ResponseStore(tmp_path / "kept.sqlite3", retention_days=30)  # the same rows, kept 30 days
    assert store.get("resp_old") is None  # past retention: not read, purged or not
    store.put(_entry("resp_new"))  # a write purges what is past retention
    assert store.count() == 1 and store.get("resp_new") is not None
    store.put(_entry("resp_old2", at_ms=old))
    assert store.purge(older_than_ms=int(time.time() * 1000) - 30 * 86_400_000) == 1
    assert store.count() == 1


def test_pages_of_items() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    assert page(items, limit=2, order="asc", after=None) == ([{"id": "i0"}, {"id": "i1"}], True)
    assert page(items, limit=2, order="asc", after="i3") == ([{"id": "i4"}], False)
    assert page(items, limit=10, order="desc", after="i2") == ([{"id": "i1"}, {"id": "i0"}], False)
    assert page(items, limit=2, order="desc", after="i0") == ([], False)
    assert page(items, limit=2, order="asc", after="zz") is None


def test_a_stored_conversation_is_read_back_as_the_chat_it_was() -> None:
    """What a stored response's items become (no server): its input, its answer and its tool
    call, in order, each a chat message the wires already speak."""
    from unhardcoded.server.responses import to_chat
    history = [{"type": "message", "id": "in_1", "role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
               {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
               {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "get_weather",
                "arguments": json.dumps({"city": "Paris"}), "status": "completed"}]
    chat = to_chat({"input": [{"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
                    "instructions": "Be brief."}, history)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]


async def test_hostile_ids_are_404s_never_500s(stack) -> None:
    import aiohttp
    async with aiohttp.ClientSession() as s:
        for rid in ("%00", "%ff%fe", "x" * 60_000, "resp_%2F..%2F..", "%27%20OR%201%3D1"):
            for method in ("GET", "DELETE"):
                async with s.request(method, f"{stack.base_url}/responses/{rid}") as resp:
                    assert resp.status in (404, 414, 431), (method, rid[:20], resp.status)
            async with s.get(f"{stack.base_url}/responses/{rid}/input_items?limit=5&after=%00") as resp:
                assert resp.status in (404, 414, 431), (rid[:20], resp.status)
    for prev in ("\u0000", "x" * 1_000_000, "' OR 1=1 --"):
        status, out = await stack.post("/v1/responses", {"input": "x", "previous_response_id": prev})
        assert status == 404 and out["error"]["code"] == "previous_response_not_found"
        assert len(out["error"]["message"]) < 300  # a long id is not echoed whole


async def test_a_caller_over_its_limits_is_refused_before_the_store_is_read(tmp_path) -> None:
    callers = {"a": CallerSpec("a", frozenset({sha("key-a")}), requests_per_minute=2),
               "c": CallerSpec("c", frozenset({sha("key-c")}), max_concurrent_requests=1)}
    s = await start_stack(tmp_path, callers=callers)
    reads = []
    real_get = s.app.response_store.get
    s.app.response_store.get = lambda *a: reads.append(a) or real_get(*a)
    a = openai.AsyncOpenAI(base_url=s.base_url, api_key="key-a", max_retries=0)
    c = openai.AsyncOpenAI(base_url=s.base_url, api_key="key-c", max_retries=0)
    try:
        first = await a.responses.create(model="family:gpt-5.4-mini", input="one")
        await a.responses.create(model="family:gpt-5.4-mini", input="two", previous_response_id=first.id)
        assert len(reads) == 1
        with pytest.raises(openai.RateLimitError):
            await a.responses.create(model="family:gpt-5.4-mini", input="three", previous_response_id=first.id)
        assert len(reads) == 1  # refused by the limit: no lookup made
        # a previous id not found is a 404 that gives the caller's place in flight back
        for _ in range(3):
            with pytest.raises(openai.NotFoundError):
                await c.responses.create(model="family:gpt-5.4-mini", input="x", previous_response_id="resp_nope")
        assert (await c.responses.create(model="family:gpt-5.4-mini", input="fine")).output_text == "Echo: fine"
    finally:
        await a.close()
        await c.close()
        await s.close()
