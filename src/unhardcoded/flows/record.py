"""One stitched record for a flow run: the flow's identity and every node's own record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..costs import usd_text
from ..traces.record import SCHEMA, build_record
from .runner import FlowResult


def build_flow_record(result: FlowResult, catalog: Any, *, stream: bool = False, route: str = "",
                      capture_content: bool = False, finished_ms: int | None = None,
                      request_messages: Any = None, session: str | None = None,
                      caller: str | None = None) -> dict[str, Any]:
    nodes = []
    for n in result.nodes:
        entry: dict[str, Any] = {k: v for k, v in n.view().items() if k != "decision_trace"}
        if n.run is not None and n.run.prepared is not None:
            entry["record"] = build_record(n.run, catalog, capture_content=capture_content)
        nodes.append(entry)
    costs = [n.run.cost.usd for n in result.nodes if n.run is not None and n.run.cost.usd is not None]
    usage = result.usage()
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "trace_id": result.trace_id,
        "kind": "flow",
        "started_at_ms": result.started_ms,
        "finished_at_ms": finished_ms,
        "status": {"ok": "ok", "failed": "error", "aborted": "aborted"}.get(result.status, result.status),
        "stream": stream,
        **({"session": session} if session is not None else {}),
        **({"caller": caller} if caller is not None else {}),
        "route": {"model": route, "profile": None, "policy_name": None, "flow_name": result.name, "pin": None,
                  "requirements": {}},
        "catalog": {"digest": catalog.digest, "source": catalog.source},
        "flow": {
            "id": result.flow.short_id, "identity": result.flow.identity, "fingerprint": result.flow.fingerprint,
            "encoding": result.flow.encoding, "flow_ir": result.flow.term, "name": result.name,
            "relabel": result.flow.relabel, "runs": result.runs, "nodes": nodes,
            "failed_node": result.failed_node, "abort_reason": result.reason,
        },
        "answer": {"provider_id": "flow", "model_family": f"flow:{result.flow.fingerprint}",
                   "served_model_id": f"flow:{result.flow.fingerprint}", "served_by": "flow"}
        if result.status == "ok" else None,
        "usage": {"tokens_in": usage["prompt_tokens"], "tokens_out": usage["completion_tokens"],
                  "tokens_cached": usage["prompt_tokens_details"]["cached_tokens"], "tokens_reasoning": 0},
        "cost": {"cost_usd": usd_text(sum(costs, Decimal(0))) if costs else None,
                 "cost_basis": result.x_router().get("cost_basis"), "cost_source": "sum of nodes",
                 "failed_attempts": []},
        "latency": {"total_ms": round(result.total_ms, 3), "ttft_ms": None},
        "error": result.error if result.status == "failed" else (
            {"kind": "flow_aborted", "message": result.reason, "status": 422} if result.status == "aborted" else None),
    }
    if capture_content:
        rec["content"] = {"messages": request_messages, "response": result.text}
    return rec
