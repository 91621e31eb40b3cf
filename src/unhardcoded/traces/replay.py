"""Replay: the stored record alone reproduces the decision, byte for byte.

:func:`replay_record` rebuilds the decision's inputs from the record and the
catalog snapshot it names (the pool, the runtime state, the request's
requirements, the seed), re-admits and re-normalises the stored policy
(checking its identity), evaluates it, and compares the canonical decision
bytes with the stored ones.

:func:`against_current` runs the same stored policy over today's catalog and
runtime state and reports what would change, route by route, with the cost
difference for the tokens the call actually used.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any, Mapping

from ..lang.compiler import Compiler
from ..lang.errors import LangError
from ..lang.fields import Schema
from ..router.decision import decide
from .record import decision_bytes, decision_view, score_repr


class ReplayError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rebuild_pool(record: Mapping[str, Any], snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    delta = record["inputs"]["pool"]
    excluded = {(p, f) for p, f, _ in delta.get("excluded", [])}
    stamps = delta.get("stamps", {})
    pool = []
    for c in snapshot["candidates"]:
        key = (c["provider_id"], c["model_family"])
        if key in excluded:
            continue
        s = stamps.get(f"{key[0]}|{key[1]}")
        pool.append({**c, **s} if s else c)
    return pool


def schema_of(snapshot: Mapping[str, Any]) -> Schema:
    return Schema.from_declarations(snapshot.get("fields", []), snapshot.get("tier_order"))


def replay_record(record: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    if record.get("kind") == "flow":
        return replay_flow(record, snapshot)
    if "decision" not in record:
        raise ReplayError("not_replayable", "this record has no decision (it failed before deciding)")
    eff = record["policy"]["effective"]
    compiler = Compiler(schema_of(snapshot))
    try:
        compiled = compiler.compile(eff["term"], want="Policy")
    except LangError as exc:
        raise ReplayError("policy_refused", f"the stored policy no longer admits: {exc}") from None
    inputs = record["inputs"]
    ctx: dict[str, Any] = {"request": inputs["request"], "state": inputs["state"], "now_ms": inputs["now_ms"]}
    if inputs.get("seed") is not None:
        ctx["seed"] = inputs["seed"]
    pin = record.get("route", {}).get("pin")
    plan = decide(compiled.policy, rebuild_pool(record, snapshot), ctx, tuple(pin) if pin else None)
    view = decision_view(plan.ordered, plan.rejected)
    stored_bytes = decision_bytes(record["decision"]["view"])
    replayed_bytes = decision_bytes(view)
    identical = stored_bytes == replayed_bytes
    out: dict[str, Any] = {
        "trace_id": record["trace_id"],
        "identical": identical,
        "policy_identity": compiled.identity,
        "policy_identity_matches": compiled.identity == eff["identity"] and compiled.encoding == eff["encoding"],
        "catalog_digest": record["catalog"]["digest"],
        "decision_digest": {"stored": hashlib.sha256(stored_bytes).hexdigest(),
                            "replayed": hashlib.sha256(replayed_bytes).hexdigest()},
        "compared": "canonical decision bytes (failover order with exact scores, every rejection with its reason)",
        "ordered": view["ordered"],
    }
    if not identical:
        out["differences"] = _diff(record["decision"]["view"], view)
    return out


def replay_flow(record: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    nodes = record.get("flow", {}).get("nodes", [])
    results = []
    for node in nodes:
        sub = node.get("record")
        if sub is None or "decision" not in sub:
            results.append({"node": node.get("node"), "identical": None, "note": "node never decided"})
            continue
        r = replay_record(sub, snapshot)
        results.append({"node": node.get("node"), "identical": r["identical"],
                        "decision_digest": r["decision_digest"]})
    decided = [r for r in results if r["identical"] is not None]
    return {"trace_id": record["trace_id"], "kind": "flow", "identical": all(r["identical"] for r in decided),
            "nodes": results, "catalog_digest": record.get("catalog", {}).get("digest"),
            "compared": "canonical decision bytes of every node, in execution order"}


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    def index(view: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for i, (p, f, s) in enumerate(view["ordered"], start=1):
            out[(p, f)] = {"rank": i, "score": s}
        for p, f, reason in view["rejected"]:
            out[(p, f)] = {"rejected": reason}
        return out
    b, a = index(before), index(after)
    changes = []
    for key in sorted(set(b) | set(a), key=lambda k: (str(k[0]), str(k[1]))):
        if b.get(key) != a.get(key):
            changes.append({"provider": key[0], "model": key[1], "before": b.get(key), "after": a.get(key)})
    return changes


def against_current(record: Mapping[str, Any], router: Any) -> dict[str, Any]:
    """Run the stored policy over today's catalog and runtime state; say what changes."""
    if "decision" not in record:
        raise ReplayError("not_replayable", "this record has no decision (it failed before deciding)")
    eff = record["policy"]["effective"]
    try:
        compiled = router.compiler.compile(eff["term"], want="Policy")
    except LangError as exc:
        raise ReplayError("policy_refused", f"today's catalog refuses the stored policy: {exc}") from None
    now = router.clock()
    pool, pre = router._credentialed_pool()
    pool = router.runtime.stamp(pool, now)
    inputs = record["inputs"]
    ctx: dict[str, Any] = {"request": inputs["request"], "state": router.runtime.snapshot(now), "now_ms": now}
    if inputs.get("seed") is not None:
        ctx["seed"] = inputs["seed"]
    pin = record.get("route", {}).get("pin")
    plan = decide(compiled.policy, pool, ctx, tuple(pin) if pin else None)
    view = decision_view(plan.ordered, plan.rejected)
    view["rejected"] = [[x.provider, x.model, x.reason] for x in pre] + view["rejected"]
    before = dict(record["decision"]["view"])
    before["rejected"] = [[p, f, r] for p, f, r in record["inputs"]["pool"].get("excluded", [])] + list(before["rejected"])
    pick_before = record.get("answer") or (record["decision"]["ranked"][0] if record["decision"]["ranked"] else None)
    pick_after = plan.ordered[0].candidate if plan.ordered else None
    out: dict[str, Any] = {
        "trace_id": record["trace_id"],
        "catalog_then": record["catalog"]["digest"], "catalog_now": router.catalog.digest,
        "policy_identity": compiled.identity,
        "pick_before": _pick(pick_before), "pick_after": _pick(pick_after),
        "changes": _diff(before, view),
        "ordered_now": [[p, f, score_repr(s)] for p, f, s in view["ordered"]],
    }
    usage = record.get("usage") or {}
    cost_before = (record.get("cost") or {}).get("cost_usd")
    out["cost_before_usd"] = cost_before
    if pick_after is not None:
        from ..costs import Usage, usd_text
        u = Usage(usage.get("tokens_in", 0), usage.get("tokens_out", 0), usage.get("tokens_cached", 0),
                  usage.get("tokens_reasoning", 0))
        c = router._cost(pick_after, u)
        out["cost_after_usd"] = usd_text(c.usd)
        out["cost_after_basis"] = c.basis
        if c.usd is not None and cost_before is not None:
            out["cost_delta_usd"] = usd_text(c.usd - Decimal(str(cost_before)))
    return out


def _pick(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not c:
        return None
    return {"provider": c.get("provider_id"), "model_family": c.get("model_family"),
            "served_model_id": c.get("served_model_id"), "price_in": c.get("price_in"),
            "price_out": c.get("price_out")}

