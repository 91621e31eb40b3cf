"""The HTTP surface: a small ASGI application, nothing but routing and encoding.

Every error is an OpenAI-shaped body ``{"error": {"message", "type", "code",
"param"}}`` with a 4xx/5xx status; ``param`` carries the JSONPath of the
fault when there is one. A request that cannot be served never produces a
traceback: unexpected exceptions become a 500 ``internal_error`` with a trace
id, and are logged without request content or keys.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
import logging
import math
import re
import time
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qs, unquote

import orjson

from ..catalog import templates
from ..lang import strictjson
from ..lang.errors import LangError, format_path
from ..router.contract import RequestError
from ..router.engine import Router, RouterFailure
from ..runtime.limits import CURRENT_CALLER, LIMIT_HEADERS, LimitExceeded

log = logging.getLogger("unhardcoded.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
TEMPLATE_PREFIX = "/x/policy/templates/"
MODELS_PREFIX = "/v1/models/"
RESPONSES_SUFFIX = "/responses"
# a stored response, with or without a profile before /v1 (the SDK's base URL may carry one)
STORED_RESPONSE = re.compile(r"(?:/[^/]+)?/v1/responses/([^/]+)(/input_items)?")
SESSION_HEADER = "x-unhardcoded-session"  # the session for clients that cannot add a body field
_SESSION_MAX = 256
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_CONTENT_REQUIRED = frozenset({"system", "developer", "user", "tool"})
# typed chat parameters, checked where present; the counts must be at least 1
_TYPED: dict[str, Any] = {"stream": bool, "temperature": (int, float), "top_p": (int, float), "max_tokens": int,
                          "max_completion_tokens": int, "n": int, "tools": list, "logprobs": bool,
                          "top_logprobs": int, "logit_bias": dict}
_COUNTS = frozenset({"max_tokens", "max_completion_tokens", "n"})


def sse_headers() -> list[tuple[bytes, bytes]]:
    """A stream's headers, with a limited caller's ``x-ratelimit-*`` when its call was admitted."""
    limits = LIMIT_HEADERS.get()
    return _SSE_HEADERS if limits is None else [*_SSE_HEADERS, *limits]


def _json_default(o: Any) -> Any:
    from decimal import Decimal
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(type(o).__name__)


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN and infinities are written null (JSON has no such numbers)."""
    try:
        return orjson.dumps(obj, default=_json_default)
    except TypeError:  # e.g. a key that is not a string: the slow, forgiving path
        return json.dumps(_clean(obj), separators=(",", ":"), ensure_ascii=False, default=_json_default,
                          allow_nan=False).encode("utf-8")


def _clean(o: Any) -> Any:
    """JSON has no NaN or infinity; such numbers are written null."""
    if isinstance(o, orjson.Fragment):  # JSON written earlier by orjson: read it back for the slow path
        return orjson.loads(orjson.dumps(o))
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


@dataclass(frozen=True, slots=True)
class Text:
    """A handler's answer that is not JSON: its content type and bytes."""

    content_type: str
    body: bytes


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", extra: Mapping[str, Any] | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.type = status, code, message, param, type_
        self.extra = extra or {}
        self.headers = headers or []

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        out: dict[str, Any] = {"error": err}
        out.update(self.extra)
        return out


def lang_error(exc: LangError, status: int = 400) -> HTTPError:
    if exc.kind == "invalid_policy":
        msg = f"policy_ir rejected at admission: {exc.message} (at {exc.path})"
        return HTTPError(status, "invalid_policy", msg, exc.path, extra={"admission": exc.to_dict()})
    if exc.kind == "invalid_flow":
        msg = f"flow_ir rejected at admission: {exc.message} (at {exc.path})"
        return HTTPError(status, "invalid_flow", msg, exc.path, extra={"admission": exc.to_dict()})
    if isinstance(exc, RequestError):
        return HTTPError(exc.status, exc.code, exc.message, exc.path)
    return HTTPError(status, exc.code, f"{exc.message} (at {exc.path})", exc.path)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def validate_chat_body(body: Any) -> None:
    """The shape every chat request must have, with the path of the first fault."""
    if not isinstance(body, dict):
        raise HTTPError(400, "bad_request_body", "the request body is a JSON object", "$")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise HTTPError(400, "bad_messages", "messages is a non-empty list", "$.messages")
    for i, m in enumerate(msgs):
        if type(m) is not dict:
            raise HTTPError(400, "bad_messages", "each message is an object", f"$.messages[{i}]")
        if m.get("role") not in _ROLES:
            raise HTTPError(400, "bad_messages", f"role must be one of {', '.join(sorted(_ROLES))}",
                            f"$.messages[{i}].role")
        c = m.get("content")
        if type(c) is str:
            continue
        if c is None:
            if m["role"] in _CONTENT_REQUIRED:  # only an assistant's turn may have none (a tool call)
                raise HTTPError(400, "bad_messages", f"a {m['role']} message has content (a string or a "
                                "list of parts)", f"$.messages[{i}].content")
            continue
        if type(c) is not list:
            raise HTTPError(400, "bad_messages", "content is a string, a list of parts, or null",
                            f"$.messages[{i}].content")
        for j, part in enumerate(c):
            if type(part) is not dict or type(part.get("type")) is not str:
                raise HTTPError(400, "bad_messages", "a content part is an object with a type",
                                f"$.messages[{i}].content[{j}]")
    for key, v in body.items():  # in the body's order: the first fault is reported
        if v is None:
            continue
        kinds = _TYPED.get(key)
        if kinds is not None:
            if not isinstance(v, kinds) or (kinds is not bool and isinstance(v, bool)):
                raise HTTPError(400, "bad_parameter", f"{key} has the wrong type", f"$.{key}")
            if key in _COUNTS and v < 1:
                raise HTTPError(400, "bad_parameter", f"{key} must be at least 1", f"$.{key}")
        shape = _SHAPED.get(key)
        if shape is not None:
            fault = shape(v)
            if fault is not None:
                where, what = fault
                raise HTTPError(400, "bad_parameter", f"{key}{where}: {what}", f"$.{key}{where}")
    session = body.get("session")
    if session is not None and (type(session) is not str or not 0 < len(session) <= _SESSION_MAX):
        raise HTTPError(400, "bad_session", f"session is a string of 1 to {_SESSION_MAX} characters", "$.session")
    top = body.get("top_logprobs")
    if top is not None:
        if not 0 <= top <= 20:
            raise HTTPError(400, "bad_parameter", "top_logprobs is from 0 to 20", "$.top_logprobs")
        if body.get("logprobs") is not True:
            raise HTTPError(400, "bad_parameter", "top_logprobs needs logprobs: true", "$.top_logprobs")
    for token, bias in (body.get("logit_bias") or {}).items():
        if not token.isdigit() or not isinstance(bias, (int, float)) or isinstance(bias, bool) \
                or not -100 <= bias <= 100:
            raise HTTPError(400, "bad_parameter", "logit_bias maps token ids to a bias from -100 to 100",
                            format_path(["logit_bias", token]))
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise HTTPError(400, "bad_parameter", "tool_choice is only allowed when tools are given", "$.tool_choice")


# The parameters whose shape is checked here, not left to the provider: the Anthropic and
# Gemini translations read only the parts they understand, so a malformed tool, tool choice or
# response format would otherwise be dropped without a word on those routes (and refused by
# OpenAI on its own). Each checker returns None, or (the path below the field, what is wrong).
# The shapes are OpenAI Chat Completions'; names are only required to be non-empty strings,
# since providers disagree on which characters they allow.

def _named(obj: Any, where: str) -> tuple[str, str] | None:
    if type(obj) is not dict:
        return where, "is an object"
    name = obj.get("name")
    if type(name) is not str or not name:
        return f"{where}.name", "is a non-empty string"
    return None


def _check_tools(tools: list) -> tuple[str, str] | None:
    for i, tool in enumerate(tools):
        at = f"[{i}]"
        if type(tool) is not dict:
            return at, "a tool is an object"
        kind = tool.get("type")
        if kind not in ("function", "custom"):
            return f"{at}.type", "is 'function' or 'custom'"
        fault = _named(tool.get(kind), f"{at}.{kind}")
        if fault is not None:
            return fault
        spec = tool[kind]
        if "description" in spec and type(spec["description"]) is not str:
            return f"{at}.{kind}.description", "is a string"
        if kind == "function":
            if spec.get("parameters") is not None and type(spec["parameters"]) is not dict:
                return f"{at}.function.parameters", "is a JSON Schema object"
            if spec.get("strict") is not None and type(spec["strict"]) is not bool:
                return f"{at}.function.strict", "is a boolean"
    return None


def _check_tool_choice(choice: Any) -> tuple[str, str] | None:
    if type(choice) is str:
        return None if choice in ("none", "auto", "required") else ("", "is 'none', 'auto', 'required' or an object")
    if type(choice) is not dict:
        return "", "is 'none', 'auto', 'required' or an object"
    kind = choice.get("type")
    if kind in ("function", "custom"):
        return _named(choice.get(kind), f".{kind}")
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if type(allowed) is not dict:
            return ".allowed_tools", "is an object"
        if allowed.get("mode") not in ("auto", "required"):
            return ".allowed_tools.mode", "is 'auto' or 'required'"
        if type(allowed.get("tools")) is not list:
            return ".allowed_tools.tools", "is a list of tools"
        return None
    return ".type", "is 'function', 'custom' or 'allowed_tools'"


def _check_response_format(rf: Any) -> tuple[str, str] | None:
    if type(rf) is not dict:
        return "", "is an object"
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return ".type", "is 'text', 'json_object' or 'json_schema'"
    if kind == "json_schema":
        fault = _named(rf.get("json_schema"), ".json_schema")
        if fault is not None:
            return fault
        if rf["json_schema"].get("schema") is not None and type(rf["json_schema"]["schema"]) is not dict:
            return ".json_schema.schema", "is a JSON Schema object"
    return None


def _check_stop(stop: Any) -> tuple[str, str] | None:
    if type(stop) is str:
        return None
    if type(stop) is not list:
        return "", "is a string or a list of strings"
    for i, s in enumerate(stop):
        if type(s) is not str:
            return f"[{i}]", "is a string"
    return None


_SHAPED: dict[str, Callable[[Any], tuple[str, str] | None]] = {
    "tools": _check_tools, "tool_choice": _check_tool_choice, "response_format": _check_response_format,
    "stop": _check_stop,
}


async def until_disconnect(work: Awaitable[None], disconnected: Callable[[], Awaitable[Any]]) -> None:
    """Run ``work``; if ``disconnected()`` returns first (the client went away), cancel the work
    (the run is recorded as such) and return quietly."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        await disconnected()
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await task
    except asyncio.CancelledError:
        if not watcher.done():
            raise
    finally:
        watcher.cancel()


class App:
    """ASGI application serving one :class:`Router`."""

    def __init__(self, router: Router, *, extra_routes: Mapping[tuple[str, str], Any] | None = None) -> None:
        self.router = router
        self.settings = router.settings
        self.extra_routes = dict(extra_routes or {})
        self.started = time.time()
        self.flows: Any = None
        self.registered_flows: Any = None
        self.response_store: Any = None  # traces/responses.py: what /v1/responses keeps (None: nothing)

    # ---- ASGI entry ---------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._dispatch(scope, receive, send)
        except Exception as exc:  # never a traceback to the caller
            status, payload, headers = self.error_response(exc, scope.get("method"), scope.get("path"))
            await self._send_json(send, status, payload, headers)

    def error_response(self, exc: Exception, method: Any, path: Any) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        """The answer for a request that raised: its HTTPError, or a 500 that names a log line.
        A request refused before routing is counted (a routed call that failed is a run, and
        counted as one)."""
        if isinstance(exc, HTTPError):
            if exc.type != "router_error":
                self.router.meter.refuse(exc.status, exc.code)
            return exc.status, exc.body(), exc.headers
        from ..traces.sqlstore import StoreUnavailable
        if isinstance(exc, StoreUnavailable):  # the database is down or refusing: logged where it was seen
            self.router.meter.refuse(503, "store_unavailable")
            return 503, {"error": {"message": "the router's database cannot be used now; try again shortly",
                                   "type": "server_error", "code": "store_unavailable", "param": None}}, \
                [(b"retry-after", b"5")]
        trace = f"err_{int(time.time() * 1000):x}"
        log.error("internal error %s on %s %s", trace, method, path, exc_info=exc)
        return 500, {"error": {"message": f"internal error ({trace})", "type": "server_error",
                               "code": "internal_error", "param": None}}, []

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                start = getattr(self.router.sink, "start", None)
                if start is not None:
                    res = start()
                    if hasattr(res, "__await__"):
                        await res
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.router.close()
                if self.response_store is not None:
                    self.response_store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method == "POST" and path.endswith("/chat/completions"):
            profile = self.chat_profile(path)
            self._auth(scope)
            body = await self._read_json(scope, receive)
            self.session_from_header(body, _header(scope, SESSION_HEADER.encode()))
            await self._until_disconnect(self.chat(body, profile, send), receive)
            return
        if method == "POST" and path.endswith(RESPONSES_SUFFIX):
            profile = self.chat_profile(path, RESPONSES_SUFFIX)
            self._auth(scope)
            body = await self._read_json(scope, receive)
            self.session_from_header(body, _header(scope, SESSION_HEADER.encode()))
            await self._until_disconnect(self.responses(body, profile, send), receive)
            return
        head = method == "HEAD"  # a GET without the body (load balancers' health checks send it)
        handler = self._route("GET" if head else method, path)
        if handler is None:
            allowed = [m for m in ("GET", "POST", "DELETE") if self._route(m, path) is not None]
            if allowed:
                allow = ", ".join(["HEAD", *allowed] if "GET" in allowed else allowed)
                raise HTTPError(405, "method_not_allowed", f"{path} answers {allow}, not {method}",
                                headers=[(b"allow", allow.encode())])
            raise HTTPError(404, "not_found", f"no route {method} {path}")
        if path != "/healthz":
            self._auth(scope)
        body = None
        if method == "POST":
            # a template without options may be asked for with no body at all
            body = await self._read_json(scope, receive, allow_empty=handler == self.policy_template_build)
        status, payload = await handler(scope, body)
        if isinstance(payload, Text):
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", payload.content_type.encode()), (b"content-length", str(len(payload.body)).encode())]})
            await send({"type": "http.response.body", "body": b"" if head else payload.body})
            return
        await self._send_json(send, status, payload, head=head)

    def _route(self, method: str, path: str) -> Any:
        """The handler for ``method path`` (the chat endpoint aside), or None."""
        handler = self.extra_routes.get((method, path))
        if handler is None:
            handler = {
                ("GET", "/healthz"): self.healthz,
                ("GET", "/metrics"): self.metrics,
                ("GET", "/v1/models"): self.models,
                ("GET", "/x/runtime"): self.runtime,
                ("GET", "/x/fields"): self.fields,
                ("POST", "/x/rank"): self.rank,
                ("GET", "/x/rank"): self.rank,
                ("POST", "/x/policy/normalize"): self.policy_normalize,
                ("POST", "/x/policy/build"): self.policy_build,
                ("POST", "/x/flow/normalize"): self.flow_normalize,
                ("GET", "/x/policy/templates"): self.policy_templates,
            }.get((method, path))
        if handler is None and method == "POST" and path.startswith(TEMPLATE_PREFIX):
            handler = self.policy_template_build
        if handler is None and method == "GET" and path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
            handler = self.model
        if handler is None and method in ("GET", "DELETE"):
            m = STORED_RESPONSE.fullmatch(path)
            if m is not None:
                handler = self.stored_response if m.group(2) is None else \
                    (self.stored_input_items if method == "GET" else None)
        for suffix, endpoint in (("/chat/completions", self.chat), (RESPONSES_SUFFIX, self.responses)):
            if handler is None and method == "POST" and path.endswith(suffix):
                try:
                    self.chat_profile(path, suffix)
                except HTTPError:
                    return None
                return endpoint  # only asked about for the 405 (a POST there is dispatched before)
        if handler is None:
            for (m, prefix), h in self.extra_routes.items():
                if m == method and prefix.endswith("/") and path.startswith(prefix):
                    handler = h
                    break
        return handler

    # ---- plumbing -------------------------------------------------------------
    async def _until_disconnect(self, work: Awaitable[None], receive: Receive) -> None:
        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        await until_disconnect(work, disconnected)

    @staticmethod
    def chat_profile(path: str, suffix: str = "/chat/completions") -> str | None:
        """``/v1/chat/completions`` → None; ``/{profile}/v1/chat/completions`` → the profile
        (the same for ``/v1/responses``)."""
        prefix = path[: -len(suffix)]
        if prefix == "/v1":
            return None
        if prefix.endswith("/v1") and prefix.count("/") == 2 and len(prefix) > 4:
            return prefix[1:-3]
        raise HTTPError(404, "not_found", f"no route {path}")

    @staticmethod
    def session_from_header(body: Any, value: str | None) -> None:
        """The ``X-Unhardcoded-Session`` header names the call's session where the body does
        not (as on the reference host); the body's own ``session`` wins. Either way the body's
        check (``validate_chat_body``) then holds it to one rule."""
        if value is not None and type(body) is dict and body.get("session") is None:
            body["session"] = value

    def _auth(self, scope: Scope) -> None:
        if not self.settings.keys_required:
            return
        presented = None
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                presented = v.decode("latin-1")
        self.check_caller(presented)

    def check_caller(self, authorization: str | None) -> None:
        """Refuse a request without a known caller key (when the operator set caller keys); a
        named caller's key makes it the request's caller (``CURRENT_CALLER``)."""
        if not self.settings.keys_required:
            return
        presented = None
        if authorization is not None and authorization.lower().startswith("bearer "):
            presented = authorization[7:].strip()
        ok, caller = self.settings.caller_of(presented)
        if not ok:
            raise HTTPError(401, "caller_auth", "missing or unknown caller key", type_="authentication_error")
        CURRENT_CALLER.set(caller)

    def admit_caller(self) -> str | None:
        """Count this call against its caller's limits, or refuse it with OpenAI's 429. Returns
        the named caller admitted (its call is in flight until ``limits.release``), or None."""
        caller = CURRENT_CALLER.get()
        if caller is None:
            return None
        try:
            self.router.limits.admit(caller)
        except LimitExceeded as over:
            wait = max(1, math.ceil(over.retry_after_s))
            headers = [(b"retry-after", str(wait).encode()),
                       *((k.encode(), v.encode()) for k, v in over.headers.items())]
            raise HTTPError(429, over.code, over.message, type_="insufficient_quota" if over.code ==
                            "insufficient_quota" else "rate_limit_error", headers=headers) from None
        self.router.share_budget(caller)
        return caller

    async def _read_json(self, scope: Scope, receive: Receive, allow_empty: bool = False) -> Any:
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.strip().isdigit():
                self.check_size(int(v))  # declared too large: refused before reading any of it
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise HTTPError(400, "client_disconnected", "the client went away")
            data = msg.get("body", b"")
            size += len(data)
            self.check_size(size)
            chunks.append(data)
            more = msg.get("more_body", False)
        return self.parse_body(b"".join(chunks), allow_empty)

    def check_size(self, size: int) -> None:
        """Refuse a body (or the part of it read so far) over the configured limit."""
        limit = self.settings.max_body_bytes
        if size > limit:
            raise HTTPError(413, "body_too_large", f"request body exceeds {limit} bytes")

    def parse_body(self, raw: bytes, allow_empty: bool = False) -> Any:
        """A request body as strict JSON, within the size limit."""
        self.check_size(len(raw))
        if not raw.strip():
            if allow_empty:
                return None
            raise HTTPError(400, "json_syntax", "the request body is empty; send a JSON object", "$")
        try:
            return strictjson.loads(raw)
        except LangError as exc:
            raise lang_error(exc) from None

    async def _send_json(self, send: Send, status: int, payload: Any,
                         headers: list[tuple[bytes, bytes]] | None = None, *, head: bool = False) -> None:
        body = dumps(payload)
        limits = LIMIT_HEADERS.get()
        if limits is not None:  # a limited caller's call: the answer says what is left of its limits
            headers = [*(headers or ()), *limits]
        respond = getattr(send, "respond", None)
        if respond is not None:  # the native RSGI path: one call, no ASGI messages
            if head:
                respond(status, body, headers, head=True)
            else:
                respond(status, body, headers)
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": b"" if head else body})

    # ---- chat -------------------------------------------------------------------
    async def chat(self, body: Any, profile: str | None, send: Send) -> None:
        validate_chat_body(body)
        caller = self.admit_caller()
        try:
            flows = getattr(self, "flows", None)
            if flows is not None and flows.wants(body):
                await flows.chat(body, send)
                return
            if body.get("flow_ir") is not None:
                raise HTTPError(400, "flows_unavailable", "this router runs no flows", "$.flow_ir")
            completion = await self._routed(body, profile, send, self._chat_stream)
            if completion is not None:
                await self._send_json(send, 200, completion)
        finally:
            if caller is not None:
                self.router.limits.release(caller)

    async def _routed(self, chat: Mapping[str, Any], profile: str | None, send: Send,
                      stream_out: Callable[[Any, Send], Awaitable[None]]) -> dict[str, Any] | None:
        """Route one chat body: streamed (``stream_out(stream, send)`` sends it; None), or whole
        (the completion). A policy refused or every route failed raises its HTTP error; a
        stream is closed and recorded however its sending ends."""
        try:
            if chat.get("stream"):
                stream = await self.router.open_stream(chat, path_profile=profile, wire=True)
                try:
                    await stream_out(stream, send)
                finally:
                    await stream.abandon()
                return None
            completion, _run = await self.router.complete(chat, path_profile=profile, wire=True)
            return completion
        except LangError as exc:
            raise lang_error(exc) from None
        except RouterFailure as failure:
            raise self._failure(failure) from None

    def _failure(self, failure: RouterFailure) -> HTTPError:
        run = failure.run
        lines = []
        for e in run.events:
            if e.get("event") == "attempted" and e.get("error_kind"):
                msg = (e.get("error_message") or "")[:120].replace('"', "'")
                lines.append(f'{e["provider_id"]}/{e["model_family"]}={e["error_kind"]}({e.get("http_status")}) "{msg}"')
        message = failure.message + ("" if not lines else ": " + "; ".join(lines))
        headers = []
        if failure.status in (429, 503):
            headers.append((b"retry-after", b"1"))
        return HTTPError(failure.status, failure.kind.removeprefix("exhausted: ") if failure.kind != "no_candidates"
                         else "no_candidates", message, type_="router_error",
                         extra={"x_router": run.x_router()}, headers=headers)

    async def _chat_stream(self, stream: Any, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers()})
        clean_end = False
        async for event in stream.events():
            await send({"type": "http.response.body", "body": b"data: " + dumps(event) + b"\n\n", "more_body": True})
            if "x_router" in event:
                clean_end = True
        tail = b"data: [DONE]\n\n" if clean_end else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def responses(self, body: Any, profile: str | None, send: Send) -> None:
        """``POST /v1/responses``: OpenAI's Responses API over the chat path (``responses.py``)."""
        from . import responses as api

        api.check_request(body)
        keep = self.response_store
        prev_id = body.get("previous_response_id")
        history = None
        if prev_id is None:
            chat = api.to_chat(body, None)
            validate_chat_body(chat)
        elif keep is None:
            raise HTTPError(400, "unsupported_parameter", "previous_response_id: this router stores no responses "
                            "(traces.store_responses = false): send the whole conversation in input",
                            "$.previous_response_id")
        # the caller's limits before the store is read: a call they refuse costs no lookup
        caller = self.admit_caller()
        try:
            if prev_id is not None:
                prev = await asyncio.to_thread(keep.get, prev_id, CURRENT_CALLER.get())  # type: ignore[union-attr]
                if prev is None:
                    raise HTTPError(404, "previous_response_not_found",
                                    f"Previous response with id {prev_id[:100]!r} not found.", "$.previous_response_id")
                history = prev.conversation()
                chat = api.to_chat(body, history)
                validate_chat_body(chat)
        except BaseException:
            if caller is not None:
                self.router.limits.release(caller)
            raise
        stored = keep is not None and body.get("store") is not False

        async def save(response: dict[str, Any]) -> None:
            """Store the finished response; if the store cannot (a full disk), the answer still
            goes out, saying ``store: false``: the call is made and paid for."""
            from ..traces.responses import StoredResponse
            tid = response["id"].removeprefix("resp_")
            kept = {k: v for k, v in response.items() if k != "x_router"}
            try:
                await asyncio.to_thread(keep.put, StoredResponse(  # type: ignore[union-attr]
                    response["id"], tid, CURRENT_CALLER.get(), int(time.time() * 1000), prev_id, kept,
                    [*(history or ()), *api.input_items(body, tid)]))
            except Exception as exc:  # sqlite3.Error, OSError: never the answer's loss
                log.error("could not store response %s: %s", response["id"], exc)
                response["store"] = False

        async def stream_out(stream: Any, send: Send) -> None:
            out = api.ResponsesStream(body, int(time.time()), stream.served, stored)
            await self._responses_stream(out, stream, send, save if stored else None)

        try:
            completion = await self._routed(chat, profile, send, stream_out)
            if completion is not None:
                response = api.from_chat(completion, body, stored)
                if stored:
                    await save(response)  # committed before the answer: the caller may go on from it at once
                await self._send_json(send, 200, response)
        finally:
            if caller is not None:
                self.router.limits.release(caller)

    async def _responses_stream(self, out: Any, stream: Any, send: Send,
                                save: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers()})

        def frames(events: list[tuple[str, Any]]) -> bytes:
            return b"".join(b"event: " + kind.encode() + b"\ndata: " + dumps(ev) + b"\n\n" for kind, ev in events)

        await send({"type": "http.response.body", "body": frames(out.start(stream.run.trace_id)), "more_body": True})
        async for event in stream.events():
            events = out.feed(event)
            if save is not None and out.final is not None:
                await save(out.final)  # before the last event, as a whole answer is stored before it is sent
                save = None
            body = frames(events)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ---- stored responses -----------------------------------------------------
    def _stored(self, scope: Scope) -> tuple[Any, str]:
        """The response store and the stored response's id in the path (a 404 if it keeps none)."""
        rid = unquote(STORED_RESPONSE.fullmatch(scope["path"]).group(1))  # type: ignore[union-attr]
        if self.response_store is None:
            raise HTTPError(404, "not_found", f"Response with id {rid[:100]!r} not found: this router stores no "
                            "responses (traces.store_responses = false)", "response_id")
        return self.response_store, rid

    async def stored_response(self, scope: Scope, body: Any) -> tuple[int, Any]:
        """``GET /v1/responses/{id}`` (the SDK's ``responses.retrieve``) and ``DELETE`` (its
        ``responses.delete``); a named caller reaches only its own."""
        store, rid = self._stored(scope)
        caller = CURRENT_CALLER.get()
        if scope["method"] == "DELETE":
            if not await asyncio.to_thread(store.delete, rid, caller):
                raise HTTPError(404, "not_found", f"Response with id {rid[:100]!r} not found.", "response_id")
            return 200, {"id": rid, "object": "response", "deleted": True}
        q = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if q.get("stream", ["false"])[0] not in ("false", "0"):
            raise HTTPError(400, "unsupported_parameter", "stream: a stored response is read whole here, its "
                            "events are not replayed", "$.stream")
        entry = await asyncio.to_thread(store.get, rid, caller)
        if entry is None:
            raise HTTPError(404, "not_found", f"Response with id {rid[:100]!r} not found.", "response_id")
        return 200, {**entry.response, "x_router": {"trace_id": entry.trace_id}}

    async def stored_input_items(self, scope: Scope, body: Any) -> tuple[int, Any]:
        """``GET /v1/responses/{id}/input_items``: the items its model read (every earlier turn
        of its chain, then its own input), a page at a time (``limit`` 1..100, default 20;
        ``order`` desc by default, or asc; ``after`` an item id)."""
        from ..traces.responses import page
        store, rid = self._stored(scope)
        q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        try:
            limit = int(q.get("limit", 20))
        except ValueError:
            raise HTTPError(400, "bad_parameter", "limit is an integer from 1 to 100", "$.limit") from None
        if not 1 <= limit <= 100:
            raise HTTPError(400, "bad_parameter", "limit is an integer from 1 to 100", "$.limit")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise HTTPError(400, "bad_parameter", "order is 'asc' or 'desc'", "$.order")
        entry = await asyncio.to_thread(store.get, rid, CURRENT_CALLER.get())
        if entry is None:
            raise HTTPError(404, "not_found", f"Response with id {rid[:100]!r} not found.", "response_id")
        got = page(entry.input_items, limit=limit, order=order, after=q.get("after"))
        if got is None:
            raise HTTPError(400, "bad_parameter", f"after: no input item of {rid} has the id {q['after']!r}", "$.after")
        data, more = got
        return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                     "last_id": data[-1]["id"] if data else None, "has_more": more}

    # ---- small endpoints ------------------------------------------------------
    async def healthz(self, scope: Scope, body: Any) -> tuple[int, Any]:
        out = {"ok": True, "initialized": True, "catalog": self.router.catalog.digest[:12],
               "routes": len(self.router.catalog), "uptime_s": round(time.time() - self.started, 1)}
        sink = self.router.sink
        if hasattr(sink, "pending"):
            # traces handed to the writer and not yet committed: what a crash now would lose
            out["traces_pending"] = sink.pending
            out["traces_store"] = getattr(sink, "name", None)  # sqlite or postgres; never where it is
            out["traces_written"] = getattr(sink, "written", None)
            # runs never stored (refused, or shed while the store could not write), and since when
            # it cannot: a full disk or a locked database shows here, not only in the log
            out["traces_dropped"] = getattr(sink, "dropped", 0)
            failing = getattr(sink, "failing_since_ms", None)
            out["traces_failing_since_ms"] = failing
            if failing is not None:
                out["traces_error"] = getattr(sink, "last_error", None)
        return 200, out

    async def models(self, scope: Scope, body: Any) -> tuple[int, Any]:
        return 200, {"object": "list", "data": self._model_list()}

    async def metrics(self, scope: Scope, body: Any) -> tuple[int, Any]:
        """``GET /metrics``: Prometheus' text format (``metrics.py``); behind the caller keys
        when they are set, like every route but /healthz. It counts every caller's use, so a
        named caller's key (a tenant's) is refused: the operator's anonymous keys read it."""
        from .metrics import CONTENT_TYPE, render
        if CURRENT_CALLER.get() is not None:
            raise HTTPError(403, "caller_scope", "the metrics are the operator's: a named caller reads its own "
                            "use at /x/caller", type_="permission_error")
        return 200, Text(CONTENT_TYPE, render(self))

    async def model(self, scope: Scope, body: Any) -> tuple[int, Any]:
        """``GET /v1/models/{id}``: one entry of the list (the OpenAI SDK's ``models.retrieve``)."""
        model_id = unquote(scope["path"][len(MODELS_PREFIX):])
        for entry in self._model_list():
            if entry["id"] == model_id:
                return 200, entry
        raise HTTPError(404, "model_not_found", f"the model {model_id!r} is not served here; "
                        "GET /v1/models lists what is", "model")

    def _model_list(self) -> list[dict[str, Any]]:
        cat = self.router.catalog
        data = [{"id": f"profile:{name}", "object": "model", "created": 0, "owned_by": "unhardcoded",
                 "description": p.description} for name, p in sorted(cat.profiles.items())]
        data += [{"id": f"family:{fam}", "object": "model", "created": 0, "owned_by": m.vendor or "unknown"}
                 for fam, m in sorted(cat.models.items())]
        extra = getattr(self, "registered_flows", None)
        if extra:
            data += [{"id": f"flow:{name}", "object": "model", "created": 0, "owned_by": "unhardcoded"}
                     for name in sorted(extra)]
        return data

    async def runtime(self, scope: Scope, body: Any) -> tuple[int, Any]:
        return 200, self.router.runtime.describe()

    async def fields(self, scope: Scope, body: Any) -> tuple[int, Any]:
        s = self.router.catalog.schema
        return 200, {"fields": s.describe(), "tier_order": list(s.tier_order)}

    async def rank(self, scope: Scope, body: Any) -> tuple[int, Any]:
        if scope["method"] == "GET":
            q = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            body = {"model": f"profile:{q['profile'][0]}" if "profile" in q else ""}
            if "context" in q:
                try:
                    body["requirements"] = {"min_context": int(q["context"][0])}
                except ValueError:
                    raise HTTPError(400, "bad_parameter", "context is an integer", "$.context") from None
            if "as_caller" in q:
                body["as_caller"] = q["as_caller"][0]
        if not isinstance(body, dict):
            raise HTTPError(400, "bad_request_body", "the body is a JSON object", "$")
        token = None
        if "as_caller" in body:  # the operator ranks as a named caller sees it (its envelope applied)
            body = dict(body)
            name = body.pop("as_caller")
            if CURRENT_CALLER.get() is not None:
                raise HTTPError(403, "caller_scope", "only the operator ranks as another caller", "$.as_caller",
                                type_="permission_error")
            if type(name) is not str or name not in self.settings.callers:
                raise HTTPError(404, "caller_not_found", "as_caller names no caller of the config", "$.as_caller")
            token = CURRENT_CALLER.set(name)
        try:
            prep = self.router.prepare(body, require_keys=bool(body.get("only_keyed", False)))
        except LangError as exc:
            raise lang_error(exc) from None
        finally:
            if token is not None:
                CURRENT_CALLER.reset(token)
        eff = prep.choice.effective
        ranked = [{"provider": r.candidate["provider_id"], "model_family": r.candidate["model_family"],
                   "served_model_id": r.candidate.get("served_model_id"), "tier": r.candidate.get("tier"),
                   "price_in": r.candidate.get("price_in"), "price_out": r.candidate.get("price_out"),
                   "score": r.score} for r in prep.plan.ordered]
        rejected = [{"provider": r.provider, "model": r.model, "reason": r.reason}
                    for r in [*prep.pre_rejected, *prep.plan.rejected]]
        return 200, {"rank_source": "router", "policy": prep.choice.describe(), "policy_fingerprint": eff.fingerprint,
                     "policy_identity": eff.identity, "ranked": ranked, "rejected": rejected,
                     "catalog": self.router.catalog.digest, "ts": int(time.time() * 1000)}

    async def policy_normalize(self, scope: Scope, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or "policy_ir" not in body:
            raise HTTPError(400, "bad_request_body", 'send {"policy_ir": <term>}', "$")
        try:
            c = self.router.compiler.compile(body["policy_ir"], path=("policy_ir",))
        except LangError as exc:
            raise lang_error(exc) from None
        return 200, {"policy_ir": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
                     "identity": c.identity, "id": c.short_id, "sort": c.sort, "version": c.version}

    async def policy_build(self, scope: Scope, body: Any) -> tuple[int, Any]:
        """``POST /x/policy/build``: a declarative spec (``lang/elaborate.py``) lowered to its
        policy term, then admitted against this catalog's fields like any policy (a refusal of
        the lowered term has its path in ``policy_ir``, which the error carries)."""
        from ..lang.elaborate import build_policy
        try:
            term = build_policy(body)
        except LangError as exc:
            raise HTTPError(400, exc.code, exc.message, exc.path) from None
        try:
            c = self.router.compiler.compile_policy(term, path=("policy_ir",))
        except LangError as exc:
            err = lang_error(exc)
            err.extra["policy_ir"] = term
            raise err from None
        return 200, {"policy_ir": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
                     "identity": c.identity, "id": c.short_id, "version": c.version}

    async def policy_templates(self, scope: Scope, body: Any) -> tuple[int, Any]:
        return 200, {"templates": templates.describe(self._tier_groups())}

    async def policy_template_build(self, scope: Scope, body: Any) -> tuple[int, Any]:
        template_id = unquote(scope["path"][len(TEMPLATE_PREFIX):])
        catalog = self.router.catalog
        try:
            term, intent = templates.build(template_id, body, self._tier_groups(), tuple(catalog.providers))
        except templates.TemplateError as exc:
            code = "unknown_template" if exc.code == "unknown_template" else "invalid_policy_template"
            raise HTTPError(404 if code == "unknown_template" else 400, code, exc.message,
                            None if code == "unknown_template" else exc.path) from None
        try:  # admitted against this catalog's fields, exactly as a hand-written policy would be
            c = self.router.compiler.compile_policy(term, path=("policy_ir",))
        except LangError as exc:
            raise lang_error(exc) from None
        return 200, {"policy_ir": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
                     "identity": c.identity, "id": c.short_id, "version": c.version, "intent": intent}

    def _tier_groups(self) -> list[list[str]]:
        catalog = self.router.catalog
        return templates.tier_groups({pid: p.tier for pid, p in catalog.providers.items()}, catalog.tier_order)

    async def flow_normalize(self, scope: Scope, body: Any) -> tuple[int, Any]:
        from ..lang.flow import VERSION, admit_flow
        if not isinstance(body, dict) or "flow_ir" not in body:
            raise HTTPError(400, "bad_request_body", 'send {"flow_ir": <flow>}', "$")
        try:
            nf = admit_flow(body["flow_ir"], self.router.catalog.schema, path=("flow_ir",))
        except LangError as exc:
            raise lang_error(exc) from None
        return 200, {"flow_ir": nf.term, "encoded": nf.encoding, "fingerprint": nf.fingerprint,
                     "identity": nf.identity, "id": nf.short_id, "version": VERSION}
