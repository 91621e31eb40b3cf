"""Hostile input over HTTP: whatever is sent, the answer is a JSON 4xx (or a routed answer), never a 500."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from . import strategies as S
from .harness import start_stack

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)

bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.fixed_dictionaries({"messages": st.just([{"role": "user", "content": "x"}])},
                          optional={"policy_ir": json_values | S.any_term(), "flow_ir": json_values,
                                    "model": json_values | st.sampled_from(["profile:", "pin:x", "flow:", "policy:"]),
                                    "requirements": json_values, "seed": json_values, "stream": json_values,
                                    "tools": json_values, "tool_choice": json_values,
                                    "response_format": json_values, "stop": json_values,
                                    "logprobs": json_values, "top_logprobs": json_values, "logit_bias": json_values,
                                    }).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"messages": json_values}).map(lambda d: json.dumps(d).encode()),
    # a Responses request's fields, for /v1/responses
    st.fixed_dictionaries({"input": json_values | st.just([{"role": "user", "content": "x"}])},
                          optional={"instructions": json_values, "tools": json_values, "tool_choice": json_values,
                                    "text": json_values, "max_output_tokens": json_values, "reasoning": json_values,
                                    "previous_response_id": json_values, "store": json_values, "stream": json_values,
                                    "model": json_values}).map(lambda d: json.dumps(d).encode()),
    # a backtest's, for /x/backtest
    st.fixed_dictionaries({"policy_ir": json_values | S.any_term()},
                          optional={"over": json_values, "since": json_values, "until": json_values,
                                    "limit": json_values, "cursor": json_values, "samples": json_values,
                                    "route": json_values, "caller": json_values}).map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture(scope="module")
def stack_box(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("fuzz")}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=bodies, path=st.sampled_from(["/v1/chat/completions", "/default/v1/chat/completions", "/x/rank",
                                          "/v1/responses", "/default/v1/responses",
                                          "/x/policy/normalize", "/x/policy/build", "/x/flow/normalize", "/x/flow/plan", "/x/replay", "/x/backtest",
                                          "/x/policy/templates/cheapest-family", "/x/policy/templates/smart-value",
                                          "/x/policy/templates/%00%2F..%2Fx"]))
@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_never_a_500(stack_box, server, raw, path) -> None:
    s = await start_stack(stack_box["dir"], server=server)
    try:
        status, body = await s.post(path, raw=raw)
    finally:
        await s.close()
    assert status < 500 or status in (502, 503, 504), (status, body)
    assert isinstance(body, dict), body
    if status >= 400:
        err = body["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str)
        assert err["type"] in ("invalid_request_error", "router_error", "authentication_error")


def _cursor(ms: int) -> str:
    """A cursor that decodes, with any time in it."""
    return base64.urlsafe_b64encode(f"{ms}:tr_x".encode()).decode()


_times = st.one_of(st.sampled_from([2 ** 63, -(2 ** 63) - 1, 10 ** 30, 2 ** 63 - 1, -(2 ** 63)]),
                   st.integers(-2 ** 80, 2 ** 80))  # SQLite binds 64 bits; the edges, and past them
_trace_queries = st.dictionaries(
    st.sampled_from(["since", "until", "limit", "cursor", "policy", "route", "model", "provider", "status", "session",
                     "caller", "x"]),
    st.one_of(_times.map(str), _times.map(_cursor), st.text(max_size=12),
              st.binary(max_size=12).map(lambda b: b.decode("latin-1"))),
    max_size=4)
_rank_queries = st.dictionaries(st.sampled_from(["profile", "context", "y"]),
                                st.one_of(_times.map(str), st.text(max_size=10), st.sampled_from(["default", ""])),
                                max_size=3)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=_trace_queries, trace_id=st.text(min_size=1, max_size=12), rank=_rank_queries)
@example(query={"since": str(10 ** 30)}, trace_id="x", rank={})
@example(query={"until": str(-(2 ** 63) - 1), "limit": "5"}, trace_id="x", rank={"context": str(10 ** 30)})
@example(query={"cursor": _cursor(2 ** 64)}, trace_id="x", rank={"profile": "nope"})
async def test_the_get_endpoints_never_a_500_whatever_the_query(stack_box, query, trace_id, rank) -> None:
    """GET /x/traces with any query (times past what SQLite binds, cursors that decode to them,
    bytes that are not UTF-8), GET /x/traces/{id} with any id and GET /x/rank with any profile and
    context: an answer or a 4xx in the OpenAI error shape, never a 500."""
    from urllib.parse import quote, urlencode
    s = await start_stack(stack_box["dir"])
    try:
        status, body = await s.get("/x/traces?" + urlencode(query))
        one, missing = await s.get("/x/traces/" + quote(trace_id, safe=""))
        grouped, totals = await s.get("/x/sessions/" + quote(trace_id, safe=""))
        mine, usage = await s.get("/x/caller?" + urlencode(query))  # no named callers here: a 404
        ranked, answer = await s.get("/x/rank?" + urlencode(rank))
        used, report = await s.get("/v1/usage?" + urlencode({("window" if k == "cursor" else k): v
                                                               for k, v in query.items()}))
    finally:
        await s.close()
    assert ranked == 200 or (400 <= ranked < 500 and answer["error"]["type"] == "invalid_request_error"), \
        (ranked, answer)
    assert status in (200, 400), (status, body)
    if status == 200:
        assert body["object"] == "list" and isinstance(body["data"], list)
    else:
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] in ("bad_parameter",
                                                                                               "bad_cursor")
    assert one in (200, 404), (one, missing)
    assert grouped in (200, 404), (grouped, totals)
    assert mine == 404 and usage["error"]["code"] == "no_caller", (mine, usage)
    assert used in (200, 400), (used, report)
    if used == 200:
        assert report["object"] == "usage" and report["totals"]["requests"] >= 0
    else:
        assert report["error"]["type"] == "invalid_request_error" and report["error"]["param"].startswith("$.")
