"""OpenAI's Responses API (``POST /v1/responses``), served by the chat path.

A Responses request is read into a chat body (:func:`to_chat`), routed exactly like a chat
call (same policy, FailPlan, trace), and its answer written back as a ``response`` object
(:func:`from_chat`) or, streamed, as the Responses event sequence, translated chunk by chunk
as the provider sends them (:class:`ResponsesStream`): not a finished answer replayed.

A response is stored (``traces/responses.py``) unless the request says ``store: false`` or the
operator turned storing off; ``previous_response_id`` goes on from a stored one: its input
items and output come before the new input (its ``instructions`` do not, as on OpenAI).

What a router cannot offer is refused with a 400 and the JSON path in the caller's body,
never dropped: OpenAI's hosted tools (web search, file search, code interpreter, computer
use, MCP, shell), OpenAI's conversation objects (``conversation``: send the conversation in
``input`` or go on with ``previous_response_id``), background runs and file inputs.
"""

from __future__ import annotations

from typing import Any, Mapping

from .app import HTTPError

# Passed to the chat body as they are (the router's own fields, and the chat parameters that
# have the same name and meaning in both APIs).
_SAME = ("model", "temperature", "top_p", "parallel_tool_calls", "user", "policy_ir", "requirements",
         "session", "timeout_ms", "first_token_timeout_ms", "seed", "service_tier", "prompt_cache_key",
         "safety_identifier", "stream")
# Anything else (include, truncation, metadata, stream_options, ...) concerns OpenAI's own
# presentation of a response: accepted, echoed where the response object has it, not sent on
# (a chat endpoint refuses some of them, metadata without store for one). ``store`` and
# ``previous_response_id`` are the server's (App.responses).
_REFUSED = {
    "conversation": "conversation objects are not kept here: send the conversation in input, or go on "
                    "from a stored response with previous_response_id",
    "background": "background responses are not run here",
    "flow_ir": "a flow is sent to /v1/chat/completions",
}
_HOSTED_TOOLS = {"web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview",
                 "computer_use", "image_generation", "mcp", "local_shell", "shell", "apply_patch"}
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


def _bad(path: str, message: str, code: str = "bad_parameter") -> HTTPError:
    return HTTPError(400, code, message, path)


def check_request(body: Any) -> None:
    """What is read of a Responses request before its conversation is: the body is an object,
    nothing refused is asked for, ``store`` and ``previous_response_id`` are well formed."""
    if not isinstance(body, dict):
        raise _bad("$", "the request body is a JSON object", "bad_request_body")
    if body.get("store") is not None and type(body["store"]) is not bool:
        raise _bad("$.store", "store is a boolean")
    prev = body.get("previous_response_id")
    if prev is not None and (type(prev) is not str or not prev):
        raise _bad("$.previous_response_id", "previous_response_id is the id of a stored response")


def to_chat(body: Any, history: list[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A Responses request as the chat body the router runs; a 400 at the first fault.
    ``history``: the items of the stored response it goes on from (``StoredResponse.conversation``),
    read before its own input."""
    check_request(body)
    for key, why in _REFUSED.items():
        if body.get(key) not in (None, False):
            raise _bad(f"$.{key}", f"{key}: {why}", "unsupported_parameter")
    model = body.get("model")
    if isinstance(model, str) and model.startswith("flow:"):
        raise _bad("$.model", "a flow is sent to /v1/chat/completions", "unsupported_parameter")
    out: dict[str, Any] = {k: body[k] for k in _SAME if k in body}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if type(instructions) is not str:
            raise _bad("$.instructions", "instructions is a string")
        messages.append({"role": "system", "content": instructions})
    if history:
        _messages(history, "$.previous_response_id", messages)
    _messages(body.get("input"), "$.input", messages)
    if not any(m["role"] != "system" for m in messages):
        raise _bad("$.input", "input holds no message to answer", "bad_messages")
    out["messages"] = messages
    limit = body.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise _bad("$.max_output_tokens", "max_output_tokens is an integer of at least 1")
        out["max_tokens"] = limit
    if body.get("tools") is not None:
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _object(body, "text").get("format")
    if fmt is not None:
        out["response_format"] = _format(fmt)
    effort = _object(body, "reasoning").get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is not None and type(value) is not dict:
        raise _bad(f"$.{key}", f"{key} is an object")
    return value or {}


def _messages(items: Any, where: str, out: list[dict[str, Any]]) -> None:
    """Append the chat messages of Responses ``items`` (at ``where`` in the request) to ``out``."""
    if items is None:
        raise _bad(where, "input is a string or a list of items", "bad_messages")
    if type(items) is str:
        out.append({"role": "user", "content": items})
        return
    if type(items) is not list or not items:
        raise _bad(where, "input is a string or a non-empty list of items", "bad_messages")
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if type(item) is not dict:
            raise _bad(at, "an input item is an object", "bad_messages")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(f"{at}.role", "role is user, system, developer or assistant", "bad_messages")
            out.append({"role": role, "content": _content(item.get("content"), f"{at}.content")})
        elif kind in ("function_call", "custom_tool_call"):
            name, call_id = item.get("name"), item.get("call_id")
            if type(name) is not str or not name:
                raise _bad(f"{at}.name", "name is a non-empty string", "bad_messages")
            if type(call_id) is not str or not call_id:
                raise _bad(f"{at}.call_id", "call_id is a non-empty string", "bad_messages")
            if kind == "function_call":
                args = item.get("arguments", "")
                if type(args) is not str:
                    raise _bad(f"{at}.arguments", "arguments is a string (JSON text)", "bad_messages")
                call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args or "{}"}}
            else:
                given = item.get("input", "")
                if type(given) is not str:
                    raise _bad(f"{at}.input", "input is a string", "bad_messages")
                call = {"id": call_id, "type": "custom", "custom": {"name": name, "input": given}}
            prev = out[-1] if out else None
            if prev is not None and prev["role"] == "assistant":
                prev.setdefault("tool_calls", []).append(call)  # one assistant turn: its text, then its calls
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if type(call_id) is not str or not call_id:
                raise _bad(f"{at}.call_id", "call_id is a non-empty string", "bad_messages")
            output = item.get("output")
            text = output if type(output) is str else _text_of(output, f"{at}.output")
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # a model's own reasoning summary: not something another model reads back
        else:
            raise _bad(f"{at}.type", f"input items of type {kind!r} are not served here (message, function_call, "
                       "function_call_output, custom_tool_call, custom_tool_call_output, reasoning are)",
                       "unsupported_parameter")


def input_items(body: Mapping[str, Any], trace_id: str) -> list[dict[str, Any]]:
    """The request's own input as stored items, as OpenAI lists them: a string input is one user
    message, a message's string content one text part; each has an ``id`` (the caller's own
    where it gave one)."""
    given = body.get("input")
    if type(given) is str:
        given = [{"type": "message", "role": "user", "content": given}]
    out = []
    for i, item in enumerate(given or ()):
        item = dict(item)
        if "type" not in item:
            item["type"] = "message"
        if item["type"] == "message" and type(item.get("content")) is str:
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if type(item.get("id")) is not str or not item["id"]:
            item["id"] = f"in_{trace_id}_{i}"
        out.append(item)
    return out


def _content(content: Any, at: str) -> Any:
    if type(content) is str:
        return content
    if type(content) is not list:
        raise _bad(at, "content is a string or a list of parts", "bad_messages")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{at}[{j}]"
        kind = part.get("type") if type(part) is dict else None
        if kind in _TEXT_PARTS:
            text = part.get("text", part.get("refusal"))
            if type(text) is not str:
                raise _bad(f"{where}.text", "text is a string", "bad_messages")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if type(url) is not str or not url:
                raise _bad(f"{where}.image_url", "image_url is a URL or a data: URL (file_id is not served here)",
                           "unsupported_parameter" if part.get("file_id") else "bad_messages")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif type(part) is not dict:
            raise _bad(where, "a content part is an object with a type", "bad_messages")
        else:
            raise _bad(f"{where}.type", f"content parts of type {kind!r} are not served here (input_text, "
                       "output_text, input_image are)", "unsupported_parameter")
    return parts


def _text_of(value: Any, at: str) -> str:
    """A tool output given as parts: its text parts, joined."""
    if type(value) is not list:
        raise _bad(at, "output is a string or a list of text parts", "bad_messages")
    texts = []
    for j, part in enumerate(value):
        if type(part) is not dict or part.get("type") not in _TEXT_PARTS or type(part.get("text")) is not str:
            raise _bad(f"{at}[{j}]", "a tool output part is a text part", "bad_messages")
        texts.append(part["text"])
    return "".join(texts)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if type(tools) is not list:
        raise _bad("$.tools", "tools is a list")
    out = []
    for i, tool in enumerate(tools):
        at = f"$.tools[{i}]"
        kind = tool.get("type") if type(tool) is dict else None
        if type(tool) is not dict:
            raise _bad(at, "a tool is an object")
        if kind in _HOSTED_TOOLS or (type(kind) is str and kind.startswith(("web_search", "computer_use"))):
            raise _bad(f"{at}.type", f"{kind!r} is a tool OpenAI runs itself; a router offers function and "
                       "custom tools only", "unsupported_tool")
        if kind not in ("function", "custom"):
            raise _bad(f"{at}.type", "is 'function' or 'custom'")
        name = tool.get("name")
        if type(name) is not str or not name:
            raise _bad(f"{at}.name", "name is a non-empty string")
        for key, kinds, what in (("description", str, "a string"), ("parameters", dict, "a JSON Schema object"),
                                 ("strict", bool, "a boolean")):
            if tool.get(key) is not None and type(tool[key]) is not kinds:
                raise _bad(f"{at}.{key}", f"{key} is {what}")
        spec = {k: tool[k] for k in ("name", "description", "parameters", "strict", "format") if tool.get(k) is not None}
        if kind == "function":
            spec.pop("format", None)
        else:
            spec.pop("parameters", None)
            spec.pop("strict", None)
        out.append({"type": kind, kind: spec})
    return out


def _tool_choice(choice: Any) -> Any:
    if type(choice) is str:
        return choice  # none / auto / required; the chat check refuses anything else
    if type(choice) is not dict:
        raise _bad("$.tool_choice", "tool_choice is 'none', 'auto', 'required' or an object")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        if type(name) is not str or not name:
            raise _bad("$.tool_choice.name", "name is a non-empty string")
        return {"type": kind, kind: {"name": name}}
    if kind == "allowed_tools":
        tools = choice.get("tools")
        if type(tools) is not list:
            raise _bad("$.tool_choice.tools", "tools is a list")
        named = [{"type": "function", "function": {"name": t.get("name")}} for t in tools
                 if type(t) is dict and t.get("type") == "function"]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode"), "tools": named}}
    raise _bad("$.tool_choice.type", "is 'function', 'custom' or 'allowed_tools'")


def _format(fmt: Any) -> dict[str, Any]:
    if type(fmt) is not dict:
        raise _bad("$.text.format", "format is an object")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        name = fmt.get("name")
        if type(name) is not str or not name:
            raise _bad("$.text.format.name", "name is a non-empty string")
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("$.text.format.type", "is 'text', 'json_object' or 'json_schema'")


# ---- the answer -------------------------------------------------------------------------------

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    ptd = usage.get("prompt_tokens_details") or {}
    ctd = usage.get("completion_tokens_details") or {}
    return {"input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": ptd.get("cached_tokens", 0)},
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": ctd.get("reasoning_tokens", 0)},
            "total_tokens": usage.get("total_tokens", 0)}


def _echo(body: Mapping[str, Any], stored: bool) -> dict[str, Any]:
    """What a response object repeats of its request (``store``: whether it is stored)."""
    return {"instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"), "store": stored,
            "metadata": body.get("metadata") or {}, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"), "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p"),
            "text": body.get("text") or {"format": {"type": "text"}}}


def _response(rid: str, created: int, model: str, status: str, output: list, body: Mapping[str, Any], *,
              stored: bool = False, usage: Any = None, incomplete: str | None = None, error: Any = None
              ) -> dict[str, Any]:
    out = {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
           "output": output, "error": error,
           "incomplete_details": None if incomplete is None else {"reason": incomplete}, **_echo(body, stored)}
    if usage is not None:
        out["usage"] = usage
    return out


def _call_item(call: Mapping[str, Any], item_id: str) -> dict[str, Any]:
    if call.get("type") == "custom":
        c = call.get("custom") or {}
        return {"type": "custom_tool_call", "id": item_id, "call_id": call.get("id"), "name": c.get("name"),
                "input": c.get("input", ""), "status": "completed"}
    fn = call.get("function") or {}
    return {"type": "function_call", "id": item_id, "call_id": call.get("id"), "name": fn.get("name"),
            "arguments": fn.get("arguments") or "", "status": "completed"}


def from_chat(completion: Mapping[str, Any], body: Mapping[str, Any], stored: bool = False) -> dict[str, Any]:
    """A routed chat.completion as the ``response`` object of the Responses request ``body``
    (``stored``: it is kept, so ``store`` says true)."""
    x = completion.get("x_router") or {}
    tid = x.get("trace_id") or completion.get("id", "")
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    text = msg.get("content")
    if text or msg.get("refusal"):
        part = {"type": "output_text", "text": text, "annotations": []} if text else \
            {"type": "refusal", "refusal": msg["refusal"]}
        output.append({"type": "message", "id": f"msg_{tid}", "role": "assistant", "status": "completed",
                       "content": [part]})
    for i, call in enumerate(msg.get("tool_calls") or []):
        output.append(_call_item(call, f"fc_{tid}_{i}"))
    reason = _INCOMPLETE.get(choice.get("finish_reason"))
    out = _response(f"resp_{tid}", completion.get("created", 0), completion.get("model", ""),
                    "incomplete" if reason else "completed", output, body, stored=stored,
                    usage=_usage(completion.get("usage")), incomplete=reason)
    out["x_router"] = x
    return out


class ResponsesStream:
    """The chat stream's chunks as Responses events, as they come.

    ``start()`` gives ``response.created`` and ``response.in_progress``; ``feed(chunk)`` the
    events one chat chunk makes (a message's first text opens its item and content part, each
    tool call its own item); ``feed`` of the router's last chunk (usage and ``x_router``) closes
    every open item and ends with ``response.completed`` (``incomplete`` after a cut-off for
    length); an error event ends it with ``response.failed``. ``final`` is then the finished
    response object (None until then, and after a failure)."""

    def __init__(self, body: Mapping[str, Any], created: int, model: str, stored: bool = False) -> None:
        self.body = body
        self.stored = stored
        self.final: dict[str, Any] | None = None
        self.created = created
        self.model = model
        self.rid = ""
        self.seq = 0
        self.items: list[dict[str, Any]] = []      # output items in order, as they are so far
        self.text_item: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self.finish: str | None = None

    def _ev(self, kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        ev = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return kind, ev

    def start(self, trace_id: str) -> list[tuple[str, dict[str, Any]]]:
        self.rid = f"resp_{trace_id}"
        self.tid = trace_id
        snap = _response(self.rid, self.created, self.model, "in_progress", [], self.body, stored=self.stored)
        return [self._ev("response.created", response=snap), self._ev("response.in_progress", response=snap)]

    def feed(self, chunk: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if "error" in chunk and "choices" not in chunk:
            return self._close_items() + [self._ev("response.failed", response=self._snapshot(
                "failed", error={"code": chunk["error"].get("code"), "message": chunk["error"].get("message")}))]
        out: list[tuple[str, dict[str, Any]]] = []
        if chunk.get("model"):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if "x_router" in chunk:
            out += self._close_items()
            reason = _INCOMPLETE.get(self.finish or "")
            final = self._snapshot("incomplete" if reason else "completed", usage=_usage(chunk.get("usage")),
                                   incomplete=reason)
            final["x_router"] = chunk["x_router"]
            self.final = final
            out.append(self._ev("response.incomplete" if reason else "response.completed", response=final))
        return out

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return _response(self.rid, self.created, self.model, status, list(self.items), self.body,
                         stored=self.stored, **kw)

    def _text(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        item = self.text_item
        if item is None:
            item = self.text_item = {"type": "message", "id": f"msg_{self.tid}", "role": "assistant",
                                     "status": "in_progress", "content": []}
            index = len(self.items)
            self.items.append(item)
            out.append(self._ev("response.output_item.added", output_index=index, item={**item, "content": []}))
            item["content"].append({"type": "output_text", "text": "", "annotations": []})
            out.append(self._ev("response.content_part.added", item_id=item["id"], output_index=index,
                                content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        item["content"][0]["text"] += text
        out.append(self._ev("response.output_text.delta", item_id=item["id"], output_index=self.items.index(item),
                            content_index=0, delta=text, logprobs=[]))
        return out

    def _call(self, call: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out = []
        idx = call.get("index", 0)
        item = self.calls.get(idx)
        custom = call.get("type") == "custom" or "custom" in call or (item is not None and item["type"] != "function_call")
        fn = (call.get("custom") if custom else call.get("function")) or {}
        field = "input" if custom else "arguments"
        if item is None:
            item = self.calls[idx] = {"type": "custom_tool_call" if custom else "function_call",
                                      "id": f"fc_{self.tid}_{idx}", "call_id": call.get("id"),
                                      "name": fn.get("name") or "", field: "", "status": "in_progress"}
            self.items.append(item)
            out.append(self._ev("response.output_item.added", output_index=len(self.items) - 1, item=dict(item)))
        elif fn.get("name"):
            item["name"] += fn["name"]
        more = fn.get(field)
        if more:
            item[field] += more
            kind = "response.custom_tool_call_input.delta" if custom else "response.function_call_arguments.delta"
            out.append(self._ev(kind, item_id=item["id"], output_index=self.items.index(item), delta=more))
        return out

    def _close_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for index, item in enumerate(self.items):
            if item["status"] != "in_progress":
                continue
            item["status"] = "completed"
            if item["type"] == "message":
                part = item["content"][0]
                out.append(self._ev("response.output_text.done", item_id=item["id"], output_index=index,
                                    content_index=0, text=part["text"], logprobs=[]))
                out.append(self._ev("response.content_part.done", item_id=item["id"], output_index=index,
                                    content_index=0, part=part))
            elif item["type"] == "custom_tool_call":
                out.append(self._ev("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                                    input=item["input"]))
            else:
                out.append(self._ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                    name=item["name"], arguments=item["arguments"]))
            out.append(self._ev("response.output_item.done", output_index=index, item=item))
        return out
