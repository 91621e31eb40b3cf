"""Flows end to end: a DAG of routed calls over strict mock providers, via the OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unhardcoded.lang.flow import admit_flow
from unhardcoded.testing.upstreams import Delay, Fail, Reply, Stall
from unhardcoded.traces.replay import replay_record

from . import strategies as S
from .harness import NEXT, policy, start_stack

MSG = [{"role": "user", "content": "Where is my refund?"}]


def on(family: str) -> list:
    return policy(["family_eq", family])


def llm(system: str, inputs: list[str], family: str, **kw) -> dict:
    return {"kind": "llm", "system": system, "policy": on(family), "inputs": inputs, **kw}


@pytest.fixture
async def stack(tmp_path):
    s = await start_stack(tmp_path)
    yield s
    await s.close()


def xr(resp) -> dict:
    return resp.model_extra["x_router"]


async def test_independent_nodes_run_concurrently(stack) -> None:
    flow = ["flow", {
        "u": {"kind": "input"},
        "a": llm("Draft A.", ["u"], "gpt-5.5"),
        "b": llm("Draft B.", ["u"], "claude-haiku-4-5"),
        "s": llm("Synthesize.", ["a", "b"], "gemini-3-flash-preview", template="A: $1\nB: $2"),
        "out": {"kind": "output", "inputs": ["s"]},
    }]
    stack.openai.script("gpt-5.5", Delay(400), Reply("draft from A"))
    stack.anthropic.script("claude-haiku-4-5", Delay(400), Reply("draft from B"))
    stack.gemini.script("gemini-3-flash-preview", Reply("the synthesis"))
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    x = xr(r)
    assert r.choices[0].message.content == "the synthesis"
    assert x["provider"] == "flow" and x["model_family"].startswith("flow:")
    nodes = {n["node"]: n for n in x["flow_nodes"]}
    # both drafts started before either finished: they overlapped
    a, b = nodes["a"], nodes["b"]
    assert a["started_ms"] < b["started_ms"] + b["latency_ms"] and b["started_ms"] < a["started_ms"] + a["latency_ms"]
    # the synthesis node got both drafts through its template, in input order
    sent = stack.gemini.requests[-1].body
    user_turn = sent["contents"][-1]["parts"][0]["text"]
    assert user_turn == "A: draft from A\nB: draft from B"
    assert [n["node"] for n in x["flow_nodes"]][-1] == "s"
    assert x["runs"] == 1


async def test_one_input_passes_through_and_several_become_sections(stack) -> None:
    flow = ["flow", {
        "u": {"kind": "input"},
        "a": llm("A", ["u"], "gpt-5.5"),
        "b": llm("B", ["u", "a"], "claude-haiku-4-5"),
        "out": {"kind": "output", "inputs": ["b"]},
    }]
    stack.openai.script("gpt-5.5", Reply("first"))
    await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    assert stack.openai.requests[-1].body["messages"][-1]["content"] == "Where is my refund?"
    assert stack.openai.requests[-1].body["messages"][0] == {"role": "system", "content": "A"}
    an = stack.anthropic.requests[-1].body
    assert an["system"] == "B" or an["system"][0]["text"] == "B"
    last = an["messages"][-1]["content"]
    text = last if isinstance(last, str) else last[0]["text"]
    assert text == "[input 1]\nWhere is my refund?\n\n[input 2]\nfirst"


async def test_per_node_failover(stack) -> None:
    pol = policy(["or", ["family_eq", "gpt-5.5"], ["family_eq", "claude-haiku-4-5"]], ["lit", 0],
                 ["chain", [{"provider": "oa", "model": "gpt-5.5"}, {"provider": "an", "model": "claude-haiku-4-5"}]])
    flow = ["flow", {"u": {"kind": "input"},
                     "a": {"kind": "llm", "system": "A", "policy": pol, "inputs": ["u"]},
                     "out": {"kind": "output", "inputs": ["a"]}}]
    stack.openai.script("gpt-5.5", Fail(503))
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    node = xr(r)["flow_nodes"][0]
    path = node["decision_trace"]["decision_path"]
    assert [(e["provider_id"], e.get("error_kind")) for e in path] == [("oa", "server_error"), ("an", None)]
    assert node["provider"] == "an"


async def test_a_guard_abort_ends_the_flow_with_its_reason(stack) -> None:
    flow = ["flow", {"u": {"kind": "input"},
                     "d": llm("Draft.", ["u"], "gpt-5.5"),
                     "g": llm("Check.", ["d"], "claude-haiku-4-5", guard={}),
                     "out": {"kind": "output", "inputs": ["g"]}}]
    stack.openai.script("gpt-5.5", Reply("We will refund you 5000 USD today."))
    stack.anthropic.script("claude-haiku-4-5", Reply("ABORT: promises a refund above the 100 USD limit"))
    with pytest.raises(openai.UnprocessableEntityError) as e:
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    body = e.value.response.json()
    assert body["error"]["code"] == "flow_aborted"
    assert body["error"]["message"] == "promises a refund above the 100 USD limit"
    assert body["x_router"]["failed_node"] == "g" and body["x_router"]["status"] == "aborted"


async def test_a_passing_guard_forwards_the_draft(stack) -> None:
    flow = ["flow", {"u": {"kind": "input"},
                     "d": llm("Draft.", ["u"], "gpt-5.5"),
                     "g": llm("Check.", ["d"], "claude-haiku-4-5", guard={}),
                     "out": {"kind": "output", "inputs": ["g"]}}]
    stack.openai.script("gpt-5.5", Reply("Your refund of 20 USD is on its way."))
    stack.anthropic.script("claude-haiku-4-5", Reply("PASS"))
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    assert r.choices[0].message.content == "Your refund of 20 USD is on its way."


async def test_a_failing_node_fails_the_flow_and_cancels_running_nodes(stack) -> None:
    flow = ["flow", {"u": {"kind": "input"},
                     "slow": llm("Slow.", ["u"], "gpt-5.5"),
                     "bad": llm("Bad.", ["u"], "claude-haiku-4-5"),
                     "s": llm("S.", ["slow", "bad"], "gemini-3-flash-preview"),
                     "out": {"kind": "output", "inputs": ["s"]}}]
    stack.openai.script("gpt-5.5", Stall())
    stack.anthropic.script("claude-haiku-4-5", Delay(50), Fail(500, "exploded"))
    t0 = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as e:
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    assert time.perf_counter() - t0 < 5  # the stalled node was cancelled, not waited for
    body = e.value.response.json()
    assert e.value.status_code == 502
    assert "'bad'" in body["error"]["message"]
    nodes = {n["node"]: n for n in body["x_router"]["flow_nodes"]}
    assert nodes["bad"]["status"] == "failed"
    assert nodes["bad"]["decision_trace"]["decision_path"][0]["error_kind"] == "server_error"
    assert nodes["slow"]["status"] == "cancelled"
    assert "s" not in nodes and stack.gemini.requests == []
    stack.store.flush()
    rows, _ = stack.store.list(status="error")
    rec = stack.store.get(rows[0]["trace_id"])
    assert rec["kind"] == "flow" and rec["flow"]["failed_node"] == "bad"
    assert {n["node"]: n["status"] for n in rec["flow"]["nodes"]} == {"bad": "failed", "slow": "cancelled"}


async def test_registered_flow_by_name_and_models_list(stack) -> None:
    # two-drafts ships with the router; in this catalog its policies pick our mock models
    r = await stack.client.chat.completions.create(model="flow:two-drafts", messages=MSG)
    x = xr(r)
    assert x["flow_name"] == "two-drafts" and len(x["flow_nodes"]) == 3
    assert r.model == "flow:two-drafts"
    with pytest.raises(openai.NotFoundError) as e:
        await stack.client.chat.completions.create(model="flow:nope", messages=MSG)
    assert e.value.body["code"] == "unknown_flow"


async def test_support_triage_example_runs(stack) -> None:
    stack.anthropic.script("claude-haiku-4-5", Reply("PASS"))
    r = await stack.client.chat.completions.create(model="flow:support-triage", messages=MSG)
    x = xr(r)
    assert [n["node"] for n in x["flow_nodes"]] == ["triage", "draft", "guard"]
    assert x["status"] == "ok"


async def test_flow_ir_takes_precedence_over_policy_ir(stack) -> None:
    flow = ["flow", {"u": {"kind": "input"}, "a": llm("A", ["u"], "gpt-5.5"), "out": {"kind": "output", "inputs": ["a"]}}]
    r = await stack.client.chat.completions.create(model="", messages=MSG,
                                                   extra_body={"flow_ir": flow, "policy_ir": on("claude-haiku-4-5")})
    assert xr(r)["provider"] == "flow" and stack.anthropic.requests == []


async def test_streaming_delivers_the_output(stack) -> None:
    stack.openai.script("gpt-5.5", Reply("streamed flow answer"))
    flow = ["flow", {"u": {"kind": "input"}, "a": llm("A", ["u"], "gpt-5.5"), "out": {"kind": "output", "inputs": ["a"]}}]
    stream = await stack.client.chat.completions.create(model="", messages=MSG, stream=True,
                                                        extra_body={"flow_ir": flow})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed flow answer"
    assert chunks[-1].model_extra["x_router"]["provider"] == "flow"
    assert chunks[-1].usage.completion_tokens > 0


async def test_runs_count_per_started_block_of_five(stack) -> None:
    def chain(n: int) -> list:
        nodes = {"u": {"kind": "input"}}
        prev = "u"
        for i in range(n):
            nodes[f"x{i}"] = llm(f"step {i}", [prev], "gpt-5.5")
            prev = f"x{i}"
        nodes["out"] = {"kind": "output", "inputs": [prev]}
        return ["flow", nodes]
    for n, runs in ((5, 1), (6, 2)):
        r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": chain(n)})
        assert xr(r)["runs"] == runs
    stack.store.flush()
    rows, _ = stack.store.list()
    assert {stack.store.get(r["trace_id"])["flow"]["runs"] for r in rows} == {1, 2}


async def test_plan_dry_runs_every_node_without_calls(stack) -> None:
    status, body = await stack.post("/x/flow/plan", {"flow": "two-drafts"})
    assert status == 200
    assert [n["node"] for n in body["nodes"]] == ["concise", "rigorous", "synthesis"]
    assert all(n["pick"] is not None for n in body["nodes"])
    assert stack.openai.requests == [] and stack.anthropic.requests == [] and stack.gemini.requests == []


@pytest.mark.parametrize("flow,code", [
    (["flow", {"u": {"kind": "input"}, "a": {"kind": "llm", "system": "x", "policy": on("gpt-5.5"), "inputs": ["u", "b"]},
               "b": {"kind": "llm", "system": "y", "policy": on("gpt-5.5"), "inputs": ["a"]},
               "o": {"kind": "output", "inputs": ["b"]}}], "flow_cycle"),
    (["flow", {"u": {"kind": "input"}, "a": {"kind": "llm", "system": "x", "policy": on("gpt-5.5"), "inputs": ["u"]},
               "z": {"kind": "llm", "system": "y", "policy": on("gpt-5.5"), "inputs": ["u"]},
               "o": {"kind": "output", "inputs": ["a"]}}], "flow_orphan"),
    (["flow", {"u": {"kind": "input"}, "v": {"kind": "input"}, "o": {"kind": "output", "inputs": ["u"]}}],
     "flow_endpoints"),
    (["flow", {"u": {"kind": "input"}, "o": {"kind": "output", "inputs": ["u"]},
               **{f"n{i}": {"kind": "llm", "system": "s", "policy": on("gpt-5.5"), "inputs": ["u"]} for i in range(300)}}],
     "flow_too_large"),
])
async def test_admission_rejections_over_http(stack, flow, code) -> None:
    status, body = await stack.post("/v1/chat/completions", {"messages": MSG, "flow_ir": flow})
    assert status == 400 and body["error"]["code"] == "invalid_flow"
    assert body["admission"]["code"] == code
    assert body["error"]["param"].startswith("$.flow_ir")


async def test_replay_reproduces_every_node(stack) -> None:
    flow = ["flow", {"u": {"kind": "input"}, "a": llm("A", ["u"], "gpt-5.5"),
                     "b": llm("B", ["u"], "claude-haiku-4-5"),
                     "s": llm("S", ["a", "b"], "gemini-3-flash-preview"), "out": {"kind": "output", "inputs": ["s"]}}]
    r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
    stack.store.flush()
    rec = stack.store.get(xr(r)["trace_id"])
    out = replay_record(rec, stack.store.catalog_snapshot(rec["catalog"]["digest"]))
    assert out["identical"] and len(out["nodes"]) == 3 and all(n["identical"] for n in out["nodes"])
    status, body = await stack.post("/x/replay", {"trace_id": xr(r)["trace_id"]})
    assert status == 200 and body["identical"] is True


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_generated_dags_run_and_every_llm_node_runs_once(tmp_path_factory, data) -> None:
    flow = data.draw(S.flow(max_llm=5))
    nodes = flow[1]
    for n in nodes.values():
        if n["kind"] == "llm":
            n["policy"] = on("gpt-5.5")
    s = await start_stack(tmp_path_factory.mktemp("dag"))
    try:
        r = await s.client.chat.completions.create(model="", messages=MSG, extra_body={"flow_ir": flow})
        x = xr(r)
        n_llm = sum(1 for n in nodes.values() if n["kind"] == "llm")
        assert len(x["flow_nodes"]) == n_llm == len(s.openai.requests)
        # every node ran after all of its inputs had finished
        done = {n["node"]: n["started_ms"] + n["latency_ms"] for n in x["flow_nodes"]}
        for n in x["flow_nodes"]:
            for pre in n["inputs"]:
                if pre in done:
                    assert done[pre] <= n["started_ms"] + 1e-6
        normal = admit_flow(flow)
        assert x["flow_identity"] == normal.identity
    finally:
        await s.close()


async def test_operator_flow_files_are_registered_and_bad_ones_refused(tmp_path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    good = {"name": "echo-twice", "description": "one step",
            "flow_ir": ["flow", {"u": {"kind": "input"}, "a": llm("Repeat.", ["u"], "gpt-5.5"),
                                 "o": {"kind": "output", "inputs": ["a"]}}]}
    (flows / "echo.json").write_text(json.dumps(good))
    s = await start_stack(tmp_path / "ok", flows_dir=str(flows))
    try:
        r = await s.client.chat.completions.create(model="flow:echo-twice", messages=MSG)
        assert xr(r)["flow_name"] == "echo-twice"
        assert "flow:echo-twice" in {m.id for m in (await s.client.models.list()).data}
    finally:
        await s.close()
    bad = dict(good, flow_ir=["flow", {"u": {"kind": "input"}, "o": {"kind": "output", "inputs": ["zz"]}}])
    (flows / "bad.json").write_text(json.dumps(bad))
    from unhardcoded.flows.registry import FlowRegistryError
    with pytest.raises(FlowRegistryError) as e:
        await start_stack(tmp_path / "bad", flows_dir=str(flows))
    assert e.value.code == "unknown_input" and "bad.json" in e.value.message
