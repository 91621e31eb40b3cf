"""The trace record (schema ``unhardcoded.trace/v1``, docs/spec/trace.md).

A record is built from a finished :class:`~unhardcoded.router.engine.Run`
off the request path. It holds everything the decision depended on, so a
replay needs nothing else but the catalog snapshot it names (stored once,
content-addressed). Message content is included only when the operator turned
content capture on. No key, header or credential is ever part of it.
"""

from __future__ import annotations

import hashlib
import json
import math

from typing import Any, Callable, Mapping, Sequence

import orjson

from ..costs import usd_text
from ..lang.interpreter import changed_places
from ..lang.requirements import derive_needs
from ..memo import IdentityMemo
from ..runtime.state import STAMPED as OBSERVED_FIELDS

SCHEMA = "unhardcoded.trace/v1"


def score_repr(v: Any) -> Any:
    """A score as JSON: finite numbers as themselves, the others as strings."""
    if isinstance(v, float):
        if v != v:
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def score_value(v: Any) -> Any:
    if v == "nan":
        return math.nan
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return v


def canonical(v: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes we hash (decisions, catalogs)."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def canonical_admitted(v: Any) -> bytes:
    """``canonical(v)`` for a value made of admitted terms, strings and nulls (a policy section):
    orjson's text where it is provably the standard library's, else the standard library's.

    The two write strings, integers, nulls, lists and sorted objects alike; of numbers, they
    differ only on doubles under 1e-4 in magnitude, which orjson writes as ``0.0000…`` or with a
    negative exponent, so a text holding neither is the same text (a test holds the two equal
    over policies, and over a million doubles of every magnitude). Not for values that may hold
    NaN or an infinity (orjson writes them as null where ``canonical`` refuses them): an admitted
    term holds neither."""
    try:
        out = orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # an integer past 64 bits, a non-string key
        return canonical(v)
    if b"e-" in out or b"0.0000" in out:
        return canonical(v)
    return out


def dump_record(rec: Any) -> bytes:
    """A record as stored: compact JSON (orjson: a trace is written per call, so this is hot)."""
    return orjson.dumps(rec)


def decision_view(ordered: Sequence[Any], rejected: Sequence[Any]) -> dict[str, Any]:
    """The decision as data: the failover order with scores, and every rejection."""
    return {
        "ordered": [[r.candidate["provider_id"], r.candidate["model_family"], score_repr(r.score)] for r in ordered],
        "rejected": [[x.provider, x.model, x.reason] for x in rejected],
    }


def decision_bytes(view: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a decision; two decisions are the same iff these are equal.

    Scores are written with Python's shortest round-trip repr, so equal bytes
    mean bit-identical doubles.
    """
    ordered = [[p, f, repr(s) if isinstance(s, float) else s] for p, f, s in view["ordered"]]
    return canonical({"ordered": ordered, "rejected": view["rejected"]})


def reduce_request(view: Mapping[str, Any]) -> dict[str, Any]:
    """``ctx.request`` without tool schemas: ``meets_req`` only needs to know tools are present."""
    out = dict(view)
    tools = out.get("tools")
    if isinstance(tools, list):
        out["tools"] = [{"type": t.get("type", "function") if isinstance(t, Mapping) else "function"} for t in tools]
    return out


def policy_section(choice: Any, catalog: Any) -> dict[str, Any]:
    section = _policy_section_body(choice, catalog)
    section["digest"] = hashlib.sha256(canonical_admitted(section)).hexdigest()
    return section


def _policy_section_body(choice: Any, catalog: Any) -> dict[str, Any]:
    body = {"source": choice.source, "profile": choice.profile,
            "sent": _policy_ident(choice.sent) if choice.sent is not None else None,
            "effective": _policy_ident(choice.effective),
            "envelope": catalog.envelope if choice.source != "profile" else None}
    if getattr(choice, "caller_envelope", None) is not None:  # only then: other sections stay as they were
        body["caller_envelope"] = choice.caller_envelope
    return body


def _policy_section_text(choice: Any, catalog: Any) -> tuple[str, str]:
    """(digest, stored text) of ``policy_section(choice, catalog)``: the text is the canonical
    bytes the digest is taken of, with the digest added last (the same JSON value as the
    section; one serialisation instead of two)."""
    canon = canonical_admitted(_policy_section_body(choice, catalog))
    dg = hashlib.sha256(canon).hexdigest()
    return dg, canon[:-1].decode("utf-8") + ',"digest":"' + dg + '"}'


def _policy_ident(c: Any) -> dict[str, Any]:
    return {"term": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint, "identity": c.identity,
            "sort": c.sort}


def pool_delta(pool: Sequence[Mapping[str, Any]], catalog_candidates: Sequence[Mapping[str, Any]],
               pre_rejected: Sequence[Any]) -> dict[str, Any]:
    """How the decision's pool differs from the catalog snapshot: exclusions and observed stamps."""
    stamps = {key: s for _, (key, s) in sorted(_stamped_at(pool).items())}
    return {"excluded": [[x.provider, x.model, x.reason] for x in pre_rejected], "stamps": stamps}


def _stamp_of(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in OBSERVED_FIELDS if k in c}


_LAST_POOL: list[Any] = [None]  # (pool, {position: (route key, stamp)}) of the last pool_delta


def _stamped_at(pool: Sequence[Mapping[str, Any]]) -> dict[int, tuple[str, dict[str, Any]]]:
    """The pool's observed stamps by position. A re-stamped pool holds the last one's objects
    but where routes served (RuntimeState.stamp): only those places are read again."""
    n = len(pool)
    last = _LAST_POOL[0]
    if last is not None and len(last[0]) == n:
        changed = changed_places(last[0], pool)
        if 4 * len(changed) <= n:
            at = dict(last[1])
            for i in changed:
                c = pool[i]
                s = _stamp_of(c)
                if s:
                    at[i] = (f"{c['provider_id']}|{c['model_family']}", s)
                else:
                    at.pop(i, None)
            _LAST_POOL[0] = (pool, at)
            return at
    at = {i: (f"{c['provider_id']}|{c['model_family']}", s) for i, c in enumerate(pool) if (s := _stamp_of(c))}
    _LAST_POOL[0] = (pool, at)
    return at


# Plans and stamped pools are shared by many runs (the router memoises them): their part
# of the record is built once. Used by one builder at a time (the store holds its build lock).
# small: plans and pools are replaced as observations arrive, and each holds a pool alive
_DECISIONS = IdentityMemo(32)
_POOLS = IdentityMemo(4)
_POLICIES = IdentityMemo(64)
_DECISION_TEXTS = IdentityMemo(32)  # plan -> (digest, stored text) of its decision section
_POLICY_TEXTS = IdentityMemo(64)    # choice -> (digest, stored text) of its policy section


def decision_section(plan: Any, pre_rejected: Sequence[Any]) -> dict[str, Any]:
    view = decision_view(plan.ordered, plan.rejected)
    return {
        "ranked": [{"provider_id": r.candidate["provider_id"], "model_family": r.candidate["model_family"],
                    "served_model_id": r.candidate.get("served_model_id"), "tier": r.candidate.get("tier"),
                    "score": score_repr(r.score), "price_in": r.candidate.get("price_in"),
                    "price_out": r.candidate.get("price_out")} for r in plan.ordered],
        "rejected": [{"provider": x.provider, "model": x.model, "reason": x.reason}
                     for x in [*pre_rejected, *plan.rejected]],
        "view": view,
        "digest": hashlib.sha256(decision_bytes(view)).hexdigest(),
    }


def build_record(run: Any, catalog: Any, *, capture_content: bool = False) -> dict[str, Any]:
    prep = run.prepared
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "trace_id": run.trace_id,
        "kind": "flow" if run.flow is not None else "chat",
        "started_at_ms": prep.started_ms if prep else run.finished_ms,
        "finished_at_ms": run.finished_ms,
        "status": run.status,
        "stream": run.stream,
    }
    if run.session is not None:
        rec["session"] = run.session
    if run.caller is not None:
        rec["caller"] = run.caller
    if prep is not None:
        c = prep.contract
        choice = prep.choice
        rec["route"] = {"model": c.route, "profile": choice.profile, "policy_name": c.policy_name,
                        "flow_name": c.flow_name, "pin": list(c.pin) if c.pin else None,
                        "requirements": c.requirements}
        rec["policy"] = _POLICIES.get(choice, lambda ch: policy_section(ch, catalog))
        rec["catalog"] = {"digest": catalog.digest, "source": catalog.source}
        ctx = prep.ctx
        pre = prep.pre_rejected
        rec["inputs"] = {
            "request": reduce_request(ctx.get("request", {})),
            "derived_needs": derive_needs(ctx.get("request", {})),
            "state": ctx.get("state", {}),
            "now_ms": ctx.get("now_ms"),
            "seed": ctx.get("seed"),
            "pool": _POOLS.get(prep.pool, lambda pool: pool_delta(pool, catalog.candidates(), pre)),
        }
        rec["decision"] = _DECISIONS.get(prep.plan, lambda plan: decision_section(plan, pre))
    rec["path"] = run.events
    rec["answer"] = dict(run.answered_by) if run.answered_by else None
    rec["usage"] = run.usage.to_dict()
    rec["cost"] = {**run.cost.to_dict(), "failed_attempts": run.failed_costs}
    rec["latency"] = {"total_ms": round(run.total_ms, 3), "ttft_ms": None if run.ttft_ms is None else round(run.ttft_ms, 3)}
    rec["error"] = run.error
    if run.deadline_exceeded:
        rec["request_deadline_exceeded"] = True
    if run.filters:
        rec["filters"] = run.filters
    if run.flow is not None:
        rec["flow"] = run.flow
    if capture_content and (run.request_messages is not None or run.response_content is not None):
        rec["content"] = {"messages": run.request_messages, "response": run.response_content}
    return rec


# ---- the stored form of a routed call, built fast -------------------------------------------
#
# Everything in a chat record but the run's own outcome (route, policy, catalog, inputs, decision)
# is a function of its plan and of how the caller named the route, and one plan serves many runs.
# So that part is written once per plan and route as JSON (``_Shared``), and a run's stored text
# is its own few fields around it. ``stored_form`` gives exactly what ``build_record`` followed by
# moving the sections apart (see ``SQLiteStore``) gives; a test holds the two equal.

COLUMNS = ("trace_id", "started_at_ms", "finished_at_ms", "status", "kind", "route", "profile", "policy_name",
           "policy_identity", "provider", "model_family", "served_model_id", "tokens_in", "tokens_out",
           "tokens_cached", "cost_usd", "cost_basis", "total_ms", "ttft_ms", "catalog_digest", "session",
           "caller")


class _Shared:
    """One plan's and route's part of every record made from it."""

    __slots__ = ("head", "_head_inline", "_around", "inputs_tail", "tail", "sections", "row_route", "row_catalog",
                 "uses", "_apart")

    def __init__(self, prep: Any, catalog: Any) -> None:
        c, choice, ctx = prep.contract, prep.choice, prep.ctx
        pre = prep.pre_rejected
        # (digest, stored text) of each section: a plan's is written once for all the policies
        # that share it (a policy built per request makes a new choice, not a new plan)
        policy = _POLICY_TEXTS.get(choice, lambda ch: _policy_section_text(ch, catalog))
        decision = _DECISION_TEXTS.get(prep.plan, lambda plan: _stored_section(decision_section(plan, pre)))
        self.sections = (policy, decision)
        route = {"model": c.route, "profile": choice.profile, "policy_name": c.policy_name,
                 "flow_name": c.flow_name, "pin": list(c.pin) if c.pin else None, "requirements": c.requirements}
        # '..."inputs":{"now_ms":' + now + inputs_tail + tail, with the run's own fields on either side
        self._around = (b'"route":' + orjson.dumps(route) + b',"policy":',
                        b',"catalog":' + orjson.dumps({"digest": catalog.digest, "source": catalog.source}))
        self.head = orjson.dumps({"digest": policy[0], "stored_apart": True}).join(self._around)
        self._head_inline: bytes | None = None
        request = ctx.get("request", {})
        rest = orjson.dumps({
            "request": reduce_request(request), "derived_needs": derive_needs(request),
            "state": ctx.get("state", {}), "seed": ctx.get("seed"),
            "pool": _POOLS.get(prep.pool, lambda pool: pool_delta(pool, catalog.candidates(), pre))})
        self.inputs_tail = b"," + rest[1:]
        self.tail = b',"decision":' + orjson.dumps({"digest": decision[0], "stored_apart": True})
        self.row_route = (c.route, choice.profile, c.policy_name, choice.effective.identity)
        self.row_catalog = catalog.digest
        self.uses = 0
        self._apart: tuple[bytes, tuple] | None = None

    def apart(self) -> tuple[bytes, tuple]:
        """(the record's reference, its sections) with the whole shared part stored apart.

        The part (route, policy, catalog, the inputs but ``now_ms``, decision; the policy and the
        decision by their digests) is a ``shared`` section of its own: its text is its JSON, its
        digest the SHA-256 of that text. A record then carries ``"shared":{digest, stored_apart}``
        where ``route`` was and ``"inputs":{"now_ms": ...}`` alone; reading it back puts the part
        in its place (``inflate_shared``). Made on a plan's second record: most first sights
        (a policy built per request, a pool re-stamped between two calls) are never seen again."""
        if self._apart is None:
            route_policy, catalog = self._around
            text = (b"{" + route_policy + orjson.dumps({"digest": self.sections[0][0], "stored_apart": True})
                    + catalog + b',"inputs":{' + self.inputs_tail[1:] + self.tail + b"}")
            dg = hashlib.sha256(text).hexdigest()
            ref = b'"shared":' + orjson.dumps({"digest": dg, "stored_apart": True}) + b',"inputs":{"now_ms":'
            self._apart = (ref, ((dg, text.decode("utf-8")), *self.sections))
        return self._apart


    def head_inline(self) -> bytes:
        """``head`` with the policy section itself in place of its digest."""
        if self._head_inline is None:
            self._head_inline = self.sections[0][1].encode("utf-8").join(self._around)
        return self._head_inline


def _stored_section(section: dict[str, Any]) -> tuple[str, str]:
    return section["digest"], dump_record(section).decode("utf-8")


_SHARED = IdentityMemo(32)   # plan -> {(choice, route naming, catalog) -> _Shared}


def _shared(prep: Any, catalog: Any) -> _Shared:
    by_route = _SHARED.get(prep.plan, lambda plan: {})
    c = prep.contract
    # (a plan may outlive its pool: Policy.plan_and_reasons' volatile keys; the record's inputs are the pool's)
    key = (id(prep.choice), c.route, c.policy_name, c.flow_name, c.pin, id(catalog), id(prep.pool))
    hit = by_route.get(key)
    if hit is None or hit[0] is not prep.choice or hit[1] is not catalog or hit[3] is not prep.pool:
        # few: a plan is shared by the policies that decide alike (Router._same_decision), and a
        # backend that sends a new policy per request would keep one entry (its sections, its
        # policies) per request here; 64 held ~30 MB more under that load than 8
        if len(by_route) > 8:
            by_route.clear()
        hit = by_route[key] = (prep.choice, catalog, _Shared(prep, catalog), prep.pool)
    return hit[2]


def stored_form(run: Any, catalog: Any, *, capture_content: bool = False,
                policy_inline: Callable[[str], bool] | None = None) -> tuple[tuple, bytes, tuple]:
    """A routed call's (summary row in ``COLUMNS`` order, stored record text, sections): the
    record with its policy and decision sections apart, as (digest, text) pairs; from its plan's
    second record on, with the whole shared part apart too (``_Shared.apart``).

    ``policy_inline(digest)`` true keeps the policy section in the record itself (it is then
    not among the sections): what a store does for a policy it has not seen yet, since most of
    those are built per request and never repeat, and a section row costs an index entry at a
    random place (its digest) that an inline copy does not."""
    prep = run.prepared
    sh = _shared(prep, catalog)
    sh.uses += 1
    head, sections = sh.head, sh.sections
    if sh.uses == 1 and policy_inline is not None and policy_inline(sections[0][0]):
        head, sections = sh.head_inline(), sections[1:]
    own = {"schema": SCHEMA, "trace_id": run.trace_id, "kind": "chat", "started_at_ms": prep.started_ms,
           "finished_at_ms": run.finished_ms, "status": run.status, "stream": run.stream}
    if run.session is not None:
        own["session"] = run.session
    if run.caller is not None:
        own["caller"] = run.caller
    usage, cost = run.usage, run.cost
    cost_usd = usd_text(cost.usd)
    latency = {"total_ms": round(run.total_ms, 3), "ttft_ms": None if run.ttft_ms is None else round(run.ttft_ms, 3)}
    after: dict[str, Any] = {
        "path": run.events, "answer": run.answered_by,
        "usage": {"tokens_in": usage.prompt_tokens, "tokens_out": usage.completion_tokens,
                  "tokens_cached": usage.cached_tokens, "tokens_reasoning": usage.reasoning_tokens},
        "cost": {"cost_usd": cost_usd, "cost_basis": cost.basis, "cost_source": cost.source,
                 "failed_attempts": run.failed_costs},
        "latency": latency, "error": run.error}
    if run.deadline_exceeded:
        after["request_deadline_exceeded"] = True
    if run.filters:
        after["filters"] = run.filters
    if capture_content and (run.request_messages is not None or run.response_content is not None):
        after["content"] = {"messages": run.request_messages, "response": run.response_content}
    now_ms = prep.ctx.get("now_ms")
    now = b"null" if now_ms is None else str(now_ms).encode()
    if sh.uses > 1:  # the plan's second record on: its shared part is a section (written once)
        ref, sections = sh.apart()
        text = b"".join((orjson.dumps(own)[:-1], b",", ref, now, b"},", orjson.dumps(after)[1:]))
    else:
        text = b"".join((orjson.dumps(own)[:-1], b",", head, b',"inputs":{"now_ms":', now,
                         sh.inputs_tail, sh.tail, b",", orjson.dumps(after)[1:]))
    a = run.answered_by or {}
    row = (run.trace_id, prep.started_ms or 0, run.finished_ms, run.status, "chat", *sh.row_route,
           a.get("provider_id"), a.get("model_family"), a.get("served_model_id"), usage.prompt_tokens,
           usage.completion_tokens, usage.cached_tokens, cost_usd, cost.basis, latency["total_ms"],
           latency["ttft_ms"], sh.row_catalog, run.session, run.caller)
    return row, text, sections


def inflate_shared(rec: dict[str, Any], section: Mapping[str, Any]) -> dict[str, Any]:
    """A record stored with its shared part apart (``_Shared.apart``), with the part put back in
    its place: the keys in the order the whole record has them."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if k == "shared":
            out["route"], out["policy"], out["catalog"] = section["route"], section["policy"], section["catalog"]
        elif k == "inputs":
            out["inputs"] = {**v, **section["inputs"]}
            out["decision"] = section["decision"]
        else:
            out[k] = v
    return out


def summary_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed columns of a record."""
    route = rec.get("route") or {}
    pol = (rec.get("policy") or {}).get("effective") or {}
    if rec.get("kind") == "flow":
        pol = {"identity": (rec.get("flow") or {}).get("identity")}
    ans = rec.get("answer") or {}
    usage = rec.get("usage") or {}
    cost = rec.get("cost") or {}
    lat = rec.get("latency") or {}
    return {
        "trace_id": rec["trace_id"], "started_at_ms": rec.get("started_at_ms") or 0,
        "finished_at_ms": rec.get("finished_at_ms"), "status": rec.get("status"), "kind": rec.get("kind"),
        "route": route.get("model"), "profile": route.get("profile"), "policy_name": route.get("policy_name"),
        "policy_identity": pol.get("identity"), "provider": ans.get("provider_id"),
        "model_family": ans.get("model_family"), "served_model_id": ans.get("served_model_id"),
        "tokens_in": usage.get("tokens_in"), "tokens_out": usage.get("tokens_out"),
        "tokens_cached": usage.get("tokens_cached"), "cost_usd": cost.get("cost_usd"),
        "cost_basis": cost.get("cost_basis"), "total_ms": lat.get("total_ms"), "ttft_ms": lat.get("ttft_ms"),
        "catalog_digest": (rec.get("catalog") or {}).get("digest"), "session": rec.get("session"),
        "caller": rec.get("caller"),
    }
