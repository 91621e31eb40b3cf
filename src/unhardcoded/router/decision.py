"""Which policy runs, and what it decides over a pool of candidates. Pure.

:func:`choose_policy` turns a contract into the effective policy:

* a full ``policy_ir`` runs with the operator's envelope ∧-ed onto its filter;
* a bare predicate ``policy_ir`` runs as the profile's policy (``default``
  unless the route names another) with the predicate ∧-ed onto its filter,
  then the envelope;
* no ``policy_ir``: the profile's own policy, as the operator wrote it.

:func:`decide` applies it: a pin short-circuits the filter (the pinned route
is still scored, as in the reference); otherwise filter, score, select.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..catalog.model import Catalog
from ..lang.compiler import Compiled, Compiler, constrain
from ..lang.errors import AdmissionError
from ..lang.interpreter import Plan, Policy, Rejection
from ..memo import SecondSight
from .contract import Contract, RequestError


@dataclass(frozen=True, slots=True)
class PolicyChoice:
    source: str                 # "policy" | "predicate" | "profile"
    profile: str | None
    sent: Compiled | None       # the term as the caller sent it
    effective: Compiled         # the term that ran
    caller_envelope: Any = None  # the named caller's envelope term ∧-ed onto it, if any

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "profile": self.profile,
                               "effective": _ident(self.effective)}
        if self.sent is not None:
            out["sent"] = _ident(self.sent)
        if self.caller_envelope is not None:
            out["caller_envelope"] = self.caller_envelope
        return out


def _ident(c: Compiled) -> dict[str, Any]:
    return {"term": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
            "identity": c.identity, "short_id": c.short_id, "sort": c.sort}


def with_filter(policy_term: list, pred: Any) -> list:
    out = list(policy_term)
    out[1] = ["and", policy_term[1], pred]
    return out


def choose_policy(contract: Contract, catalog: Catalog, compiler: Compiler,
                  memo: SecondSight | None = None, caller_envelope: Compiled | None = None) -> PolicyChoice:
    """The effective policy. ``memo`` (per catalog) remembers choices by what they depend on:
    the sent term's identity (or none), the profile and the caller's envelope; the other envelope
    is the catalog's.

    ``caller_envelope`` (a named caller's, from the host's config) is ∧-ed onto the filter of
    whatever would run otherwise, the profile's own policy included: a caller cannot step out of
    it by sending no policy. Without one, the choice is the reference's."""
    term = contract.policy_ir
    sent = compiler.compile(term, path=("policy_ir",)) if term is not None else None
    key: tuple = (None if sent is None else sent.identity, contract.profile)
    if caller_envelope is not None:
        key = (*key, caller_envelope.identity)
    if memo is not None:
        hit = memo.find(key)
        if hit is not None:
            return hit
    if sent is not None:
        choice = _choose_sent(sent, term, contract, catalog, compiler)
    else:
        profile = _profile(contract, catalog)
        choice = PolicyChoice("profile", profile.name, None, compiler.compile(profile.policy, want="Policy"))
    if caller_envelope is not None:
        try:
            eff = compiler.compile(constrain(choice.effective.term, caller_envelope.term), want="Policy",
                                   path=("policy_ir",))
        except AdmissionError as exc:
            raise _as_sent(exc, (), "the filter under the caller's envelope") from None
        choice = PolicyChoice(choice.source, choice.profile, choice.sent, eff, caller_envelope.term)
    if memo is not None:
        memo.put(key, choice)
    return choice


def _choose_sent(sent: Compiled, term: Any, contract: Contract, catalog: Catalog, compiler: Compiler) -> PolicyChoice:
    if sent.sort == "Policy":
        if catalog.envelope is None:
            return PolicyChoice("policy", None, sent, compiler.compile(term, want="Policy", path=("policy_ir",)))
        try:
            eff = compiler.compile_constrained(sent, term, catalog.envelope, path=("policy_ir",))
        except AdmissionError as exc:
            raise _as_sent(exc, _UNDER_ENVELOPE, "the filter under the catalog's envelope") from None
        return PolicyChoice("policy", None, sent, eff)
    if sent.sort == "Pred":
        profile = _profile(contract, catalog)
        eff_term = with_filter(profile.policy, term)
        where = ("policy_ir", 1, 2)
        if catalog.envelope is not None:
            eff_term = constrain(eff_term, catalog.envelope)
            where = ("policy_ir", 1, 2, 2)
        try:
            eff = compiler.compile(eff_term, want="Policy", path=("policy_ir",))
        except AdmissionError as exc:
            raise _as_sent(exc, ((where, ("policy_ir",)),), "the predicate under the profile's filter"
                           + (" and the catalog's envelope" if catalog.envelope is not None else "")) from None
        return PolicyChoice("predicate", profile.name, sent, eff)
    raise AdmissionError("sort_mismatch", f"policy_ir is a full Policy or a Pred term, not a {sent.sort}",
                         ["policy_ir"])


# where the sent policy's parts are in the effective one: its filter one level down, under the
# envelope's "and"; its other slots where they were
_UNDER_ENVELOPE: tuple[tuple[tuple, tuple], ...] = ((("policy_ir", 1, 2), ("policy_ir", 1)),
                                                    *((("policy_ir", k), ("policy_ir", k)) for k in range(2, 6)))


def _as_sent(exc: AdmissionError, places: tuple[tuple[tuple, tuple], ...], how: str) -> AdmissionError:
    """A refusal of the effective policy (a term the caller never wrote: the sent one inside
    the operator's parts), with its path in the term the caller sent. The sent term was admitted
    alone, so such a refusal is a bound (depth, nodes) the operator's parts push it past; one
    that falls in the operator's part points at the whole sent term."""
    parts = exc.parts
    for eff, sent in places:
        if parts[:len(eff)] == eff:
            new = (*sent, *parts[len(eff):])
            break
    else:
        new = ("policy_ir",)
    return AdmissionError(exc.code, f"{exc.message} (counted in the effective policy, which places {how})", new)


def _profile(contract: Contract, catalog: Catalog) -> Any:
    profile = catalog.profiles.get(contract.profile)
    if profile is None:
        known = ", ".join(sorted(catalog.profiles)) or "none"
        raise RequestError("unknown_profile", f"no profile named {contract.profile!r} (known: {known})",
                           ("model",), status=404)
    return profile


def decide(policy: Policy, pool: Sequence[Mapping[str, Any]], ctx: Mapping[str, Any],
           pin: tuple[str, str] | None = None, parts: Any = None) -> Plan:
    """The ordered failover sequence and every rejection with its reason. ``parts``: see
    ``Policy.plan`` (a memo for this pool and context, shared by the policies planned over them)."""
    if pin is not None:
        provider, family = pin
        for cand in pool:
            if cand.get("provider_id") == provider and cand.get("model_family") == family:
                return Plan(policy.select([cand], ctx), [])
        return Plan([], [Rejection(provider, family, "pin_not_found")])
    return policy.plan(pool, ctx, parts)
