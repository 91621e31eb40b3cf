"""``POST /v1/compact``: an agent's conversation with its aged middle sealed into one summary.

The router keeps no conversation: the caller sends its whole message list and gets it back
with the turns between its frozen head and its recent tail replaced by one system message, a
summary written by a model the router picks (by default the cheapest route the caller may
use; the body's ``policy_ir`` or ``model`` choose otherwise). The head and the tail come
back byte for byte as they were sent, so a provider's prompt cache over the head stays warm.

* The **frozen head** is the leading run of system and developer messages. A summary sealed
  earlier is a system message right after it, so it is part of the head the next time: every
  compaction appends, none rewrites what an earlier one sealed.
* The **recent tail** is the last ``keep_recent`` messages. Where it would begin with tool
  results, it begins instead at the assistant message whose tool calls they answer: a result is
  never kept without its call, and no message is dropped unsummarised.
* Nothing to seal (the tail reaches the head) is an answer without a call:
  ``{"messages": <as sent>, "compacted": false}``.

The summary is an ordinary routed call: the caller's limits count it, its FailPlan fails it
over, it is traced (with the body's ``session``), and its ``usage`` and ``x_router`` come back
with the answer. When it ends without a summary (every route failed, or an empty answer) the
messages come back as sent with ``compacted: false`` and a ``reason``, as the reference host
answers; a malformed body is a 400 with the JSON path of the fault.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..lang.errors import format_path
from ..lang.errors import LangError
from .app import SESSION_HEADER, App, HTTPError, _header, lang_error, validate_chat_body

DEFAULT_KEEP_RECENT = 6
DEFAULT_MAX_TOKENS = 512
SEAL_HEADER = "[Summary of the earlier conversation]"
DEFAULT_INSTRUCTIONS = (
    "You condense a conversation so that an agent can continue it without the original. From the "
    "transcript you are given, write a dense, factual summary: the goal, the decisions taken and "
    "why, what was found or produced, what is still open, and every identifier, file path, number, "
    "name and value a later turn may need. Plain text, no preamble.")
# The cheapest route the caller may use that its requirements allow and no operator disabled:
# a summary is side work, not the agent's main model.
CHEAPEST_POLICY: list[Any] = [
    "policy",
    ["and", ["meets_req"], ["not", ["is", "disabled"]]],
    ["neg", ["normalize", ["field", "price_in"]]],
    ["argmax"], ["id"], ["always", {"action": "next_candidate"}],
]
_KEYS = ("messages", "keep_recent", "max_tokens", "policy_ir", "model", "session", "instructions")
_HEAD_ROLES = ("system", "developer")
_RESULT_ROLES = ("tool", "function")


def _bad(path: str, message: str, code: str = "bad_parameter") -> HTTPError:
    return HTTPError(400, code, message, path)


def read_request(body: Any) -> dict[str, Any]:
    """The body checked, with its defaults: a 400 at the first fault."""
    if not isinstance(body, dict):
        raise _bad("$", "the request body is a JSON object", "bad_request_body")
    for key in body:
        if key not in _KEYS:
            raise _bad(format_path([key]), f"unknown field {key[:64]!r}: /v1/compact "
                       f"reads {', '.join(_KEYS)}", "unsupported_parameter")
    validate_chat_body({k: body[k] for k in ("messages", "model", "max_tokens", "session") if k in body})
    keep = body.get("keep_recent", DEFAULT_KEEP_RECENT)
    if keep is None:
        keep = DEFAULT_KEEP_RECENT
    if type(keep) is not int or keep < 1:
        raise _bad("$.keep_recent", "keep_recent is an integer of at least 1")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    instructions = body.get("instructions")
    if instructions is not None and (type(instructions) is not str or not instructions.strip()):
        raise _bad("$.instructions", "instructions is a non-empty string")
    model = body.get("model")
    if model is not None and type(model) is not str:
        raise _bad("$.model", "model is a string", "bad_model")
    if isinstance(model, str) and model.strip().startswith("flow:"):
        raise _bad("$.model", "a summary is one call, not a flow", "unsupported_parameter")
    return {"messages": body["messages"], "keep_recent": keep, "max_tokens": max_tokens,
            "policy_ir": body.get("policy_ir"), "model": model, "session": body.get("session"),
            "instructions": instructions}


def split(messages: list[Mapping[str, Any]], keep: int) -> tuple[int, int] | None:
    """Where the frozen head ends and the recent tail begins, or None when there is nothing
    between them to seal."""
    head = 0
    while head < len(messages) and messages[head].get("role") in _HEAD_ROLES:
        head += 1
    cut = len(messages) - keep
    while head < cut < len(messages) and messages[cut].get("role") in _RESULT_ROLES:
        cut -= 1  # a tool result stays with the assistant message that called for it
    return (head, cut) if cut > head else None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if type(content) is str:
        return content
    out = []
    for part in content:
        kind = part.get("type")
        value = part.get("text", part.get("refusal"))
        out.append(value if type(value) is str else f"[{kind}]")  # an image, audio, a file: named only
    return " ".join(out)


def transcript(messages: list[Mapping[str, Any]]) -> str:
    """The aged turns as plain text for the summarizer: who said what, which tools were called
    with which arguments, and what each returned."""
    lines = []
    for m in messages:
        role = m.get("role")
        if role in _RESULT_ROLES:
            label = f"tool result ({m.get('tool_call_id') or m.get('name') or 'unnamed'})"
        else:
            label = f"{role} ({m['name']})" if type(m.get("name")) is str else str(role)
        parts = [_text(m.get("content"))] if m.get("content") is not None else []
        calls = m.get("tool_calls")
        for call in calls if type(calls) is list else ():
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                parts.append(f"[calls {fn.get('name')}({fn.get('arguments', '')}) id={call.get('id')}]")
        legacy = m.get("function_call")
        if type(legacy) is dict:
            parts.append(f"[calls {legacy.get('name')}({legacy.get('arguments', '')})]")
        lines.append(f"{label}: {' '.join(p for p in parts if p)}")
    return "\n\n".join(lines)


def summary_request(req: Mapping[str, Any], aged: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The chat body of the summarizing call."""
    chat: dict[str, Any] = {"messages": [
        {"role": "system", "content": req["instructions"] or DEFAULT_INSTRUCTIONS},
        {"role": "user", "content": transcript(aged)}]}
    if req["model"]:
        chat["model"] = req["model"]
    if req["policy_ir"] is not None or not req["model"]:
        chat["policy_ir"] = req["policy_ir"] if req["policy_ir"] is not None else CHEAPEST_POLICY
    if req["max_tokens"] is not None:
        chat["max_tokens"] = req["max_tokens"]
    if req["session"] is not None:
        chat["session"] = req["session"]
    return chat


async def _no_send(message: Any) -> None:  # a whole answer: _routed sends nothing itself
    return None


def install(app: App) -> None:
    async def compact(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        app.session_from_header(body, _header(scope, SESSION_HEADER.encode()))
        req = read_request(body)
        if req["policy_ir"] is not None:  # refused whether or not there is anything to seal
            try:
                app.router.compiler.compile(req["policy_ir"], path=("policy_ir",))
            except LangError as exc:
                raise lang_error(exc) from None
        messages = req["messages"]
        at = split(messages, req["keep_recent"])
        if at is None:
            return 200, {"messages": messages, "compacted": False}
        head, cut = at
        chat = summary_request(req, messages[head:cut])
        caller = app.admit_caller()
        try:
            completion = await app._routed(chat, None, _no_send, _no_stream)
        except HTTPError as err:
            if err.type != "router_error":
                raise  # the policy refused at admission, a bad model string: the caller's fault
            return 200, {"messages": messages, "compacted": False,
                         "reason": {"code": err.code, "message": err.message}, **err.extra}
        finally:
            if caller is not None:
                app.router.limits.release(caller)
        assert completion is not None
        choices = completion.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        summary = content.strip() if type(content) is str else ""
        out: dict[str, Any] = {"messages": messages, "compacted": False}
        if summary:
            sealed = {"role": "system", "content": f"{SEAL_HEADER}\n{summary}"}
            out = {"messages": [*messages[:head], sealed, *messages[cut:]], "compacted": True, "sealed": cut - head}
        else:
            out["reason"] = {"code": "empty_summary", "message": "the summarizing call answered no text"}
        if completion.get("usage"):
            out["usage"] = completion["usage"]
        out["x_router"] = completion.get("x_router")
        return 200, out

    app.extra_routes[("POST", "/v1/compact")] = compact


async def _no_stream(stream: Any, send: Any) -> None:  # pragma: no cover - the body never streams
    raise RuntimeError("a summary is never streamed")


__all__ = ["CHEAPEST_POLICY", "DEFAULT_INSTRUCTIONS", "SEAL_HEADER", "install", "read_request", "split",
           "summary_request", "transcript"]
