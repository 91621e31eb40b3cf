"""Backtest: a policy you might deploy, run over the calls the router already served.

Each stored chat call is decided again as if its request had carried ``policy_ir`` = the
candidate policy: the same model string (so the same profile and pin), the same requirements,
seed and caller, under the operator's envelopes of today. Two views of "the same inputs":

* ``over="stored"``: each call's own moment: the catalog snapshot its trace names, the pool as
  it was (credentials, observed latencies and throughput), the runtime state then (breakers,
  disabled providers). This answers "what would this policy have picked for exactly that call";
* ``over="current"``: today's catalog and runtime state for every call (the question a rollout
  asks: "where would this traffic go now").

The counterfactual cost prices the tokens the call really used on the model the policy would
have picked: in ``stored`` at the prices of the call's day (the pricing library's prices on that
date where it knows the route, else the snapshot's list prices), in ``current`` at today's. A
call whose pick does not change keeps its actual cost, so the policy that ran backtests to a
delta of zero. What cannot be known is said in ``caveats``: another model would have answered
with other tokens, and might have failed.

The evaluation is the router's own (``decide``); plans are shared by calls with equal inputs, so
a window of repeated traffic costs one evaluation per distinct situation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

import orjson

from ..catalog.model import Price
from ..costs import Usage, usd_text
from ..lang.compiler import Compiled, Compiler
from ..lang.errors import LangError
from ..router.contract import Contract
from ..router.decision import PolicyChoice, choose_policy, decide
from .record import score_repr
from .replay import rebuild_pool, schema_of

OVER = ("stored", "current")
MAX_BACKTEST = 10_000  # calls one backtest reads; more are reached with a cursor
CAVEATS = (
    "Costs price the tokens each call actually used; another model would have answered with "
    "different tokens, so a changed pick's cost is an estimate, not a bill.",
    "A changed pick is assumed to answer: its failures, retries and latency are not simulated.",
    "Operator configuration (envelopes, profiles, named callers' envelopes) is today's in both "
    "views; over 'stored' the catalog, pool and runtime state are each call's own.",
)


class BacktestError(LangError):
    """A backtest that cannot run as asked (HTTP 4xx)."""

    kind = "invalid_request_error"


@dataclass(slots=True)
class _Sums:
    """The calls whose actual and counterfactual costs are both known, and those costs."""
    priced: int = 0
    actual: Decimal = Decimal(0)
    backtest: Decimal = Decimal(0)

    def add(self, actual: Decimal, counter: Decimal) -> None:
        self.priced += 1
        self.actual += actual
        self.backtest += counter

    def out(self) -> dict[str, Any]:
        return {"priced": self.priced, "actual_cost_usd": usd_text(self.actual),
                "backtest_cost_usd": usd_text(self.backtest)}


@dataclass(slots=True)
class _Group:
    before: Any
    after: Any
    traces: int = 0
    sums: _Sums = field(default_factory=_Sums)

    def out(self) -> dict[str, Any]:
        return {"from": self.before, "to": self.after, "traces": self.traces, **self.sums.out()}


@dataclass(slots=True)
class _Totals:
    """Counts of calls by what became of them (every ``int`` field is reported as it is named)."""
    traces: int = 0
    decided: int = 0
    same_pick: int = 0
    changed_pick: int = 0
    unroutable: int = 0
    refused: int = 0
    not_replayable: int = 0
    catalog_missing: int = 0
    pinned: int = 0
    unpriced: int = 0
    no_usage: int = 0
    unknown_callers: int = 0
    sums: _Sums = field(default_factory=_Sums)
    reasons: dict[str, int] = field(default_factory=dict)

    def out(self) -> dict[str, Any]:
        s = self.sums
        delta = s.backtest - s.actual
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}
        return {**counts, **s.out(), "delta_usd": usd_text(delta),
                "delta_pct": float(round(delta / s.actual * 100, 4)) if s.actual > 0 else None,
                "refusals": dict(sorted(self.reasons.items()))}


def _who(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not c:
        return None
    return {"provider": c.get("provider_id"), "model_family": c.get("model_family"),
            "served_model_id": c.get("served_model_id")}


def _key(v: Any) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


class Backtest:
    """One backtest of ``term`` (a full Policy or a Pred, as ``policy_ir`` takes) over records.

    ``router`` is the host's: its catalog (today's profiles and envelope, the ``current`` pool),
    runtime state, named callers' envelopes and cost calculator. ``snapshots(digest)`` reads a
    stored catalog snapshot (``over="stored"``). The term is admitted against today's catalog when
    the backtest is made: a policy that would be refused today is refused here (LangError)."""

    def __init__(self, term: Any, router: Any, *, over: str = "stored",
                 snapshots: Callable[[str], Mapping[str, Any] | None] | None = None, samples: int = 20) -> None:
        if over not in OVER:
            raise BacktestError("bad_parameter", "over is 'stored' or 'current'", ("over",))
        if isinstance(term, list) and term and term[0] == "flow":
            raise BacktestError("flow_backtest_unsupported", "a backtest runs a sigma-pol policy (a Policy or a "
                                "Pred term), not a flow", ("policy_ir",))
        self.term = term
        self.router = router
        self.over = over
        self.snapshots = snapshots
        self.samples = samples
        # admitted as a request would send it, over today's catalog (raises what the request would get)
        self.today = self._choice(router.compiler, "default", None)
        self._choices: dict[tuple, PolicyChoice | LangError] = {}
        self._plans: dict[tuple, Any] = {}
        self._stored: dict[str, tuple[Mapping[str, Any], Compiler] | None] = {}
        self._pools: dict[tuple, list] = {}
        if over == "current":
            now = router.clock()
            pool, _pre = router._credentialed_pool()
            self._now = now
            self._pool = router.runtime.stamp(pool, now)
            self._state = router.runtime.snapshot(now)
        self.totals = _Totals()
        self._groups: dict[tuple, _Group] = {}
        self._samples: list[dict[str, Any]] = []

    # ---- the policy a past request would have run -----------------------------------------
    def _choice(self, compiler: Compiler, profile: str, caller: str | None) -> PolicyChoice:
        envelope: Compiled | None = None
        spec = self.router.settings.callers.get(caller) if caller is not None else None
        if spec is not None and spec.envelope is not None:
            envelope = compiler.compile(spec.envelope, want="Pred", path=("callers", caller, "envelope"))
        return choose_policy(Contract(route="", profile=profile, policy_ir=self.term), self.router.catalog,
                             compiler, None, envelope)

    def _choice_for(self, digest: str | None, compiler: Compiler, profile: str,
                    caller: str | None) -> PolicyChoice | LangError:
        key = (digest, profile, caller)
        hit = self._choices.get(key)
        if hit is None:
            try:
                hit = self._choice(compiler, profile, caller)
            except LangError as exc:
                hit = exc
            self._choices[key] = hit
        return hit

    def _snapshot(self, digest: str) -> tuple[Mapping[str, Any], Compiler] | None:
        if digest not in self._stored:
            snap = self.snapshots(digest) if self.snapshots is not None and digest else None
            self._stored[digest] = None if snap is None else (snap, Compiler(schema_of(snap)))
        return self._stored[digest]

    # ---- one call -------------------------------------------------------------------------
    def add(self, rec: Mapping[str, Any]) -> None:
        t = self.totals
        t.traces += 1
        if rec.get("kind", "chat") != "chat" or "decision" not in rec or "inputs" not in rec:
            t.not_replayable += 1
            return
        route = rec.get("route") or {}
        inputs = rec["inputs"]
        profile = route.get("profile") or "default"
        pin = tuple(route["pin"]) if route.get("pin") else None
        if self.over == "stored":
            digest = (rec.get("catalog") or {}).get("digest", "")
            got = self._snapshot(digest)
            if got is None:
                t.catalog_missing += 1
                return
            snap, compiler = got
            pool_key = (digest, _key(inputs.get("pool")))
            pool = self._pools.get(pool_key)
            if pool is None:
                pool = self._pools[pool_key] = rebuild_pool(rec, snap)
            state, now = inputs.get("state", {}), inputs.get("now_ms")
        else:
            digest, snap, compiler = None, None, self.router.compiler
            pool, pool_key, state, now = self._pool, None, self._state, self._now
        caller = rec.get("caller")
        if caller is not None and caller not in self.router.settings.callers:
            t.unknown_callers += 1  # its envelope then is not known here: decided without one
        choice = self._choice_for(digest, compiler, profile, caller)
        if isinstance(choice, LangError):
            t.refused += 1
            t.reasons[choice.code] = t.reasons.get(choice.code, 0) + 1
            self._sample(rec, None, None, f"refused: {choice.message}")
            return
        ctx: dict[str, Any] = {"request": inputs.get("request", {}), "state": state, "now_ms": now}
        if inputs.get("seed") is not None:
            ctx["seed"] = inputs["seed"]
        plan_key = (choice.effective.identity, pool_key, _key(ctx["request"]),
                    _key(state) if self.over == "stored" else None, inputs.get("seed"), pin)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plans[plan_key] = decide(choice.effective.policy, pool, ctx, pin)
        t.decided += 1
        if pin is not None:
            t.pinned += 1
        ranked = rec["decision"].get("ranked") or []
        before = rec.get("answer") or (ranked[0] if ranked else None)
        after = plan.ordered[0].candidate if plan.ordered else None
        b, a = _who(before), _who(after)
        same = b is not None and a is not None and (b["provider"], b["model_family"]) == (a["provider"], a["model_family"])
        if after is None:
            t.unroutable += 1
        elif same:
            t.same_pick += 1
        else:
            t.changed_pick += 1
        gkey = (None if b is None else (b["provider"], b["model_family"]),
                None if a is None else (a["provider"], a["model_family"]))
        g = self._groups.get(gkey)
        if g is None:
            g = self._groups[gkey] = _Group(None if b is None else {k: b[k] for k in ("provider", "model_family")},
                                            None if a is None else {k: a[k] for k in ("provider", "model_family")})
        g.traces += 1
        actual, counter = self._costs(rec, after, same, snap)
        if actual is not None and counter is not None:
            t.sums.add(actual, counter)
            g.sums.add(actual, counter)
        if not same:
            self._sample(rec, b, plan, None, actual, counter)

    def _costs(self, rec: Mapping[str, Any], after: Mapping[str, Any] | None, same: bool,
               snap: Mapping[str, Any] | None) -> tuple[Decimal | None, Decimal | None]:
        """(what the call cost, what the pick would have cost for the same tokens); None where unknown."""
        t = self.totals
        u = rec.get("usage") or {}
        usage = Usage(u.get("tokens_in", 0), u.get("tokens_out", 0), u.get("tokens_cached", 0),
                      u.get("tokens_reasoning", 0))
        paid = (rec.get("cost") or {}).get("cost_usd")
        actual = Decimal(paid) if isinstance(paid, str) else None
        if usage.prompt_tokens == 0 and usage.completion_tokens == 0:
            t.no_usage += 1  # a call that never answered: nothing to price, either way
            return None, None
        if after is None:
            return actual, None
        if same:
            return actual, actual
        counter = self._price(after, usage, rec, snap)
        if actual is None or counter is None:
            t.unpriced += 1
        return actual, counter

    def _price(self, cand: Mapping[str, Any], usage: Usage, rec: Mapping[str, Any],
               snap: Mapping[str, Any] | None) -> Decimal | None:
        router = self.router
        if snap is None:  # today's prices
            return router._cost(cand, usage).usd
        started = rec.get("started_at_ms")
        at = datetime.fromtimestamp(started / 1000, tz=timezone.utc) if isinstance(started, int) else None
        provider = (snap.get("providers") or {}).get(cand.get("provider_id")) or {}
        price = Price(cand.get("price_in"), cand.get("price_out"), None, "catalog snapshot")
        return router.costs.cost(usage, price, provider.get("pricing_id"), cand.get("served_model_id") or "",
                                 at=at).usd

    def _sample(self, rec: Mapping[str, Any], before: Any, plan: Any, note: str | None,
                actual: Decimal | None = None, counter: Decimal | None = None) -> None:
        if len(self._samples) >= self.samples:
            return
        row: dict[str, Any] = {"trace_id": rec.get("trace_id"), "started_at_ms": rec.get("started_at_ms"),
                               "caller": rec.get("caller"), "model": (rec.get("route") or {}).get("model")}
        if note is not None:
            row["note"] = note
        else:
            row["before"] = before
            row["after"] = [dict(_who(r.candidate) or {}, score=score_repr(r.score)) for r in plan.ordered[:3]]
            if not plan.ordered:
                row["rejected"] = _reasons(plan.rejected)
            row["actual_cost_usd"] = usd_text(actual)
            row["backtest_cost_usd"] = usd_text(counter)
        self._samples.append(row)

    # ---- the report -----------------------------------------------------------------------
    def run(self, records: Iterable[Mapping[str, Any]]) -> "Backtest":
        for rec in records:
            self.add(rec)
        return self

    def report(self) -> dict[str, Any]:
        eff = self.today.effective
        sent = self.today.sent
        groups = sorted(self._groups.values(), key=lambda g: (-g.traces, orjson.dumps(g.before), orjson.dumps(g.after)))
        return {
            "object": "backtest",
            "over": self.over,
            "policy": {"sort": sent.sort if sent is not None else eff.sort,
                       "identity": sent.identity if sent is not None else eff.identity,
                       "fingerprint": sent.fingerprint if sent is not None else eff.fingerprint,
                       "effective_identity_today": eff.identity},
            "totals": self.totals.out(),
            "transitions": [g.out() for g in groups],
            "samples": self._samples,
            "caveats": list(CAVEATS),
        }


def _reasons(rejected: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejected:
        out[r.reason] = out.get(r.reason, 0) + 1
    return dict(sorted(out.items()))
