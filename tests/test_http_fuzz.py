"""Hostile input over HTTP: whatever is sent, the answer is a JSON 4xx (or a routed answer), never a 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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
                                    "tools": json_values}).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"messages": json_values}).map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture(scope="module")
def stack_box(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("fuzz")}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=bodies, path=st.sampled_from(["/v1/chat/completions", "/default/v1/chat/completions", "/x/rank",
                                          "/x/policy/normalize", "/x/flow/normalize", "/x/flow/plan", "/x/replay",
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
