"""Traces laid out for people: a history table, one receipt, a replay verdict."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, Mapping, Sequence


def _when(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _usd(v: Any, basis: Any = None) -> str:
    if v is None:
        return "unknown" if basis is None else "-"
    return f"${float(v):.6f}"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f} ms"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def traces_table(rows: Sequence[Mapping[str, Any]], next_cursor: str | None = None) -> str:
    if not rows:
        return "no traces"
    body = [[r["trace_id"], _when(r["started_at_ms"]) + " UTC", str(r.get("status")), str(r.get("route") or "-"),
             ("pol_" + r["policy_identity"][:6]) if r.get("policy_identity") else "-",
             f"{r.get('provider') or '-'}/{r.get('model_family') or '-'}", _ms(r.get("total_ms")),
             f"{r.get('tokens_in') or 0}/{r.get('tokens_out') or 0}", _usd(r.get("cost_usd"), r.get("cost_basis"))]
            for r in rows]
    out = _table(["trace", "started", "status", "route", "policy", "answered by", "latency", "tok in/out", "cost"], body)
    if next_cursor:
        out += f"\n\nmore: --cursor {next_cursor}"
    return out


def _event_line(i: int, e: Mapping[str, Any]) -> str:
    who = f"{e.get('provider_id')}/{e.get('model_family', '')}".rstrip("/")
    kind = e.get("event")
    if kind == "attempted":
        if e.get("error_kind"):
            status = f" ({e['http_status']})" if e.get("http_status") else ""
            msg = f" \"{e['error_message'][:80]}\"" if e.get("error_message") else ""
            return f"{i}. {who} attempt {e.get('attempt')}: {e['error_kind']}{status}{msg}, {_ms(e.get('latency_ms'))}"
        return f"{i}. {who} attempt {e.get('attempt')}: answered, {_ms(e.get('latency_ms'))}"
    if kind == "retry_scheduled":
        return f"{i}. retry {who} after {e.get('backoff_ms', 0):g} ms"
    if kind == "skipped":
        return f"{i}. skipped {who}: {e.get('reason')}"
    if kind == "provider_disabled":
        return f"{i}. disabled provider {e.get('provider_id')} after {e.get('reason')}"
    return f"{i}. {kind} {who}"


def receipt(rec: Mapping[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    flag = " (stream)" if rec.get("stream") else ""
    add(f"trace      {rec['trace_id']}   {_when(rec.get('started_at_ms'))} UTC   {rec.get('status')}{flag}")
    route = rec.get("route") or {}
    pol = rec.get("policy") or {}
    eff = pol.get("effective") or {}
    source = {"profile": f"the {pol.get('profile')} profile", "policy": "the policy_ir sent with the call",
              "predicate": f"the predicate sent, on the {pol.get('profile')} profile"}.get(pol.get("source"), "-")
    add(f"route      {route.get('model') or '(default)'}" + (f"  policy name {route['policy_name']}" if route.get("policy_name") else ""))
    if eff:
        add(f"policy     pol_{eff['identity'][:6]} from {source}; fingerprint {eff.get('fingerprint')}")
    ans = rec.get("answer")
    decision = rec.get("decision") or {}
    ranked = decision.get("ranked") or []
    rejected = decision.get("rejected") or []
    if ans:
        pos = next((i for i, r in enumerate(ranked, start=1)
                    if r["provider_id"] == ans.get("provider_id") and r["model_family"] == ans.get("model_family")), None)
        add(f"answered   {ans.get('provider_id')} / {ans.get('model_family')} (model id {ans.get('served_model_id')})")
        add(f"why        ranked {pos} of {len(ranked)} by the policy; {len(rejected)} routes rejected")
    else:
        err = rec.get("error") or {}
        add(f"failed     {err.get('kind')}: {err.get('message')}")
        add(f"why        {len(ranked)} routes ranked; {len(rejected)} rejected")
    for i, r in enumerate(ranked[:8], start=1):
        mark = "  <- answered" if ans and r["provider_id"] == ans.get("provider_id") and r["model_family"] == ans.get("model_family") else ""
        score = r.get("score")
        score_s = f"{score:.4f}" if isinstance(score, (int, float)) else str(score)
        price = f"${r.get('price_in')}/{r.get('price_out')} per M" if r.get("price_in") is not None else "price unknown"
        add(f"             {i:>2}. {r['provider_id']}/{r['model_family']}  score {score_s}  {price}{mark}")
    if len(ranked) > 8:
        add(f"             ... {len(ranked) - 8} more")
    if rejected:
        reasons: dict[str, int] = {}
        for x in rejected:
            reasons[x["reason"]] = reasons.get(x["reason"], 0) + 1
        add("rejected   " + ", ".join(f"{n} by {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
    path = rec.get("path") or []
    if path:
        add("path       " + _event_line(1, path[0]))
        for i, e in enumerate(path[1:], start=2):
            add("           " + _event_line(i, e))
    lat = rec.get("latency") or {}
    add(f"latency    total {_ms(lat.get('total_ms'))}" + (f", first token {_ms(lat['ttft_ms'])}" if lat.get("ttft_ms") is not None else ""))
    u = rec.get("usage") or {}
    add(f"tokens     in {u.get('tokens_in', 0)} (cached {u.get('tokens_cached', 0)}), out {u.get('tokens_out', 0)}"
        + (f" (reasoning {u['tokens_reasoning']})" if u.get("tokens_reasoning") else ""))
    cost = rec.get("cost") or {}
    if cost.get("cost_usd") is None:
        add("cost       unknown (no price is known for this route)" if ans else "cost       none")
    else:
        add(f"cost       {_usd(cost['cost_usd'])} ({cost.get('cost_basis')}, {cost.get('cost_source')})")
    cat = rec.get("catalog") or {}
    if cat:
        add(f"catalog    {cat.get('digest', '')[:16]}  ({cat.get('source')})")
    if rec.get("flow"):
        fl = rec["flow"]
        add(f"flow       {fl.get('id')}  {len(fl.get('nodes', []))} nodes, {fl.get('runs')} billable run(s)")
        for n in fl.get("nodes", []):
            add(f"             {n.get('node')}: {n.get('provider')}/{n.get('model_family')} {n.get('status')} {_ms(n.get('latency_ms'))}")
    return "\n".join(lines)


def replay_text(out: Mapping[str, Any]) -> str:
    if "identical" in out:
        if out.get("kind") == "flow":
            head = "identical" if out["identical"] else "DIFFERENT"
            rows = [f"  {n['node']}: {'identical' if n['identical'] else ('-' if n['identical'] is None else 'DIFFERENT')}"
                    for n in out["nodes"]]
            return f"replay {out['trace_id']}: {head} ({out['compared']})\n" + "\n".join(rows)
        d = out["decision_digest"]
        lines = [f"replay {out['trace_id']}: {'identical' if out['identical'] else 'DIFFERENT'}",
                 f"  compared     {out['compared']}",
                 f"  stored       sha256 {d['stored']}",
                 f"  replayed     sha256 {d['replayed']}",
                 f"  policy       pol_{out['policy_identity'][:6]} (identity {'matches' if out['policy_identity_matches'] else 'DIFFERS'})",
                 f"  catalog      {out['catalog_digest'][:16]}"]
        for ch in out.get("differences", []):
            lines.append(f"  changed      {ch['provider']}/{ch['model']}: {ch['before']} -> {ch['after']}")
        return "\n".join(lines)
    lines = [f"replay {out['trace_id']} against the current catalog ({out['catalog_now'][:12]}, then {out['catalog_then'][:12]})"]
    pb, pa = out.get("pick_before") or {}, out.get("pick_after") or {}
    lines.append(f"  pick then    {pb.get('provider')}/{pb.get('model_family')}")
    lines.append(f"  pick now     {pa.get('provider')}/{pa.get('model_family')}" if pa else "  pick now     nothing passes")
    if out.get("cost_after_usd") is not None or out.get("cost_before_usd") is not None:
        lines.append(f"  cost then    {out.get('cost_before_usd')}  now {out.get('cost_after_usd')}"
                     + (f"  (delta {out['cost_delta_usd']})" if out.get("cost_delta_usd") is not None else ""))
    changes = out.get("changes", [])
    lines.append(f"  {len(changes)} route(s) changed")
    for ch in changes:
        lines.append(f"    {ch['provider']}/{ch['model']}: {ch['before']} -> {ch['after']}")
    return "\n".join(lines)


def backtest_text(out: Mapping[str, Any]) -> str:
    """A backtest's report (``traces/backtest.py``) for people: the totals, then where the traffic moves."""
    t = out["totals"]
    pol = out["policy"]
    pct = "" if t.get("delta_pct") is None else f" ({t['delta_pct']:+.2f} %)"
    lines = [f"backtest of pol_{pol['identity'][:6]} ({pol['sort']}) over {t['traces']} call(s), "
             f"{'each call’s own catalog and state' if out['over'] == 'stored' else 'today’s catalog and state'}",
             f"  decided      {t['decided']}: same pick {t['same_pick']}, changed {t['changed_pick']}, "
             f"unroutable {t['unroutable']}" + (f", pinned {t['pinned']}" if t["pinned"] else "")]
    skipped = [f"{k.replace('_', ' ')} {t[k]}" for k in ("refused", "not_replayable", "catalog_missing") if t[k]]
    if skipped:
        lines.append("  not decided  " + ", ".join(skipped))
    lines.append(f"  cost         actual {_usd(t['actual_cost_usd'])}, backtest {_usd(t['backtest_cost_usd'])}, "
                 f"delta {'+' if Decimal(t['delta_usd']) >= 0 else '-'}${abs(float(t['delta_usd'])):.6f}{pct} over {t['priced']} priced call(s)")
    if t["unknown_callers"]:
        lines.append(f"  note         {t['unknown_callers']} call(s) of callers this config does not name: "
                     "decided without their envelopes (pass the serving --config)")
    if t["unpriced"] or t["no_usage"]:
        lines.append(f"  not priced   {t['unpriced']} without a known price, {t['no_usage']} without usage")
    rows = [[f"{(g['from'] or {}).get('provider', '-')}/{(g['from'] or {}).get('model_family', '-')}",
             f"{g['to']['provider']}/{g['to']['model_family']}" if g["to"] else "nothing passes",
             str(g["traces"]), _usd(g["actual_cost_usd"]), _usd(g["backtest_cost_usd"])]
            for g in out["transitions"]]
    if rows:
        lines += ["", _table(["answered by", "would go to", "calls", "actual", "backtest"], rows)]
    window = out.get("window") or {}
    if window.get("next_cursor"):
        lines.append(f"\nmore calls in the window: --cursor {window['next_cursor']}")
    lines += ["", *(f"note: {c}" for c in out.get("caveats", []))]
    return "\n".join(lines)


def _ms1(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f} ms"


def usage_text(out: Mapping[str, Any], *, top: int = 10) -> str:
    """A usage report (``traces/usage.py``) as a summary and one table per grouping, the most
    expensive first; costs in the exact decimal USD the records carry."""
    t = out["totals"]
    lat = t["latency_ms"]
    w = out.get("window") or {}
    span = f"{_when(w.get('since_ms')) if w.get('since_ms') is not None else 'the first stored call'} to " \
           f"{_when(w.get('until_ms')) if w.get('until_ms') is not None else 'now'}"
    rate = "" if t["error_rate"] is None else f" ({t['error_rate'] * 100:.1f}%)"
    cost = "no priced call" if t["cost_usd"] is None else f"{t['cost_usd']} USD"
    lines = [f"usage from {span} (UTC)",
             f"{t['requests']} calls, {t['errors']} error{'s' if t['errors'] != 1 else ''}{rate}; "
             f"cost {cost} over {t['priced']} priced call(s)"
             + (f", {t['unpriced']} answered without a price (not in the sum)" if t["unpriced"] else ""),
             f"tokens {t['tokens_in']} in, {t['tokens_out']} out, {t['tokens_cached']} cached",
             f"latency of {lat['answered']} answered: p50 {_ms1(lat['p50'])}, p95 {_ms1(lat['p95'])}, "
             f"p99 {_ms1(lat['p99'])}, max {_ms1(lat['max'])}"]
    headers = ["calls", "errors", "tokens in", "tokens out", "cost USD", "unpriced"]

    def cells(s: Mapping[str, Any]) -> list[str]:
        return [str(s["requests"]), str(s["errors"]), str(s["tokens_in"]), str(s["tokens_out"]),
                s["cost_usd"] or "-", str(s["unpriced"])]

    for key, title in (("by_provider", "provider"), ("by_model_family", "model family"), ("by_route", "route"),
                       ("by_policy", "policy"), ("by_caller", "caller"), ("by_status", "status")):
        table = out.get(key)
        if not table:
            continue
        rows = [[("pol_" + k[:6]) if key == "by_policy" and k != "-" else ('"" (default)' if k == "" else k), *cells(s)]
                for k, s in list(table.items())[:top]]
        more = f"\n  … and {len(table) - top} more" if len(table) > top else ""
        lines += ["", f"by {title}", _table([title, *headers], rows) + more]
    if out.get("daily"):
        lines += ["", "by day", _table(["date", *headers], [[d["date"], *cells(d)] for d in out["daily"]])]
    return "\n".join(lines)
