"""The HTTP side of flows: ``flow_ir`` or ``model: "flow:NAME"`` on the chat endpoint,
and ``POST /x/flow/plan`` (each node's ranking and pick, no provider call)."""

from __future__ import annotations

import time
from typing import Any, Mapping

from ..flows import FlowRunner, build_flow_record, load_registry
from ..lang.errors import LangError
from ..lang.flow import admit_flow
from ..router.engine import status_for
from ..runtime.limits import CURRENT_CALLER
from .app import App, HTTPError, dumps, lang_error, sse_headers


class FlowService:
    def __init__(self, app: App) -> None:
        self.app = app
        self.router = app.router
        self.skipped: list[str] = []
        self.registry = load_registry(self.router.catalog.schema, self.router.settings.flows_dir,
                                      skipped=self.skipped)
        self.runner = FlowRunner(self.router)
        app.registered_flows = self.registry  # listed by /v1/models

    def wants(self, body: Mapping[str, Any]) -> bool:
        model = body.get("model")
        return body.get("flow_ir") is not None or (isinstance(model, str) and model.strip().startswith("flow:"))

    def resolve(self, body: Mapping[str, Any]) -> tuple[Any, str | None, str]:
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        model = model.strip()
        name = model[len("flow:"):] if model.startswith("flow:") else None
        if body.get("flow_ir") is not None:
            try:
                return admit_flow(body["flow_ir"], self.router.catalog.schema, path=("flow_ir",)), name, model
            except LangError as exc:
                raise lang_error(exc) from None
        reg = self.registry.get(name or "")
        if reg is None:
            known = ", ".join(sorted(self.registry)) or "none"
            raise HTTPError(404, "unknown_flow", f"no registered flow named {name!r} (known: {known})", "$.model")
        return reg.normal, name, model

    async def chat(self, body: Mapping[str, Any], send: Any) -> None:
        normal, name, route = self.resolve(body)
        session, caller = body.get("session"), CURRENT_CALLER.get()
        if type(session) is str:  # a bad one is refused by the run, with its path
            await self.router.seed_session(caller, session)
        result = await self.runner.run(normal, body, name=name)
        self.router.meter.flow(result.status)
        store = self.router.sink
        if hasattr(store, "submit_record"):
            settings = self.router.settings
            store.submit_record(build_flow_record(result, self.router.catalog, stream=bool(body.get("stream")),
                                                  route=route, capture_content=settings.capture_content,
                                                  finished_ms=self.router.clock(),
                                                  request_messages=body.get("messages") if settings.capture_content else None,
                                                  session=session, caller=caller),
                                self.router.catalog)
        xr = result.x_router()
        if session is not None:  # a flow is one call of its session, with all its steps' tokens and cost
            usage = result.usage()
            costs = [n.run.cost.usd for n in result.nodes if n.run is not None and n.run.cost.usd is not None]
            xr["session_acc"] = self.router.sessions.add(
                caller, session, tokens_in=usage["prompt_tokens"], tokens_out=usage["completion_tokens"],
                tokens_cached=usage["prompt_tokens_details"]["cached_tokens"], cost_usd=sum(costs) if costs else None)
        if result.status == "failed":
            err = result.error or {}
            kind = str(err.get("kind", "unknown"))
            raise HTTPError(status_for(kind), kind.removeprefix("exhausted: "),
                            f"flow node {result.failed_node!r} failed: {err.get('message')}", type_="router_error",
                            extra={"x_router": xr})
        if result.status == "aborted":
            raise HTTPError(422, "flow_aborted", result.reason or "aborted by a guard", type_="router_error",
                            extra={"x_router": xr})
        model = f"flow:{name}" if name else f"flow:{normal.fingerprint}"
        created = int(time.time())
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        finish = "tool_calls" if result.tool_calls else "stop"
        if not body.get("stream"):
            await self.app._send_json(send, 200, {
                "id": f"chatcmpl-{result.trace_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": result.usage(), "x_router": xr})
            return
        # The answer exists whole: deliver it as a stream of chunks (pseudo-streaming).
        base = {"id": f"chatcmpl-{result.trace_id}", "object": "chat.completion.chunk", "created": created,
                "model": model}
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        text = result.text
        step = 64
        for i in range(0, len(text), step):
            chunks.append({**base, "choices": [{"index": 0, "delta": {"content": text[i:i + step]}, "finish_reason": None}]})
        if result.tool_calls:
            calls = [{"index": j, **tc} for j, tc in enumerate(result.tool_calls)]
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({**base, "choices": [], "usage": result.usage(), "x_router": xr})
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers()})
        for c in chunks:
            await send({"type": "http.response.body", "body": b"data: " + dumps(c) + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def plan(self, scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise HTTPError(400, "bad_request_body", 'send {"flow_ir": <flow>} or {"flow": "<name>"}', "$")
        if "flow" in body and body.get("flow_ir") is None:
            normal, name, _ = self.resolve({"model": f"flow:{body['flow']}"})
        else:
            normal, name, _ = self.resolve(body)
        labels = {v: k for k, v in normal.relabel.items()}
        messages = body.get("messages") or [{"role": "user", "content": "(plan)"}]
        nodes_out = []
        for cid in normal.order:
            node = normal.nodes[cid]
            if node["kind"] != "llm":
                continue
            req: dict[str, Any] = {"messages": messages, "policy_ir": node["policy"]}
            for k in ("tools", "response_format", "seed", "requirements"):
                if k in body:
                    req[k] = body[k]
            try:
                prep = self.router.prepare(req, require_keys=bool(body.get("only_keyed", True)))
            except LangError as exc:
                raise lang_error(exc) from None
            ranked = [{"provider": r.candidate["provider_id"], "model_family": r.candidate["model_family"],
                       "served_model_id": r.candidate.get("served_model_id"), "score": r.score}
                      for r in prep.plan.ordered[:10]]
            rejected = [{"provider": r.provider, "model": r.model, "reason": r.reason}
                        for r in [*prep.pre_rejected, *prep.plan.rejected]]
            nodes_out.append({"node": labels.get(cid, cid), "canonical_id": cid,
                              "inputs": [labels.get(p, p) for p in node["inputs"]],
                              "guard": "guard" in node,
                              "policy_id": prep.choice.effective.short_id,
                              "policy_fingerprint": prep.choice.effective.fingerprint,
                              "pick": ranked[0] if ranked else None, "ranked": ranked,
                              "ranked_total": len(prep.plan.ordered), "rejected": rejected})
        return 200, {"flow": normal.describe(), "name": name, "runs": _runs(normal), "nodes": nodes_out}


def _runs(normal: Any) -> int:
    from ..lang.flow import billable_runs
    return billable_runs(normal.nodes)


def install(app: App) -> FlowService:
    svc = FlowService(app)
    app.flows = svc
    app.extra_routes[("POST", "/x/flow/plan")] = svc.plan
    return svc
