"""Running a sigma-flow/v1 flow: a DAG of routed calls, concurrent where the graph allows.

Each ``llm`` node starts the moment all its inputs are done; it assembles
its user message (docs/spec/sigma-flow.md §4), runs one routed call under its
own system prompt and policy (with that policy's failover), and feeds the
nodes that read it. The output node returns its input's output.

* A **guard** node's answer is a verdict: an abort ends the whole flow with
  the guard's reason; a pass forwards the guard's own input unchanged.
* A node that fails (no route left) fails the flow with an error naming the
  node and carrying its decision path; nodes still running are cancelled and
  what they spent is recorded.
* Every node's run is kept; the flow writes one stitched record with the
  nodes in execution (completion) order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..lang.flow import NormalFlow, assemble, billable_runs, guard_verdict
from ..router.engine import Router, RouterFailure, Run, new_trace_id


@dataclass
class NodeOutcome:
    node: str                    # canonical id
    label: str                   # the id the caller used
    inputs: list[str]
    status: str = "pending"      # ok | failed | aborted | cancelled | passed
    text: str = ""
    tool_calls: Any = None
    run: Run | None = None
    started_ms: float = 0.0
    finished_ms: float = 0.0
    verdict: str | None = None   # guard abort reason
    error: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        r = self.run
        a = (r.answered_by if r else None) or {}
        out: dict[str, Any] = {
            "node": self.label, "canonical_id": self.node, "inputs": self.inputs, "status": self.status,
            "started_ms": round(self.started_ms, 3), "latency_ms": round(self.finished_ms - self.started_ms, 3),
            "provider": a.get("provider_id"), "model_family": a.get("model_family"),
            "served_model_id": a.get("served_model_id"), "price_in": a.get("price_in"), "price_out": a.get("price_out"),
        }
        if r is not None:
            out.update({"tokens_in": r.usage.prompt_tokens, "tokens_out": r.usage.completion_tokens,
                        "tokens_cached": r.usage.cached_tokens,
                        "cost_usd": None if r.cost.usd is None else float(r.cost.usd), "cost_basis": r.cost.basis,
                        "trace_id": r.trace_id})
            if r.prepared is not None:
                eff = r.prepared.choice.effective
                out["policy_fingerprint"] = eff.fingerprint
                out["policy_identity"] = eff.identity
            out["decision_trace"] = r.decision_trace()
        if self.verdict is not None:
            out["guard_abort"] = self.verdict
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class FlowResult:
    flow: NormalFlow
    status: str                  # ok | failed | aborted
    text: str
    tool_calls: Any
    nodes: list[NodeOutcome]     # in execution (completion) order
    trace_id: str
    started_ms: int
    total_ms: float
    failed_node: str | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None
    name: str | None = None
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float | None:
        costs = [n.run.cost.usd for n in self.nodes if n.run is not None and n.run.cost.usd is not None]
        return float(sum(costs)) if costs else None

    def usage(self) -> dict[str, int]:
        tin = sum(n.run.usage.prompt_tokens for n in self.nodes if n.run)
        tout = sum(n.run.usage.completion_tokens for n in self.nodes if n.run)
        cached = sum(n.run.usage.cached_tokens for n in self.nodes if n.run)
        return {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def x_router(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "provider": "flow", "model_family": f"flow:{self.flow.fingerprint}",
            "served_model_id": f"flow:{self.flow.fingerprint}", "served_by": "flow",
            "flow_fingerprint": self.flow.fingerprint, "flow_identity": self.flow.identity,
            "flow_id": self.flow.short_id, "flow_name": self.name, "runs": self.runs,
            "cost_usd": self.cost_usd, "cost_basis": _basis(self.nodes), "trace_id": self.trace_id,
            "status": self.status, "total_latency_ms": round(self.total_ms, 3),
            "flow_nodes": [n.view() for n in self.nodes],
        }
        if self.failed_node is not None:
            out["failed_node"] = self.failed_node
            out["flow_error"] = self.error
        if self.reason is not None:
            out["abort_reason"] = self.reason
        return out


def _basis(nodes: list[NodeOutcome]) -> str | None:
    bases = {n.run.cost.basis for n in nodes if n.run is not None and n.run.answered_by}
    if not bases or None in bases:
        return None
    return "reported" if bases == {"reported"} else "computed"


def _conversation(body: Mapping[str, Any]) -> tuple[list[Any], str]:
    """Prior turns and the user's prompt (the text of the last user message)."""
    messages = list(body.get("messages") or [])
    last = None
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role") == "user":
            last = i
            break
    if last is None:
        return messages, ""
    content = messages[last].get("content")
    if isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    else:
        text = content or ""
    return messages[:last] + messages[last + 1:], text


_PASS_THROUGH = {"temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
                 "presence_penalty", "frequency_penalty", "user", "tools", "tool_choice", "response_format"}


class FlowRunner:
    def __init__(self, router: Router) -> None:
        self.router = router

    def node_body(self, node: Mapping[str, Any], prior: list[Any], prompt: str, body: Mapping[str, Any],
                  terminal: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [{"role": "system", "content": node["system"]}, *prior,
                                            {"role": "user", "content": prompt}],
                               "policy_ir": node["policy"]}
        for k in _PASS_THROUGH:
            if k in body and (terminal or k not in ("tools", "tool_choice", "response_format")):
                out[k] = body[k]
        return out

    async def run(self, flow: NormalFlow, body: Mapping[str, Any], *, name: str | None = None) -> FlowResult:
        nodes = flow.nodes
        labels = {v: k for k, v in flow.relabel.items()}
        started_ms = self.router.clock()
        t0 = time.perf_counter()
        prior, prompt = _conversation(body)
        source = next(i for i, n in nodes.items() if n["kind"] == "input")
        sink = next(i for i, n in nodes.items() if n["kind"] == "output")
        terminal = nodes[sink]["inputs"][0]
        outputs: dict[str, tuple[str, Any]] = {source: (prompt, None)}
        outcomes: dict[str, NodeOutcome] = {}
        order: list[NodeOutcome] = []
        pending = {i for i, n in nodes.items() if n["kind"] == "llm"}
        running: dict[asyncio.Task, str] = {}
        failure: NodeOutcome | None = None
        abort: NodeOutcome | None = None

        def ready(nid: str) -> bool:
            return all(p in outputs for p in nodes[nid]["inputs"])

        async def run_node(nid: str) -> NodeOutcome:
            node = nodes[nid]
            oc = outcomes[nid]
            oc.started_ms = (time.perf_counter() - t0) * 1000
            texts = [outputs[p][0] for p in node["inputs"]]
            user = assemble(node, texts)
            req = self.node_body(node, prior, user, body, nid == terminal and "guard" not in node)
            try:
                completion, run = await self.router.complete(req, record=False,
                                                             on_run=lambda r: setattr(oc, "run", r))
            except RouterFailure as exc:
                oc.run = exc.run
                oc.status = "failed"
                oc.error = {"kind": exc.kind, "message": exc.message, "status": exc.status}
                return oc
            finally:
                oc.finished_ms = (time.perf_counter() - t0) * 1000
            oc.run = run
            msg = (completion.get("choices") or [{}])[0].get("message") or {}
            answer = msg.get("content") or ""
            if "guard" in node:
                verdict = guard_verdict(node, answer)
                if verdict is not None:
                    oc.status, oc.verdict = "aborted", verdict
                    return oc
                oc.status, oc.text = "passed", user
                return oc
            oc.status, oc.text, oc.tool_calls = "ok", answer, msg.get("tool_calls")
            return oc

        for nid in pending:
            outcomes[nid] = NodeOutcome(nid, labels.get(nid, nid), [labels.get(p, p) for p in nodes[nid]["inputs"]])

        def launch() -> None:
            for nid in sorted(pending, key=lambda i: int(i[1:])):
                if ready(nid):
                    pending.discard(nid)
                    running[asyncio.ensure_future(run_node(nid))] = nid

        try:
            launch()
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: outcomes[running[t]].finished_ms):
                    nid = running.pop(task)
                    oc = task.result()
                    order.append(oc)
                    if oc.status == "failed" and failure is None:
                        failure = oc
                    elif oc.status == "aborted" and abort is None:
                        abort = oc
                    elif oc.status in ("ok", "passed"):
                        outputs[nid] = (oc.text, oc.tool_calls)
                if failure is not None or abort is not None:
                    await self._cancel(running, outcomes, order, t0)
                    break
                launch()
        except asyncio.CancelledError:
            await self._cancel(running, outcomes, order, t0)
            raise

        total_ms = (time.perf_counter() - t0) * 1000
        runs = billable_runs(nodes)
        trace_id = new_trace_id()
        if failure is not None:
            return FlowResult(flow, "failed", "", None, order, trace_id, started_ms, total_ms,
                              failed_node=failure.label, error=failure.error, name=name, runs=runs)
        if abort is not None:
            return FlowResult(flow, "aborted", "", None, order, trace_id, started_ms, total_ms,
                              failed_node=abort.label, reason=abort.verdict, name=name, runs=runs)
        text, tool_calls = outputs[terminal] if terminal in outputs else ("", None)
        return FlowResult(flow, "ok", text, tool_calls, order, trace_id, started_ms, total_ms, name=name, runs=runs)

    async def _cancel(self, running: dict[asyncio.Task, str], outcomes: dict[str, NodeOutcome],
                      order: list[NodeOutcome], t0: float) -> None:
        for task in running:
            task.cancel()
        for task, nid in list(running.items()):
            try:
                await task
            except asyncio.CancelledError:
                pass
            oc = outcomes[nid]
            oc.status = "cancelled"
            oc.finished_ms = (time.perf_counter() - t0) * 1000
            order.append(oc)
        running.clear()
