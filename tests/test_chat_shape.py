"""The chat body's shape check, without a server: any value of a checked parameter is either
accepted or refused with a 400 whose path points into the body that was sent."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from unhardcoded.server.app import HTTPError, validate_chat_body

MSG = [{"role": "user", "content": "x"}]

_leaf = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(
    ["", "f", "function", "custom", "allowed_tools", "auto", "none", "required", "json_schema", "json_object", "text"])
_keys = st.sampled_from(["type", "function", "custom", "name", "parameters", "strict", "description",
                         "allowed_tools", "mode", "tools", "json_schema", "schema"])
values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
                      max_leaves=16)

_STEP = re.compile(r"\.([A-Za-z_]+)|\[(\d+)\]")


def _resolve(doc, path: str):
    """Follow ``path`` ($.a[0].b) into ``doc``; the last step may name what is missing."""
    assert path.startswith("$")
    steps = _STEP.findall(path[1:])
    assert "".join(f".{k}" if k else f"[{i}]" for k, i in steps) == path[1:], path
    node = doc
    for n, (key, idx) in enumerate(steps):
        last = n == len(steps) - 1
        if key:
            assert isinstance(node, dict) and (key in node or last), (path, node)
            node = node.get(key)
        else:
            assert isinstance(node, list) and int(idx) < len(node), (path, node)
            node = node[int(idx)]
    return node


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(["tools", "tool_choice", "response_format", "stop", "logprobs", "top_logprobs",
                            "logit_bias"]), value=values,
       tools=st.sampled_from([None, [{"type": "function", "function": {"name": "f"}}]]))
def test_a_checked_parameter_is_accepted_or_refused_at_a_path_inside_it(key, value, tools) -> None:
    body = {"messages": MSG, key: value}
    if tools is not None and key != "tools":
        body["tools"] = tools
    try:
        validate_chat_body(body)
    except HTTPError as e:
        assert e.status == 400 and e.code == "bad_parameter"
        assert e.param.startswith(f"$.{key}") or e.param == "$.tools", e.param
        _resolve(body, e.param)
        assert key in e.message or "tool_choice" in e.message


@pytest.mark.parametrize("body", [
    {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": "required"},
    {"messages": MSG, "tools": [{"type": "custom", "custom": {"name": "g", "description": "free text"}}],
     "tool_choice": {"type": "custom", "custom": {"name": "g"}}},
    {"messages": MSG, "response_format": {"type": "json_object"}, "stop": None, "tool_choice": None},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
                                                     "tool_calls": [{"id": "c", "type": "function"}]}]},
])
def test_well_formed_bodies_pass(body) -> None:
    validate_chat_body(body)


_items = st.one_of(
    values,
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"])},
                          optional={"content": values | st.lists(st.fixed_dictionaries(
                              {"type": st.sampled_from(["input_text", "input_image", "output_text", "input_file"])},
                              optional={"text": values, "image_url": values, "file_id": values}), max_size=2),
                              "type": st.sampled_from(["message", "reasoning", "item_reference"])}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "function_call_output", "custom_tool_call"])},
                          optional={"call_id": values, "name": values, "arguments": values, "output": values,
                                    "input": values}),
)


@settings(max_examples=400, deadline=None)
@given(body=st.fixed_dictionaries({"input": st.one_of(st.text(max_size=3), st.lists(_items, max_size=4), values)},
                                  optional={"instructions": values, "tools": values, "tool_choice": values,
                                            "text": values, "max_output_tokens": values, "reasoning": values}))
def test_a_responses_request_is_refused_at_a_path_in_it_or_read_as_a_well_formed_chat(body) -> None:
    """Whatever a Responses request holds, it is refused with a 400 at a path inside it, or
    read as a chat body whose messages the chat check accepts (a later refusal names a
    parameter, never a message the caller did not write)."""
    from unhardcoded.server.responses import to_chat
    try:
        chat = to_chat(body)
    except HTTPError as e:
        assert e.status == 400
        _resolve(body, e.param)
        return
    try:
        validate_chat_body(chat)
    except HTTPError as e:
        assert e.status == 400 and not e.param.startswith(("$.messages", "$.tools")), (e.param, e.message, chat)


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": 1}, "$.logprobs"),
    ({"top_logprobs": 3}, "$.top_logprobs"),                       # without logprobs: true
    ({"logprobs": False, "top_logprobs": 3}, "$.top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "$.top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "$.top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.0}, "$.top_logprobs"),
    ({"logit_bias": [1]}, "$.logit_bias"),
    ({"logit_bias": {"50256": 101}}, '$.logit_bias["50256"]'),
    ({"logit_bias": {"50256": True}}, '$.logit_bias["50256"]'),
    ({"logit_bias": {"the": -5}}, "$.logit_bias.the"),
])
def test_logprobs_and_logit_bias_are_checked(extra, param) -> None:
    with pytest.raises(HTTPError) as e:
        validate_chat_body({"messages": MSG, **extra})
    assert e.value.status == 400 and e.value.code == "bad_parameter" and e.value.param == param


@pytest.mark.parametrize("extra", [{"logprobs": True}, {"logprobs": True, "top_logprobs": 0},
                                   {"logprobs": False}, {"logit_bias": {}}, {"logit_bias": {"50256": -100}},
                                   {"logit_bias": {"1": 2.5}}])
def test_well_formed_logprobs_and_logit_bias_pass(extra) -> None:
    validate_chat_body({"messages": MSG, **extra})
