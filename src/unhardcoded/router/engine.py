"""One routed call: decide, attempt, fail over — and the record of it.

:meth:`Router.prepare` is pure decision (contract → effective policy → pool →
plan). :meth:`Router.complete` and :meth:`Router.open_stream` then walk the
plan's failover order under the policy's FailPlan, exactly as the reference
engine does:

* a provider disabled for a while is skipped (``skipped``);
* the policy's Xform rewrites the request for every attempt;
* a failure is classified into an error kind; the FailPlan's action decides:
  ``retry_same`` (``attempts``, ``backoff_ms`` as a number or a list indexed by
  attempt, then ``then_action``), ``next_candidate``,
  ``next_provider_same_model``, ``disable_provider`` (for a while), ``abort``;
  ``open_breaker_ms`` opens the provider's breaker for that long;
* provider-fault kinds count against the provider's breaker; request-shaped
  kinds (bad_request, content_filter, context_overflow) do not;
* the whole chain runs under one request deadline; each attempt under its
  own timeout (``timeout_ms``) and, streaming, a first-token timeout.

Every call yields a :class:`Run`: the decision's inputs and outputs, every
attempt, usage, cost, latency. The ``x_router`` a caller receives is a view
of it; the trace store persists it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Sequence

import orjson

from ..catalog.model import Catalog
from ..config import Settings
from ..costs import Cost, CostCalculator, Usage
from ..lang.compiler import Compiler
from ..lang.interpreter import Plan, PlanParts, Ranked, Rejection
from ..memo import IdentityMemo, SecondSight
from ..providers import WIRES
from ..providers.base import CLIENT_FAULT_KINDS, ProviderError, Target, redact
from ..providers.transport import StreamResponse, Transport
from ..runtime.limits import CURRENT_CALLER, CallerLimits
from ..runtime.meter import Meter
from ..runtime.sessions import SessionMeter
from ..runtime.state import STAMPED, RuntimeState, wall_ms
from .contract import Contract, RequestError, parse_contract
from .decision import PolicyChoice, choose_policy, decide
from .filters import apply_directives

log = logging.getLogger("unhardcoded.router")

# how often, at most, a known session's totals (a caller's budget) are read again from a store
# other routers share
SHARED_SESSION_S = 5.0
SHARED_BUDGET_S = 5.0

# Fields of a chat request that steer the router and never reach a provider.
ROUTER_FIELDS = frozenset({"model", "policy_ir", "flow_ir", "requirements", "session", "stream", "stream_options"})
ATTEMPT_KNOBS = ("timeout_ms", "first_token_timeout_ms")

# Error kind of a failed run -> HTTP status, as the reference maps it.
STATUS_BY_KIND = {"no_candidates": 503, "auth_error": 401, "rate_limit": 429, "bad_request": 400,
                  "context_overflow": 400, "timeout": 504, "content_filter": 400}


def status_for(kind: str) -> int:
    return STATUS_BY_KIND.get(kind.removeprefix("exhausted: "), 502)


_IDS = random.Random(int.from_bytes(os.urandom(16), "big"))


def new_trace_id() -> str:
    # time-ordered: 48 bits of milliseconds, then 80 random bits (unique, not secret)
    return f"tr_{int(time.time() * 1000):012x}{_IDS.getrandbits(80):020x}"


@dataclass(slots=True)
class Prepared:
    body: Mapping[str, Any]
    contract: Contract
    choice: PolicyChoice
    ctx: dict[str, Any]
    pool: list[Mapping[str, Any]]
    pre_rejected: list[Rejection]
    plan: Plan
    started_ms: int
    t0: float                          # perf_counter at start
    catalog: Catalog | None = None     # the catalog this decision ran over


@dataclass(slots=True)
class Run:
    """Everything one call decided and did. Serialised by :mod:`unhardcoded.traces`."""

    trace_id: str
    prepared: Prepared | None
    stream: bool = False
    status: str = "pending"            # ok | error | aborted | interrupted | client_disconnected | shutdown
    events: list[dict[str, Any]] = field(default_factory=list)
    answered_by: Mapping[str, Any] | None = None
    usage: Usage = Usage()                 # frozen: the default is shared
    cost: Cost = Cost(None, None)          # frozen: the default is shared
    failed_costs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    total_ms: float = 0.0
    ttft_ms: float | None = None
    finished_ms: int | None = None
    filters: dict[str, Any] | None = None
    deadline_exceeded: bool = False
    request_messages: Any = None       # only with content capture on
    response_content: Any = None       # only with content capture on
    flow: dict[str, Any] | None = None
    session: str | None = None         # the caller's grouping of calls (body "session" or its header)
    caller: str | None = None          # the named caller whose key the request presented
    session_acc: dict[str, Any] | None = None  # the session's totals once this run is counted in them

    # ---- the caller's view ---------------------------------------------
    def ranked_view(self, cap: int | None = 10) -> tuple[list[dict[str, Any]], int]:
        if self.prepared is None:
            return [], 0
        ordered = self.prepared.plan.ordered
        if cap == 10:  # the caller's view: shared by every run of the same plan
            return _RANKED.get(self.prepared.plan, lambda plan: _ranked_rows(plan.ordered[:10])), len(ordered)
        return _ranked_rows(ordered if cap is None else ordered[:cap]), len(ordered)

    def rejected_view(self) -> list[dict[str, Any]]:
        if self.prepared is None:
            return []
        # a plan comes from one pool, and a pool from one set of routes without keys
        pre = self.prepared.pre_rejected
        return _REJECTED.get(self.prepared.plan, lambda plan: _rejected_rows([*pre, *plan.rejected]))

    def decision_trace(self, *, wire: bool = False) -> dict[str, Any]:
        """The decision as the caller sees it. ``wire=True`` puts the parts every run of the same
        plan shares (ranked, rejected, the policy term) in as JSON already written once per plan
        (``orjson.Fragment``): only for a body that is serialised right away by orjson."""
        prep = self.prepared
        if wire and prep is not None:
            ranked, rejected, total, shown = _WIRE_PARTS.get(prep.plan, lambda _p: self._wire_parts())
        else:
            ranked, total = self.ranked_view()
            shown = len(ranked)
            rejected = self.rejected_view()
        out: dict[str, Any] = {"ranked": ranked, "rejected": rejected, "decision_path": self.events,
                               "started_at_ms": self.prepared.started_ms if self.prepared else None,
                               "total_latency_ms": round(self.total_ms, 3)}
        if total > shown:
            out["ranked_total"] = total
        if self.prepared is not None:
            eff = self.prepared.choice.effective
            out["policy_fingerprint"] = eff.fingerprint
            out["policy_term"] = (_TERM_WIRE.get(eff, lambda e: orjson.Fragment(orjson.dumps(e.term))) if wire
                                  else eff.term)
        if self.deadline_exceeded:
            out["request_deadline_exceeded"] = True
        return out

    def _wire_parts(self) -> tuple[Any, Any, int, int]:
        """The caller's ranked and rejected lists as JSON written once, with the ranked counts."""
        ranked, total = self.ranked_view()
        return (orjson.Fragment(orjson.dumps(ranked)), orjson.Fragment(orjson.dumps(self.rejected_view())),
                total, len(ranked))

    def x_router(self, *, wire: bool = False, compact_at: int | None = None,
                 sessions: SessionMeter | None = None) -> dict[str, Any]:
        """What the caller is told of this run. ``compact_at``: the input size (prompt tokens) from
        which ``compact`` says the conversation is due for ``POST /v1/compact``. ``session_acc``:
        the session's totals with this run (counted at its end; ``sessions`` tells them before,
        for a stream's last chunk)."""
        a = self.answered_by or {}
        out: dict[str, Any] = {
            "provider": a.get("provider_id"), "model_family": a.get("model_family"),
            "served_model_id": a.get("served_model_id"), "served_by": a.get("served_by"),
            "price_in": a.get("price_in"), "price_out": a.get("price_out"),
            "cost_usd": None if self.cost.usd is None else float(self.cost.usd), "cost_basis": self.cost.basis,
            "tokens_cached": self.usage.cached_tokens,
            "trace_id": self.trace_id,
        }
        if self.prepared is not None:
            out.update(_policy_keys(self.prepared.choice, self.prepared.contract))
        out["decision_trace"] = self.decision_trace(wire=wire)
        out["compact"] = compact_at is not None and self.usage.prompt_tokens >= compact_at
        acc = self.session_acc
        if acc is None and sessions is not None and self.session is not None:
            acc = sessions.preview(self.caller, self.session, **self.session_counts())
        if acc is not None:
            out["session_acc"] = acc
        return out

    def session_counts(self) -> dict[str, Any]:
        u = self.usage
        return {"tokens_in": u.prompt_tokens, "tokens_out": u.completion_tokens, "tokens_cached": u.cached_tokens,
                "cost_usd": self.cost.usd}


def _policy_keys(choice: PolicyChoice, contract: Contract) -> dict[str, Any]:
    """x_router's policy and route keys: the same for every run of one choice and route."""
    return _POLICY_KEYS.get(choice, lambda ch: _policy_keys_of(ch, contract),
                            key=(contract.route, contract.policy_name))


def _policy_keys_of(choice: PolicyChoice, contract: Contract) -> dict[str, Any]:
    eff = choice.effective
    out: dict[str, Any] = {"policy_fingerprint": eff.fingerprint, "policy_identity": eff.identity,
                           "policy_id": eff.short_id, "policy_source": choice.source}
    if choice.sent is not None:
        out["policy_sent"] = {"identity": choice.sent.identity, "id": choice.sent.short_id,
                              "fingerprint": choice.sent.fingerprint, "sort": choice.sent.sort}
    out["route"] = contract.route
    if contract.policy_name:
        out["policy_name"] = contract.policy_name
    return out


_RANKED = IdentityMemo(32)
_REJECTED = IdentityMemo(32)
_WIRE_PARTS = IdentityMemo(32)
# (choice, route naming) -> x_router's policy keys; few: each entry holds its choice, and a policy
# built per request makes a new one every call (past 128 that repeat, the keys cost ~3 us to make)
_POLICY_KEYS = IdentityMemo(128)
_ANSWERED = IdentityMemo(1024)   # candidate -> who answered (candidates are shared, stamped pools renewed)
_TERM_WIRE = IdentityMemo(64)
_OBSERVED = frozenset(STAMPED)  # what a re-stamp may change in a candidate (Policy.plan_and_reasons' volatile)


def _ranked_rows(ordered: Sequence[Ranked]) -> list[dict[str, Any]]:
    return [{"provider_id": r.candidate["provider_id"], "model_family": r.candidate["model_family"],
             "served_model_id": r.candidate.get("served_model_id"), "score": _finite(r.score),
             "tier": r.candidate.get("tier")} for r in ordered]


def _rejected_rows(rejected: Sequence[Rejection]) -> list[dict[str, Any]]:
    return [{"provider": r.provider, "model": r.model, "reason": r.reason} for r in rejected]


def _finite(v: Any) -> Any:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


class RouterFailure(Exception):
    """A run that ends without an answer; carries its Run for the error body."""

    def __init__(self, kind: str, message: str, run: Run, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.run = run
        self.status = status or status_for(kind)


class TraceSink:
    """Where finished runs go. The default keeps the last few in memory."""

    def __init__(self, keep: int = 256) -> None:
        from collections import OrderedDict
        self.keep = keep
        self.runs: "OrderedDict[str, Run]" = OrderedDict()

    def submit(self, run: Run) -> None:
        self.runs[run.trace_id] = run
        while len(self.runs) > self.keep:
            self.runs.popitem(last=False)


@dataclass(slots=True, eq=False)
class _Route:
    """What a plain request's model string and policy text decide once (see ``Router._route_of``);
    shared by every such request: read-only but for the last plan it saw."""

    contract: Contract
    choice: PolicyChoice
    view: dict[str, Any]                # ctx.request
    pool: Any = None                    # the last call's stamped pool, state key and plan
    state_key: Any = None
    plan: Plan | None = None


@dataclass(slots=True)
class _Loop:
    """The failover walk's state (the reference engine's machine)."""

    cursor: int = 0
    attempts: int = 0
    last_kind: str | None = None
    tried: int = 0


class Router:
    def __init__(self, catalog: Catalog, settings: Settings | None = None, *, transport: Transport | None = None,
                 runtime: RuntimeState | None = None, sink: Any = None, clock: Any = wall_ms,
                 sleep: Any = asyncio.sleep) -> None:
        self.settings = settings or Settings()
        self.transport = transport or Transport()
        self.runtime = runtime or RuntimeState(clock=clock)
        self.sink = sink or TraceSink()
        self.meter = Meter()
        self.sessions = SessionMeter()
        self._background: set[asyncio.Task] = set()  # reads of a shared store's totals, in flight
        self._budget_read: dict[str, float] = {}     # caller -> when its shared budget was last read
        self.limits = CallerLimits(self.settings.callers, clock_ms=clock)
        self.clock = clock
        self.sleep = sleep
        self.costs = CostCalculator(_price_library())
        self.cutting_off = False
        self.set_catalog(catalog)

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.compiler = Compiler(catalog.schema)
        self._credentialed: tuple[list[Mapping[str, Any]], list[Rejection]] | None = None
        self._plans: "OrderedDict[Any, tuple[Any, Plan]]" = OrderedDict()
        self._plans_pool: Any = None
        self._decisions: dict[tuple, Plan] = {}  # plans of the current pool by what they decide
        self._decided: dict[int, tuple[Plan, Plan]] = {}  # id(plan) -> (plan, the plan it decides as)
        self._parts: dict[tuple, PlanParts] = {}  # per inputs (plan key without the policy): what plans share
        # plan key without the pool -> (pool, the filter's reasons over it, the plan): outlives a re-stamp
        self._priors: SecondSight = SecondSight(32, probation=8, lru=True)
        # kept for long only from a second sight on: most policies built per request never come back
        self._choices: SecondSight = SecondSight(1024)  # (sent identity, profile) -> PolicyChoice
        self._routes: SecondSight = SecondSight(1024)   # plain requests' (model, profile, policy text) -> route
        self._targets: dict[tuple[str, str, str], Target] = {}
        self._caller_envelopes = self._admit_caller_envelopes()

    def _admit_caller_envelopes(self) -> dict[str, Any]:
        """Each named caller's envelope, admitted against this catalog's fields (a Pred, or the
        router refuses to start, at the setting's path)."""
        from ..config import ConfigError
        from ..lang.errors import AdmissionError
        out: dict[str, Any] = {}
        for name, spec in self.settings.callers.items():
            if spec.envelope is None:
                continue
            where = ("callers", name, "envelope")
            try:
                out[name] = self.compiler.compile(spec.envelope, want="Pred", path=where)
            except AdmissionError as exc:
                raise ConfigError(exc.code, f"callers.{name}.envelope: {exc.message}", exc.parts) from None
        return out

    def _caller_envelope(self) -> Any:
        """The envelope of the request's named caller, or None (no caller, or one without)."""
        envelopes = self._caller_envelopes
        return envelopes.get(CURRENT_CALLER.get()) if envelopes else None

    def cut_off(self) -> None:
        """The server's shutdown grace is over: calls cancelled from now on were cut off by the
        shutdown, not left by their clients."""
        self.cutting_off = True

    def cancelled_status(self) -> str:
        return "shutdown" if self.cutting_off else "client_disconnected"

    async def close(self) -> None:
        await self.transport.close()
        close = getattr(self.sink, "close", None)
        if close is not None:
            res = close()
            if asyncio.iscoroutine(res):
                await res

    # ------------------------------------------------------------------ decide
    def _credentialed_pool(self) -> tuple[list[Mapping[str, Any]], list[Rejection]]:
        """The catalog's routes the caller holds a key for (computed once per catalog)."""
        if self._credentialed is None:
            self._credentialed = self._compute_credentialed()
        return self._credentialed

    def _compute_credentialed(self) -> tuple[list[Mapping[str, Any]], list[Rejection]]:
        keys = self.settings.keys
        pool: list[Mapping[str, Any]] = []
        rejected: list[Rejection] = []
        for c in self.catalog.candidates():
            p = self.catalog.providers[c["provider_id"]]
            if p.key_env and keys.get(p.key_env) is None:
                rejected.append(Rejection(c["provider_id"], c["model_family"], "no_credentials", c))
            else:
                pool.append(c)
        return pool, rejected

    def prepare(self, body: Mapping[str, Any], *, path_profile: str | None = None,
                require_keys: bool = True) -> Prepared:
        t0 = time.perf_counter()
        route = self._route_of(body, path_profile)
        if route is not None:
            contract, choice, view = route.contract, route.choice, route.view
        else:
            contract = parse_contract(body, path_profile=path_profile)
            choice = choose_policy(contract, self.catalog, self.compiler, self._choices, self._caller_envelope())
            view = contract.request_view(body)
        now = self.clock()
        if require_keys:
            pool, pre = self._credentialed_pool()
        else:
            pool, pre = self.catalog.candidates(), []
        pool = self.runtime.stamp(pool, now)
        state, state_key = self.runtime.snapshot_keyed(now)
        ctx: dict[str, Any] = {"request": view, "state": state, "now_ms": now}
        if contract.seed is not None:
            ctx["seed"] = contract.seed
        if route is not None and route.pool is pool and route.state_key is state_key:
            plan = route.plan  # the same policy, request view, pool and state as the last call: its plan
        else:
            plan = self._plan(choice, pool, ctx, contract.pin, state_key)
            if route is not None:
                route.pool, route.state_key, route.plan = pool, state_key, plan
        return Prepared(body, contract, choice, ctx, pool, pre, plan, now, t0, self.catalog)

    def _route_of(self, body: Mapping[str, Any], path_profile: str | None) -> "_Route | None":
        """The contract, policy and request view of a plain request, remembered by what they
        depend on: the model string, the path's profile and the policy's JSON text.

        A request is plain when nothing else in it bears on them: no ``requirements``, ``seed``
        or ``flow_ir`` key, no tools, no response format, no content parts (so no images).
        Anything else takes the general path (None). A first sight parses the contract and
        chooses the policy as the general path does; if either refuses, nothing is kept."""
        if "requirements" in body or "seed" in body or "flow_ir" in body:
            return None
        tools = body.get("tools")
        if (tools and type(tools) is list) or type(body.get("response_format")) is dict:
            return None
        msgs = body.get("messages")
        if type(msgs) is not list:
            return None
        for m in msgs:
            if type(m) is not dict or type(m.get("content")) is list:
                return None
        model = body.get("model")
        term = body.get("policy_ir")
        if (model is not None and type(model) is not str) or (term is not None and type(term) is not list):
            return None
        try:
            text = None if term is None else orjson.dumps(term)
        except (TypeError, orjson.JSONEncodeError, RecursionError):
            return None
        envelope = self._caller_envelope()
        key = (model, path_profile, text) if envelope is None else (model, path_profile, text, envelope.identity)
        routes = self._routes
        hit = routes.get(key)
        if hit is not None:
            return hit
        hit = routes.find(key)  # seen once before
        if hit is not None:
            return hit
        contract = parse_contract(body, path_profile=path_profile)   # may refuse: nothing is kept
        choice = choose_policy(contract, self.catalog, self.compiler, self._choices, envelope)
        return routes.put(key, _Route(contract, choice, contract.request_view(body)))

    def _plan(self, choice: PolicyChoice, pool: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any],
              pin: tuple[str, str] | None, state_key: tuple) -> Plan:
        """decide(), memoised: a plan is a pure function of the policy, the pool, the request's
        requirements, the runtime state, the seed and the pin (no operation reads the clock)."""
        if pool is not self._plans_pool:
            # the stamped pool is rebuilt as observations arrive (at most every 100 ms): plans of an
            # older pool can never be hit again, and each holds a whole pool alive
            self._plans.clear()
            self._decisions.clear()
            self._decided.clear()
            self._parts.clear()
            self._plans_pool = pool
            for route in self._routes.values():  # nor can their last plans: let the old pool go
                route.pool = route.state_key = route.plan = None
        key = _plan_key(choice.effective.identity, pool, ctx, pin, state_key)
        if key is not None:
            hit = self._plans.get(key)
            if hit is not None and hit[0] is pool:  # the entry holds its pool: ids are never reused under it
                self._plans.move_to_end(key)
                return hit[1]
        if key is None or pin is not None:
            plan = decide(choice.effective.policy, pool, ctx, pin)
            if key is not None:
                plan = self._same_decision(plan, key[1:])
        else:
            # what policies planned over this pool and context share (Policy.plan): per inputs
            parts = self._parts.get(key[1:])
            if parts is None:
                if len(self._parts) >= 16:
                    self._parts.clear()
                parts = self._parts[key[1:]] = PlanParts(len(pool))
            # and this policy's reasons over an earlier pool in the same context: a re-stamped
            # pool differs from it only where routes served since (RuntimeState.stamp)
            # (a plan whose routes changed only in what the runtime observes, where the policy
            # decides as before without reading it, is the plan before: see plan_and_reasons)
            again = (key[0], *key[2:])
            prior = self._priors.find(again)
            plan, reasons = choice.effective.policy.plan_and_reasons(pool, ctx, parts, prior, _OBSERVED)
            if prior is None or plan is not prior[2]:  # (the plan before was shared when it was made)
                plan = self._same_decision(plan, key[1:])
            self._priors.put(again, (pool, reasons, plan))
        if key is not None:
            self._plans[key] = (pool, plan)
            if len(self._plans) > 512:
                self._plans.popitem(last=False)
        return plan

    def _same_decision(self, plan: Plan, inputs: tuple) -> Plan:
        """A plan equal to one made before from the same inputs (pool, pin, seed, request view,
        runtime state: the plan key without the policy) is that one: policies that differ where
        no route is affected (a threshold no route is near) decide alike, and what is made once
        per plan (its trace section, x_router's lists) is then made once for all. Equal: the
        same candidates, in the same order, with the same scores (by ``repr``, so 0.0 is not
        -0.0), and the same rejections with the same reasons. (Ids are safe in the key: the plan
        kept under it holds every candidate they name, and the memo is emptied when the pool
        changes.)"""
        known = self._decided.get(id(plan))
        if known is not None and known[0] is plan:  # this very plan (Policy.plan shares them): its key is known
            return known[1]
        key = (inputs, tuple([id(r.candidate) for r in plan.ordered]), tuple([repr(r.score) for r in plan.ordered]),
               tuple([(id(x.candidate), x.reason) for x in plan.rejected]))
        hit = self._decisions.get(key)
        if hit is None:
            if len(self._decisions) >= 256:
                self._decisions.clear()
                self._decided.clear()
            hit = self._decisions[key] = plan
        if len(self._decided) >= 256:  # each holds a plan, as long as the pool: as few as the decisions
            self._decided.clear()
        self._decided[id(plan)] = (plan, hit)  # holds the plan: the id is its own while here
        return hit

    # ------------------------------------------------------------------ attempt
    def _target(self, cand: Mapping[str, Any]) -> Target:
        """Where an attempt on ``cand`` goes; one Target per route and key, made once."""
        p = self.catalog.providers[cand["provider_id"]]
        key = self.settings.keys.get(p.key_env)
        memo = (p.id, cand["served_model_id"], cand["model_family"])
        hit = self._targets.get(memo)
        if hit is not None and hit.api_key == key:
            return hit
        t = Target(provider_id=p.id, wire=p.wire, base_url=p.base_url, model_id=cand["served_model_id"],
                   api_key=key, headers=p.headers, family=cand["model_family"])
        if len(self._targets) > 4096:
            self._targets.clear()
        self._targets[memo] = t
        return t

    def _attempt_request(self, prep: Prepared, cand: Mapping[str, Any], run: Run) -> tuple[dict[str, Any], float, float | None]:
        base = {k: v for k, v in prep.body.items() if k not in ROUTER_FIELDS}
        req = prep.choice.effective.policy.xform(base, cand, prep.ctx)
        if not isinstance(req, dict):
            req = dict(base)
        if "_filters" in req:
            req, note = apply_directives(req)
            run.filters = note
        timeout_ms = _positive(req.get("timeout_ms")) or self.settings.attempt_timeout_ms
        ftt = _positive(req.get("first_token_timeout_ms")) or self.settings.first_token_timeout_ms
        for k in ATTEMPT_KNOBS:
            req.pop(k, None)
        return req, timeout_ms / 1000.0, (ftt / 1000.0 if ftt else None)

    def _answered(self, cand: Mapping[str, Any]) -> Mapping[str, Any]:
        """Who answered, as runs record it: one read-only mapping per candidate."""
        return _ANSWERED.get(cand, self._answer_of)

    @staticmethod
    def _answer_of(cand: Mapping[str, Any]) -> Mapping[str, Any]:
        offer = cand.get("offer")
        served_by = offer.get("peer_id") if isinstance(offer, Mapping) and offer.get("peer_id") else cand["provider_id"]
        return {"provider_id": cand["provider_id"], "model_family": cand["model_family"],
                "served_model_id": cand.get("served_model_id"), "served_by": served_by,
                "price_in": cand.get("price_in"), "price_out": cand.get("price_out"), "tier": cand.get("tier")}

    def _cost(self, cand: Mapping[str, Any], usage: Usage) -> Cost:
        route = self.catalog.route(cand["provider_id"], cand["model_family"])
        provider = self.catalog.providers[cand["provider_id"]]
        if route is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0
                             and usage.reported_cost is None):
            # no usage reported (a real call always has prompt tokens): the cost is unknown, not zero
            return Cost(None, None)
        return self.costs.cost(usage, route.price, provider.pricing_id, route.model_id)

    async def _walk(self, prep: Prepared, run: Run, attempt: Any, *, self_bounded: bool = False) -> Any:
        """Walk the failover order; ``attempt(cand, target, request, timeouts)`` returns a result or raises.

        ``self_bounded``: the attempt ends itself with a ``timeout`` ProviderError once its first
        timeout has passed, so a request deadline nearer than the attempt timeout is handed to it
        as that timeout (one timer per call) instead of being wrapped around it."""
        ordered: Sequence[Ranked] = prep.plan.ordered
        policy = prep.choice.effective.policy
        deadline = prep.t0 + self.settings.request_deadline_ms / 1000.0
        st = _Loop()
        while st.cursor < len(ordered):
            cand = ordered[st.cursor].candidate
            pid, fam = cand["provider_id"], cand["model_family"]
            if self.runtime.is_disabled(pid):
                run.events.append({"event": "skipped", "provider_id": pid, "model_family": fam,
                                   "reason": "disabled_provider"})
                st.cursor += 1
                st.attempts = 0
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                run.deadline_exceeded = True
                raise RouterFailure("timeout", "the request deadline passed before an answer", run)
            request, timeout_s, ftt_s = self._attempt_request(prep, cand, run)
            target = self._target(cand)
            t_start = time.perf_counter()
            event: dict[str, Any] = {"event": "attempted", "provider_id": pid, "model_family": fam,
                                     "served_model_id": cand.get("served_model_id"), "attempt": st.attempts + 1}
            run.events.append(event)
            st.tried += 1
            deadline_first = remaining < timeout_s  # the request's deadline comes first
            try:
                if not deadline_first:
                    result = await attempt(cand, target, request, (timeout_s, ftt_s))
                elif self_bounded:
                    result = await attempt(cand, target, request, (remaining, ftt_s))
                else:
                    async with asyncio.timeout(remaining):
                        result = await attempt(cand, target, request, (timeout_s, ftt_s))
                event["latency_ms"] = round((time.perf_counter() - t_start) * 1000, 3)
                return cand, result, event
            except (TimeoutError, asyncio.TimeoutError):
                err = ProviderError("timeout", "the request deadline passed during this attempt")
                run.deadline_exceeded = True
            except ProviderError as exc:
                # kept past this block, so without its traceback: the traceback holds this frame,
                # and the frame would hold it (a cycle keeping the run alive until a collection)
                err = exc.with_traceback(None)
                # a timeout at the deadline (not, say, a connect timeout well before it)
                if deadline_first and self_bounded and exc.kind == "timeout" \
                        and time.perf_counter() >= deadline - 0.01:
                    err = ProviderError("timeout", "the request deadline passed during this attempt")
                    run.deadline_exceeded = True
            except asyncio.CancelledError:
                event["latency_ms"] = round((time.perf_counter() - t_start) * 1000, 3)
                event["error_kind"] = "cancelled"
                raise
            except Exception as exc:  # a bug in a wire must not become a 500
                err = ProviderError("bad_response", f"unreadable provider answer ({type(exc).__name__})")
            latency = (time.perf_counter() - t_start) * 1000
            event.update({"latency_ms": round(latency, 3), "error_kind": err.kind, "http_status": err.status,
                          "error_message": redact(err.message, *self.settings.keys.all_values())[:300]})
            st.last_kind = err.kind
            action = policy.classify(err.kind)
            verb = action.get("action") or "next_candidate"
            self.runtime.record_failure(pid, fam, err.kind, latency, _positive(action.get("open_breaker_ms")))
            if run.deadline_exceeded:
                raise RouterFailure("timeout", "the request deadline passed", run)
            if verb == "abort":
                run.status = "aborted"
                raise RouterFailure(err.kind, f"aborted by the policy after {err.kind}", run)
            if verb == "disable_provider":
                self.runtime.disable(pid, err.kind, _positive(action.get("disable_ms")))
                run.events.append({"event": "provider_disabled", "provider_id": pid, "reason": err.kind})
                st.cursor += 1
                st.attempts = 0
            elif verb == "retry_same":
                limit = action.get("attempts")
                limit = 1 if limit is None else limit
                st.attempts += 1
                if st.attempts <= limit:
                    back = _backoff(action, st.attempts)
                    if err.retry_after_s is not None:
                        back = max(back, err.retry_after_s * 1000)
                    run.events.append({"event": "retry_scheduled", "provider_id": pid, "model_family": fam,
                                       "attempt": st.attempts, "backoff_ms": back})
                    if back > 0:
                        left = deadline - time.perf_counter()
                        if back / 1000.0 >= left:
                            run.deadline_exceeded = True
                            raise RouterFailure("timeout", "the backoff would pass the request deadline", run)
                        await self.sleep(back / 1000.0)
                    continue
                st.attempts = 0
                if (action.get("then_action") or "next_candidate") == "abort":
                    run.status = "aborted"
                    raise RouterFailure(err.kind, f"aborted by the policy after retrying {err.kind}", run)
                st.cursor += 1
            elif verb == "next_provider_same_model":
                nxt = next((j for j in range(st.cursor + 1, len(ordered))
                            if ordered[j].candidate["model_family"] == fam), len(ordered))
                st.cursor = nxt
                st.attempts = 0
            else:
                st.cursor += 1
                st.attempts = 0
        if st.tried == 0 and not ordered:
            raise RouterFailure("no_candidates", "no route passes this policy", run)
        kind = f"exhausted: {st.last_kind or 'no_candidates'}"
        raise RouterFailure(kind, "every route failed", run)

    # ------------------------------------------------------------------ calls
    def _start(self, body: Mapping[str, Any], path_profile: str | None, stream: bool, on_run: Any = None) -> Run:
        run = Run(new_trace_id(), None, stream=stream)
        run.prepared = self.prepare(body, path_profile=path_profile)
        session = body.get("session")
        if type(session) is str:
            run.session = session
        run.caller = CURRENT_CALLER.get()
        self.meter.started += 1
        if on_run is not None:
            on_run(run)
        if self.settings.capture_content:
            run.request_messages = body.get("messages")
        return run

    def _finish(self, run: Run, record: bool = True) -> None:
        if run.prepared is not None:
            run.total_ms = (time.perf_counter() - run.prepared.t0) * 1000
        run.finished_ms = self.clock()
        self.meter.finish(run)
        if run.caller is not None:
            self.limits.settle(run.caller, run.usage.total_tokens, run.cost.usd, run.finished_ms,
                               answered=run.status == "ok")
        if not record:
            return
        if run.session is not None:
            run.session_acc = self.sessions.add(run.caller, run.session, **run.session_counts())
        try:
            self.sink.submit(run)
        except Exception:  # pragma: no cover - the store must never fail a call
            pass

    async def _seed_for(self, body: Mapping[str, Any]) -> None:
        session = body.get("session")
        if type(session) is str:
            caller = CURRENT_CALLER.get()
            if not self.sessions.known(caller, session):
                await self.seed_session(caller, session)
            elif getattr(self.sink, "shared", False):
                self._refresh_session(caller, session)

    def _refresh_session(self, caller: str | None, session: str) -> None:
        """A store other routers share: read a known session's totals again once they are
        ``SHARED_SESSION_S`` old, in the background (the call does not wait), and merge them."""
        if getattr(self.sink, "failing_since_ms", None) is not None:
            return
        if not self.sessions.due(caller, session, time.monotonic(), SHARED_SESSION_S):
            return
        self._read_in_background(lambda: self.sink.session_totals(session, caller),
                                 lambda stored: self.sessions.merge(caller, session, stored), "a session's totals")

    def share_budget(self, caller: str) -> None:
        """A caller admitted, with a store other routers share (PostgreSQL): its budget is spent
        on all of them. At most every ``SHARED_BUDGET_S``, read what the store holds of its
        window in the background and merge it (``CallerLimits.merge``: the store's count plus
        this router's since the reading began). The call does not wait for it."""
        if not getattr(self.sink, "shared", False) or getattr(self.sink, "failing_since_ms", None) is not None:
            return
        spec = self.limits.callers.get(caller)
        if spec is None or spec.budget_usd is None:
            return
        now = time.monotonic()
        if now - self._budget_read.get(caller, -SHARED_BUDGET_S) < SHARED_BUDGET_S:
            return
        self._budget_read[caller] = now
        at_read = self.limits.counted(caller)
        if at_read is None:
            return
        self._read_in_background(lambda: self.sink.caller_usage(caller, at_read[0], int(time.time() * 1000)),
                                 lambda got: self.limits.merge(caller, at_read, *got[:3]),
                                 f"caller {caller}'s shared budget")

    def _read_in_background(self, read: Any, merge: Any, what: str) -> None:
        """``read()`` (a store read) in a worker thread, its result to ``merge``; the call that
        prompted it does not wait, and a failure is logged, never the call's."""
        async def run() -> None:
            try:
                got = await asyncio.to_thread(read)
            except Exception as exc:  # the store must never fail a call: this router's own count goes on
                log.warning("could not read %s from the trace store: %s", what, exc)
                return
            merge(got)
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def seed_session(self, caller: str | None, session: str | None) -> None:
        """Start a session this process has not counted from what the trace store holds of it
        (once per session; ``runtime/sessions.py``)."""
        if session is None:
            return
        if self.sessions.known(caller, session):
            if getattr(self.sink, "shared", False):
                self._refresh_session(caller, session)
            return
        read = getattr(self.sink, "session_totals", None)
        stored = None
        if read is not None and getattr(self.sink, "failing_since_ms", None) is not None:
            # the store cannot commit now (a database down): a call does not wait on it to read
            log.warning("session totals not read: the trace store is failing; this session is counted from here")
            return
        if read is not None:
            try:
                stored = await asyncio.to_thread(read, session, caller)
            except Exception as exc:  # the store must never fail a call: counted from here, and said
                log.warning("could not read session totals from the trace store: %s", exc)
                return
        self.sessions.seed(caller, session, stored, time.monotonic())

    async def complete(self, body: Mapping[str, Any], *, path_profile: str | None = None, record: bool = True,
                       on_run: Any = None, wire: bool = False) -> tuple[dict[str, Any], Run]:
        """A non-streaming call. Returns (chat.completion with x_router, run); raises RouterFailure.

        ``wire=True``: the completion goes straight to orjson (the HTTP answer), so x_router may
        carry pre-serialised parts (see :meth:`Run.decision_trace`).

        ``record=False`` keeps the run out of the trace store (a flow stores its nodes in its own
        record); ``on_run`` is called with the run as soon as it exists.
        """
        if record:  # before the run starts: a caller gone while the store is read leaves no run open
            await self._seed_for(body)
        run = self._start(body, path_profile, stream=False, on_run=on_run)

        async def attempt(cand: Mapping[str, Any], target: Target, request: dict[str, Any], timeouts: tuple) -> Any:
            codec = WIRES[target.wire]
            http = codec.build(request, target, False)
            resp = await self.transport.send(http, timeout_s=timeouts[0])
            if resp.status >= 300:
                raise codec.error(resp.status, resp.headers, resp.body, target=target)
            return codec.parse(resp.status, resp.headers, resp.body, target)

        try:
            cand, completion, event = await self._walk(run.prepared, run, attempt,  # type: ignore[arg-type]
                                                       self_bounded=True)
        except RouterFailure as failure:
            run.status = run.status if run.status == "aborted" else "error"
            run.error = {"kind": failure.kind, "message": failure.message, "status": failure.status}
            self._finish(run, record)
            raise
        except asyncio.CancelledError:
            run.status = self.cancelled_status() if record else "cancelled"
            self._finish(run, record)
            raise
        usage = Usage.from_openai(completion.get("usage"))
        self._success(run, cand, usage, event)
        completion["model"] = cand.get("served_model_id") or completion.get("model")
        if not completion.get("created"):
            completion["created"] = int(time.time())
        if self.settings.capture_content:
            run.response_content = [c.get("message") for c in completion.get("choices", [])]
        self._finish(run, record)
        completion["x_router"] = run.x_router(wire=wire, compact_at=self.settings.compact_at_tokens)
        return completion, run

    def _success(self, run: Run, cand: Mapping[str, Any], usage: Usage, event: dict[str, Any]) -> None:
        run.status = "ok"
        run.answered_by = self._answered(cand)
        run.usage = usage
        run.cost = self._cost(cand, usage)
        gen_s = (event.get("latency_ms") or 0) / 1000.0
        tok_s = usage.completion_tokens / gen_s if gen_s > 0 and usage.completion_tokens else None
        self.runtime.record_success(cand["provider_id"], cand["model_family"], event.get("latency_ms") or 0.0, tok_s)

    async def open_stream(self, body: Mapping[str, Any], *, path_profile: str | None = None,
                          wire: bool = False) -> "RoutedStream":
        """Fail over until a route sends its first content; then the caller owns the stream.

        ``wire=True``: each event goes straight to orjson, so the last one's x_router may carry
        pre-serialised parts (as :meth:`complete` with ``wire=True``)."""
        await self._seed_for(body)
        run = self._start(body, path_profile, stream=True)

        async def attempt(cand: Mapping[str, Any], target: Target, request: dict[str, Any], timeouts: tuple) -> Any:
            codec = WIRES[target.wire]
            http = codec.build(request, target, True)
            t_first = time.perf_counter()
            sresp = None
            try:
                # the first-token clock runs from the request to the first content
                async with asyncio.timeout(timeouts[1]):
                    sresp = await self.transport.open_stream(http, timeout_s=timeouts[0])
                    if sresp.status >= 300:
                        raise codec.error(sresp.status, sresp.headers, await sresp.read_all(), target=target)
                    decoder = codec.stream(target)
                    chunks_it = sresp.chunks().__aiter__()
                    first: list[dict[str, Any]] = []
                    while True:
                        try:
                            data = await chunks_it.__anext__()
                        except StopAsyncIteration:
                            first.extend(decoder.close())
                            return _Opened(sresp, chunks_it, decoder, first, finished=True, t_first=t_first)
                        got = decoder.feed(data)
                        first.extend(got)
                        if any(_has_content(c) for c in got):
                            return _Opened(sresp, chunks_it, decoder, first, finished=False,
                                           t_first=time.perf_counter())
            except (TimeoutError, asyncio.TimeoutError):
                if sresp is not None:
                    await sresp.close()
                raise ProviderError("timeout", "no first token in time") from None
            except BaseException:
                if sresp is not None:
                    await sresp.close()
                raise

        try:
            cand, opened, event = await self._walk(run.prepared, run, attempt)  # type: ignore[arg-type]
        except RouterFailure as failure:
            run.status = run.status if run.status == "aborted" else "error"
            run.error = {"kind": failure.kind, "message": failure.message, "status": failure.status}
            self._finish(run)
            raise
        except asyncio.CancelledError:
            run.status = self.cancelled_status()
            self._finish(run)
            raise
        run.ttft_ms = (opened.t_first - run.prepared.t0) * 1000  # type: ignore[union-attr]
        return RoutedStream(self, run, cand, opened, event, wire=wire)


@dataclass(slots=True)
class _Opened:
    sresp: StreamResponse
    chunks_it: AsyncIterator[bytes]
    decoder: Any
    first: list[dict[str, Any]]
    finished: bool
    t_first: float


class RoutedStream:
    """A committed stream: iterate :meth:`events` for SSE payloads (dicts), ending with usage + x_router."""

    def __init__(self, router: Router, run: Run, cand: Mapping[str, Any], opened: _Opened, event: dict[str, Any],
                 *, wire: bool = False) -> None:
        self.wire = wire
        self.router = router
        self.run = run
        self.cand = cand
        self.opened = opened
        self.event = event
        self.served = cand.get("served_model_id")
        self._usage: Any = None
        self._done = False
        self._entered = False
        self._created = int(time.time())

    async def abandon(self) -> None:
        """Called once the caller is done with the stream, read or not. A stream whose
        :meth:`events` were never entered (the caller went away between the first token and
        its first read) would otherwise keep its upstream connection open and its run
        unrecorded: close the one, record the other as cancelled. Once entered, ``events``
        does both itself."""
        if self._entered:
            return
        self._entered = True
        await self.opened.sresp.close()
        if self.run.status == "pending":
            self.run.status = self.router.cancelled_status()
        self.router._finish(self.run)

    def _rewrite(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if not chunk.get("created"):
            chunk["created"] = self._created
        if chunk.get("usage") and not chunk.get("choices"):
            self._usage = chunk["usage"]
            return None
        if chunk.get("usage"):
            self._usage = chunk["usage"]
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        chunk["model"] = self.served
        return chunk

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Chunks for the client. The last is the usage + x_router chunk; an upstream cut ends with an error event."""
        self._entered = True
        captured: list[str] = []
        capture = self.router.settings.capture_content
        try:
            for c in self.opened.first:
                out = self._rewrite(c)
                if out is not None:
                    if capture:
                        captured.append(_delta_text(out))
                    yield out
            if not self.opened.finished:
                try:
                    async for data in self.opened.chunks_it:
                        for c in self.opened.decoder.feed(data):
                            out = self._rewrite(c)
                            if out is not None:
                                if capture:
                                    captured.append(_delta_text(out))
                                yield out
                    for c in self.opened.decoder.close():
                        out = self._rewrite(c)
                        if out is not None:
                            yield out
                except ProviderError as exc:
                    self._interrupted(exc)
                    yield {"error": {"message": f"upstream stream from {self.cand['provider_id']} failed after "
                                                f"content was sent: {exc.kind}", "type": "router_error",
                                     "code": "stream_interrupted"}}
                    return
            self.event["latency_ms"] = round((time.perf_counter() - self.opened.t_first) * 1000 + (self.run.ttft_ms or 0), 3)
            usage = Usage.from_openai(self._usage)
            self.router._success(self.run, self.cand, usage, self.event)
            if capture:
                self.run.response_content = "".join(captured)
            self.run.total_ms = (time.perf_counter() - self.run.prepared.t0) * 1000  # type: ignore[union-attr]
            yield {"id": f"chatcmpl-{self.run.trace_id}", "object": "chat.completion.chunk",
                   "created": int(time.time()), "model": self.served, "choices": [],
                   "usage": _usage_json(usage), "x_router": self.run.x_router(
                       wire=self.wire, compact_at=self.router.settings.compact_at_tokens,
                       sessions=self.router.sessions)}
            self._done = True
        except (asyncio.CancelledError, GeneratorExit):
            if self.run.status == "pending":
                self.run.status = self.event["error_kind"] = self.router.cancelled_status()
            raise
        finally:
            await self.opened.sresp.close()
            if self.run.status == "pending":
                self.run.status = self.router.cancelled_status()
            self.router._finish(self.run)

    def _interrupted(self, exc: ProviderError) -> None:
        self.run.status = "interrupted"
        self.event.update({"error_kind": "stream_interrupted", "error_message": exc.message[:300]})
        self.run.error = {"kind": "stream_interrupted", "message": exc.message, "status": 502}
        self.router.runtime.record_failure(self.cand["provider_id"], self.cand["model_family"], "stream_interrupted",
                                           self.event.get("latency_ms") or 0.0)
        self.run.answered_by = self.router._answered(self.cand)
        self.run.usage = Usage.from_openai(self._usage)
        self.run.cost = self.router._cost(self.cand, self.run.usage)
        # the provider billed what it generated before the cut; say what we know of it
        self.run.failed_costs.append({
            "provider_id": self.cand["provider_id"], "model_family": self.cand["model_family"],
            "error_kind": "stream_interrupted", **self.run.cost.to_dict(),
            "note": None if self.run.cost.usd is not None else "the stream was cut before the provider reported usage"})


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


_NO_REQUIREMENTS: tuple = (("requirements", ()),)


def _plan_key(identity: str, pool: Any, ctx: Mapping[str, Any], pin: Any, state_key: tuple) -> Any:
    """Everything a plan depends on, hashable; None when something is not (then no caching).
    ``state_key`` stands for ``ctx["state"]`` (see :meth:`RuntimeState.snapshot_keyed`)."""
    request = ctx["request"]
    # the common request: no requirements, no tools, no response format, no images
    req_key = _NO_REQUIREMENTS if len(request) == 1 and not request.get("requirements", 1) else _freeze(request)
    key = (identity, id(pool), pin, ctx.get("seed"), req_key, state_key)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _usage_json(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


def _has_content(chunk: Mapping[str, Any]) -> bool:
    for ch in chunk.get("choices") or []:
        d = ch.get("delta") or {}
        if d.get("content") or d.get("tool_calls") or d.get("refusal"):
            return True
        if ch.get("finish_reason"):
            return True
    return False


def _delta_text(chunk: Mapping[str, Any]) -> str:
    out = []
    for ch in chunk.get("choices") or []:
        c = (ch.get("delta") or {}).get("content")
        if isinstance(c, str):
            out.append(c)
    return "".join(out)


def _positive(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v <= 0:
        return None
    return float(v)


def _backoff(action: Mapping[str, Any], attempt: int) -> float:
    b = action.get("backoff_ms")
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return max(0.0, float(b))
    if isinstance(b, list) and b:
        v = b[attempt - 1] if attempt - 1 < len(b) else b[-1]
        return max(0.0, float(v))
    return 0.0


def _price_library() -> Any:
    try:
        from ..catalog.prices import GenaiPrices
        return GenaiPrices()
    except Exception:  # pragma: no cover
        return None


__all__ = ["Router", "Run", "RouterFailure", "RoutedStream", "TraceSink", "status_for", "RequestError"]
