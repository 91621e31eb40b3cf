"""Regenerate our language-neutral conformance vectors.

    python conformance/generate.py

Writes ``sigma_pol_v2.json`` (policy vectors in the reference's golden format,
plus ``reject`` vectors), and ``sigma_flow_v1.json`` (flow encodings and
refusals). Inputs are hand-picked per operation plus a fixed-seed random sweep;
expectations are computed by this implementation. Vectors are frozen data: a
change to any existing expectation is a change to the language and must come
with a version bump (docs/spec/sigma-pol.md §8), so review a diff of these
files the way you would review a change to the spec.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from unhardcoded.lang import (  # noqa: E402
    AdmissionError, LangError, admit_flow, check, classify, default_algebra, digest, evaluate, lane_fingerprint,
    normalize_and_encode,
)

ALG = default_algebra()

# ---- fixtures ---------------------------------------------------------------


def cand(**over: Any) -> dict:
    c = {"provider_id": "p1", "model_family": "m1", "served_model_id": "m1", "tier": "partner",
         "capabilities": {"context": 8000}}
    c.update(over)
    return c


POP = [
    cand(price_in=3, price_out=12, latency_ms=800, success_rate=0.99, tok_s=80),
    cand(provider_id="p2", tier="marketplace", price_in=0.5, price_out=1.5, latency_ms=300,
         capabilities={"context": 128000, "supports_tools": True}, success_rate=0.9, tok_s=150),
    cand(provider_id="p3", model_family="m2", tier="fallback", price_in=1, capabilities={"context": 32000},
         no_log=True),
    cand(provider_id="p4", model_family="m3", price_in=10, price_out=30, has_tee=True,
         capabilities={"context": 200000, "supports_tools": True, "supports_vision": True}, latency_ms=1200),
    cand(provider_id="p5", model_family="m1", tier="marketplace", offer={"peer_id": "peer-a"},
         capabilities={"context": 64000}, success_rate=0.5),
]

CTX = {"request": {"requirements": {}}, "now_ms": 0, "seed": 42,
       "state": {"breakers": {"p2": True}, "disabled": {"p3": {"kind": "auth_error", "at_ms": 0}},
                 "credits": {"p1": 5}, "ema": {"p3|m2": {"price_in": 1, "price_out": 2}}}}
CTX_NOSEED = {"request": {"requirements": {}}, "now_ms": 0, "state": {}}
NEXT = {"action": "next_candidate"}


def pol(pred: Any, scorer: Any = ("zero",), selector: Any = ("argmax",), xform: Any = ("id",),
        fp: Any = None) -> list:
    def j(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x
    return ["policy", j(pred), j(scorer), j(selector), j(xform), fp or ["always", NEXT]]


# ---- vector builders --------------------------------------------------------

def expect_base(term: Any) -> dict:
    sort = check(term)
    nf, enc = normalize_and_encode(term)
    return {"sort": sort, "encoding": enc, "fingerprint": lane_fingerprint(enc), "identity": digest(enc)}, nf


def v_encoding(name: str, term: Any) -> dict:
    exp, _ = expect_base(term)
    return {"name": name, "kind": "encoding", "term": term, "expect": exp}


def v_pred(name: str, term: Any, cases: list[tuple[dict, dict]]) -> dict:
    exp, nf = expect_base(term)
    p = evaluate(nf, ALG)
    out = []
    for c, ctx in cases:
        why = p(c, ctx)
        case = {"candidate": c, "ctx": ctx, "expect_ok": why is None}
        if why is not None:
            case["expect_reason"] = why
        out.append(case)
    return {"name": name, "kind": "pred", "term": term, "cases": out, "expect": exp}


def score_json(s: Any) -> Any:
    """Non-finite scores are written as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
    if s != s:
        return "nan"
    if s in (float("inf"), float("-inf")):
        return "inf" if s > 0 else "-inf"
    return s


def v_policy(name: str, term: Any, cands: list, ctx: dict) -> dict:
    exp, nf = expect_base(term)
    plan = evaluate(nf, ALG).plan(cands, ctx)
    exp["ordered"] = [r.candidate["provider_id"] for r in plan.ordered]
    exp["scores"] = [score_json(r.score) for r in plan.ordered]
    exp["rejected"] = [{"provider": r.provider, "reason": r.reason} for r in plan.rejected]
    return {"name": name, "kind": "policy", "term": term, "candidates": cands, "ctx": ctx, "expect": exp}


def v_xform(name: str, term: Any, request: dict, candidate: dict, ctx: dict) -> dict:
    exp, nf = expect_base(term)
    exp["request"] = evaluate(nf, ALG)(request, candidate, ctx)
    return {"name": name, "kind": "xform", "term": term, "request": request, "candidate": candidate, "ctx": ctx,
            "expect": exp}


def v_failplan(name: str, term: Any, kinds: list[str]) -> dict:
    exp, nf = expect_base(term)
    fp = evaluate(nf, ALG)
    exp["classified"] = [{"kind": k, "action": classify(fp, k)} for k in kinds]
    return {"name": name, "kind": "failplan", "term": term, "expect": exp}


def v_reject(name: str, term: Any) -> dict:
    try:
        check(term)
    except AdmissionError as exc:
        return {"name": name, "kind": "reject", "term": term, "expect": {"code": exc.code, "path": exc.path}}
    raise SystemExit(f"{name}: expected a refusal")


# ---- the hand-picked set ----------------------------------------------------

def hand_picked() -> list[dict]:
    v: list[dict] = []
    # encoding and normal form
    v.append(v_encoding("nf-and-flatten-units-sort", ["and", ["top"], ["and", ["is", "no_log"], ["meets_req"]],
                                                      ["cmp", "price_out", "lt", 2]]))
    v.append(v_encoding("nf-and-absorb", ["and", ["meets_req"], ["bot"], ["is", "has_tee"]]))
    v.append(v_encoding("nf-or-absorb", ["or", ["meets_req"], ["top"]]))
    v.append(v_encoding("nf-or-all-units", ["or", ["bot"], ["bot"]]))
    v.append(v_encoding("nf-not-involution", ["not", ["not", ["is", "has_tee"]]]))
    v.append(v_encoding("nf-not-top", ["not", ["top"]]))
    v.append(v_encoding("nf-add-units", ["add", ["zero"], ["field", "tok_s"], ["add", ["lit", 1], ["zero"]]]))
    v.append(v_encoding("nf-scale-one", ["scale", 1, ["field", "tok_s"]]))
    v.append(v_encoding("nf-scale-zero", ["scale", 0, ["field", "tok_s"]]))
    v.append(v_encoding("nf-scale-negzero", ["scale", -0.0, ["field", "tok_s"]]))
    v.append(v_encoding("nf-scale-nested-stays", ["scale", 2, ["scale", 0.5, ["field", "tok_s"]]]))
    v.append(v_encoding("nf-gate-top", ["gate", ["top"], ["field", "context"]]))
    v.append(v_encoding("nf-gate-bot", ["gate", ["bot"], ["field", "context"]]))
    v.append(v_encoding("nf-gate-zero", ["gate", ["is", "has_tee"], ["zero"]]))
    v.append(v_encoding("nf-normalize-idempotent", ["normalize", ["normalize", ["field", "latency_ms"]]]))
    v.append(v_encoding("nf-seq-flatten-keep-order", ["seq", ["id"], ["seq", ["set_param", "b", 1], ["id"]],
                                                      ["set_param", "a", 2]]))
    v.append(v_encoding("nf-seq-all-id", ["seq", ["id"], ["id"]]))
    v.append(v_encoding("nf-failplan-base-duplicates-dropped",
                        ["override", ["override", ["always", NEXT], "timeout", NEXT], "auth_error",
                         {"action": "disable_provider"}]))
    v.append(v_encoding("enc-numbers", ["and", ["cmp", "context", "ge", 9007199254740992],
                                        ["cmp", "context", "ge", 9007199254740994],
                                        ["cmp", "price_in", "le", -0.0], ["cmp", "price_in", "le", 5.0],
                                        ["cmp", "price_in", "ge", 1e-300], ["cmp", "price_in", "le", 123456.789],
                                        ["cmp", "price_in", "lt", -2.5e-7]]))
    v.append(v_encoding("enc-strings", ["family_eq", "q\"u\\o\nte\ttab\rcr \u00e9\u4e2d\U0001F600 \u0001"]))
    v.append(v_encoding("enc-records", ["override", ["always", {"action": "retry_same", "attempts": 2,
                                                                "backoff_ms": [100, 250.5], "zz_knob": 1,
                                                                "then_action": "abort"}],
                                        "rate_limit", {"open_breaker_ms": 30000, "action": "next_candidate"}]))
    v.append(v_encoding("enc-recipe-empty-record", ["filter_text", ["NFKC", {}, {"b": 1, "a": 2}]]))
    # an empty object stands for the empty list, as in the reference (one Lua table)
    v.append(v_encoding("enc-recipe-empty-object", ["filter_text", {}]))
    v.append(v_encoding("enc-chain-empty-object", ["chain", {}]))
    v.append(v_encoding("enc-chain", ["chain", [{"provider": "p2", "model": "m1"},
                                                {"provider_id": "p1", "model_family": "m1"}]]))
    v.append(v_encoding("enc-scalar-kinds", ["seq", ["set_param", "t", True], ["set_param", "s", "x"],
                                             ["set_param", "n", 0.25]]))

    # predicates
    base = [(c, CTX) for c in POP]
    v.append(v_pred("pred-top-bot", ["or", ["bot"], ["bot"]], base[:1]))
    v.append(v_pred("pred-is-core-fields", ["is", "no_log"], base))
    v.append(v_pred("pred-breaker-open", ["not", ["is", "breaker_open"]], base))
    v.append(v_pred("pred-disabled", ["is", "disabled"], base))
    v.append(v_pred("pred-credits", ["cmp", "credits", "gt", 1], base))
    v.append(v_pred("pred-price-ema-fallback", ["cmp", "price_out", "le", 3], base))
    v.append(v_pred("pred-latency-default-inf", ["cmp", "latency_ms", "lt", 1000], base))
    v.append(v_pred("pred-success-default-one", ["cmp", "success_rate", "ge", 0.95], base))
    v.append(v_pred("pred-tok-s-default-zero", ["cmp", "tok_s", "gt", 0], base))
    v.append(v_pred("pred-context", ["cmp", "context", "ge", 64000], base))
    v.append(v_pred("pred-rel-eq-ne", ["and", ["cmp", "price_in", "ne", 3], ["cmp", "price_in", "eq", 0.5]], base))
    v.append(v_pred("pred-tier-eq", ["tier_eq", "marketplace"], base + [(cand(tier=None), CTX)]))
    v.append(v_pred("pred-min-tier-missing-is-fallback", ["min_tier", "fallback"], [(cand(tier=None), CTX),
                                                                                     (cand(tier="weird"), CTX)]))
    v.append(v_pred("pred-family-provider", ["and", ["family_eq", "m1"], ["provider_eq", "p1"]], base))
    v.append(v_pred("pred-served-by-peer", ["served_by_eq", "peer-a"], base))
    v.append(v_pred("pred-has-cap", ["has_cap", "supports_tools"], base))
    v.append(v_pred("pred-scope", ["scope_matches"], [
        (cand(), CTX), (cand(scope="s1"), {**CTX, "request": {"scope": "s1"}}),
        (cand(scope="s1"), {**CTX, "request": {"scope": "s2"}})]))
    reqs = [
        {"requirements": {"needs": ["tools"]}},
        {"requirements": {}, "tools": [{"type": "function"}]},
        {"requirements": {}, "images": [{"type": "image_url"}]},
        {"requirements": {}, "response_format": {"type": "json_object"}},
        {"requirements": {"needs": ["seed", "unmapped"]}},
        {"requirements": {"min_context": 100000}},
        {"requirements": {"model_family": "m2"}},
        {"requirements": {"tier": "partner"}},
        {"requirements": {"privacy": "tee_required"}},
        {"requirements": {"privacy": "no_log"}},
        {"requirements": {"min_quality": 0.5}},
        {"requirements": {"min_tok_s": 100}},
        {"requirements": {"min_context": 0}},
        {"requirements": []},
        [],
    ]
    v.append(v_pred("pred-meets-req", ["meets_req"],
                    [(c, {"request": r, "now_ms": 0}) for r in reqs for c in POP[1:4]]))
    v.append(v_pred("pred-and-first-failure-in-normal-order",
                    ["and", ["meets_req"], ["cmp", "price_in", "le", 1], ["not", ["is", "breaker_open"]]],
                    [(c, {**CTX, "request": {"requirements": {"min_context": 50000}}}) for c in POP]))

    # policies
    v.append(v_policy("policy-cheapest", pol(["meets_req"], ["neg", ["normalize", ["field", "price_in"]]]), POP, CTX))
    v.append(v_policy("policy-missing-price-scores-top-of-normalize",
                      pol(["top"], ["normalize", ["field", "price_out"]]), POP, CTX))
    v.append(v_policy("policy-gate-breaker", pol(["top"], ["gate", ["not", ["is", "breaker_open"]],
                                                           ["normalize", ["field", "tok_s"]]]), POP, CTX))
    v.append(v_policy("policy-clamp-lit-add", pol(["top"], ["add", ["clamp", 0, 0.5, ["field", "success_rate"]],
                                                             ["lit", 0.25], ["scale", -0.001, ["field", "context"]]]),
                      POP, CTX))
    v.append(v_policy("policy-ties-keep-input-order", pol(["top"], ["lit", 1]), POP, CTX))
    v.append(v_policy("policy-ordered", pol(["not", ["is", "disabled"]], ["field", "context"], ["ordered"]), POP, CTX))
    v.append(v_policy("policy-degenerate-normalize", pol(["top"], ["normalize", ["lit", 3]]), POP, CTX))
    v.append(v_policy("policy-inf-minus-inf-is-nan",
                      pol(["top"], ["add", ["field", "latency_ms"], ["scale", -1, ["field", "latency_ms"]]]),
                      POP, CTX))
    for t in (0, 0.5, 1, 3, 100):
        v.append(v_policy(f"policy-sample-temp-{t}", pol(["top"], ["field", "context"], ["sample", t]), POP, CTX))
    v.append(v_policy("policy-sample-negative-temp", pol(["top"], ["field", "context"], ["sample", -2]), POP, CTX))
    v.append(v_policy("policy-sample-no-seed", pol(["top"], ["field", "context"], ["sample", 1]), POP, CTX_NOSEED))
    for seed in (1, 7, 2 ** 31, -5, 123456789):
        v.append(v_policy(f"policy-sample-seed-{seed}", pol(["top"], ["lit", 0], ["sample", 2]), POP,
                          {**CTX, "seed": seed}))
    v.append(v_policy("policy-top-k-of-sample", pol(["top"], ["field", "tok_s"], ["top_k", 2, ["sample", 1]]),
                      POP, CTX))
    v.append(v_policy("policy-chain", pol(["top"], ["zero"], ["chain", [
        {"provider": "p4", "model": "m3"}, {"provider": "p1", "model": "m1"}, {"provider": "zz", "model": "m1"},
        {"provider": "p1", "model": "m1"}]]), POP, CTX))
    v.append(v_policy("policy-prefer-stable-partition",
                      pol(["top"], ["field", "context"], ["prefer", ["is", "no_log"], ["argmax"]]), POP, CTX))
    v.append(v_policy("policy-prefer-nested", pol(["top"], ["neg", ["normalize", ["field", "price_in"]]],
                                                  ["prefer", ["not", ["is", "breaker_open"]],
                                                   ["prefer", ["tier_eq", "partner"], ["argmax"]]]), POP, CTX))
    v.append(v_policy("policy-top-k-prefer", pol(["top"], ["field", "context"],
                                                 ["top_k", 3, ["prefer", ["has_cap", "supports_tools"], ["argmax"]]]),
                      POP, CTX))
    v.append(v_policy("policy-chain-empty-object", pol(["top"], ["zero"], ["chain", {}]), POP, CTX))
    v.append(v_policy("policy-empty-pool", pol(["bot"], ["field", "context"]), POP, CTX))

    # xforms
    req = {"temperature": 1.7, "top_p": 0.9, "max_tokens": 100, "model": "x"}
    v.append(v_xform("xform-set-inject", ["seq", ["set_param", "max_tokens", 50], ["inject_seed", "seed"],
                                          ["set_param", "user", "from_ctx"]], req, POP[0], CTX))
    v.append(v_xform("xform-inject-without-seed-removes", ["inject_seed", "temperature"], req, POP[0], CTX_NOSEED))
    v.append(v_xform("xform-clamp", ["seq", ["clamp_param", "temperature", 0, 1], ["clamp_param", "model", 0, 1],
                                     ["clamp_param", "missing", 0, 1]], req, POP[0], CTX))
    v.append(v_xform("xform-jitter-two-params", ["seq", ["jitter", "top_p", 0.1], ["jitter", "temperature", 0.2],
                                                 ["jitter", "new", 1]], req, POP[0], CTX))
    v.append(v_xform("xform-jitter-no-seed", ["jitter", "top_p", 0.1], req, POP[0], CTX_NOSEED))
    v.append(v_xform("xform-filters", ["seq", ["filter_text", ["NFKC"]], ["filter_image", [{"q": 80}]],
                                       ["filter_text", ["Lower"]]], req, POP[0], {**CTX, "seed": 2 ** 32}))
    v.append(v_xform("xform-filter-empty-object", ["filter_image", {}], req, POP[0], CTX))
    v.append(v_xform("xform-when", ["seq", ["when", ["tier_eq", "partner"], ["set_param", "a", 1]],
                                    ["when", ["tier_eq", "fallback"], ["set_param", "b", 2]]], req, POP[0], CTX))

    # failplans
    v.append(v_failplan("failplan-override-unknown", ["override", ["always", NEXT], "unknown", {"action": "abort"}],
                        ["unknown", "timeout"]))
    v.append(v_failplan("failplan-knobs", ["override", ["override", ["always", {"action": "next_candidate"}],
                                                        "model_unavailable", {"action": "next_provider_same_model",
                                                                              "mark_unavailable_ms": 300000}],
                                           "network_error", {"action": "retry_same", "attempts": 2,
                                                             "backoff_ms": [200, 600], "then_action": "next_candidate"}],
                        ["model_unavailable", "network_error", "rate_limit"]))

    # refusals
    for name, term in [
        ("reject-unknown-op", ["and", ["meets_req"], ["quality"]]),
        ("reject-arity", ["cmp", "price_in", "le"]),
        ("reject-sort", ["policy", ["zero"], ["zero"], ["argmax"], ["id"], ["always", NEXT]]),
        ("reject-undeclared-field", ["cmp", "quality", "ge", 0.5]),
        ("reject-field-sort", ["is", "price_in"]),
        ("reject-bool-is-not-a-number", ["cmp", "price_in", "le", True]),
        ("reject-count", ["top_k", 0, ["argmax"]]),
        ("reject-count-fraction", ["top_k", 1.5, ["argmax"]]),
        ("reject-relation", ["cmp", "price_in", "lte", 5]),
        ("reject-tier", ["min_tier", "gold"]),
        ("reject-action-verb", ["always", {"action": "retry"}]),
        ("reject-action-knob", ["always", {"action": "abort", "note": "x"}]),
        ("reject-chain-extra-key", ["chain", [{"provider": "a", "model": "b", "x": "y"}]]),
        ("reject-recipe", ["filter_text", [["nested"]]]),
        ("reject-recipe-object", ["filter_text", {"NFKC": 1}]),
        ("reject-chain-object", ["chain", {"provider": "p1", "model": "m1"}]),
        ("reject-null-param", ["set_param", "x", None]),
        ("reject-custom-unregistered", ["custom", "redact_pii"]),
        ("reject-empty-and", ["and"]),
        ("reject-not-a-term", {"op": "and"}),
        ("reject-depth", _deep(65)),
    ]:
        v.append(v_reject(name, term))
    return v


def _deep(n: int) -> list:
    t: list = ["top"]
    for _ in range(n - 1):
        t = ["not", t]
    return t


# ---- a fixed-seed random sweep ----------------------------------------------

NUM = ["price_in", "price_out", "latency_ms", "tok_s", "success_rate", "credits", "context"]
BOOL = ["has_tee", "no_log", "breaker_open", "disabled"]


def r_num(r: random.Random) -> Any:
    return r.choice([r.randint(-5, 200000), round(r.uniform(-2, 50), r.randint(0, 6)), 0, 1, 0.1, 1e-5])


def r_pred(r: random.Random, d: int) -> list:
    if d <= 0 or r.random() < 0.4:
        return r.choice([
            lambda: ["is", r.choice(BOOL)], lambda: ["cmp", r.choice(NUM), r.choice(["lt", "le", "eq", "ne", "ge", "gt"]), r_num(r)],
            lambda: ["tier_eq", r.choice(["fallback", "marketplace", "partner"])],
            lambda: ["min_tier", r.choice(["fallback", "marketplace", "partner"])],
            lambda: ["family_eq", r.choice(["m1", "m2", "m3"])], lambda: ["provider_eq", f"p{r.randint(1, 5)}"],
            lambda: ["meets_req"], lambda: ["top"], lambda: ["bot"], lambda: ["has_cap", "supports_tools"],
        ])()
    op = r.choice(["and", "or", "not"])
    if op == "not":
        return ["not", r_pred(r, d - 1)]
    return [op, *[r_pred(r, d - 1) for _ in range(r.randint(1, 3))]]


def r_scorer(r: random.Random, d: int) -> list:
    if d <= 0 or r.random() < 0.35:
        return r.choice([lambda: ["field", r.choice(NUM)], lambda: ["lit", r_num(r)], lambda: ["zero"]])()
    op = r.choice(["add", "scale", "gate", "neg", "normalize", "clamp"])
    if op == "add":
        return ["add", *[r_scorer(r, d - 1) for _ in range(r.randint(1, 3))]]
    if op == "scale":
        return ["scale", r.choice([0, 1, r_num(r), 0.3]), r_scorer(r, d - 1)]
    if op == "gate":
        return ["gate", r_pred(r, 1), r_scorer(r, d - 1)]
    if op == "clamp":
        return ["clamp", 0, r.choice([0.5, 1, 10]), r_scorer(r, d - 1)]
    return [op, r_scorer(r, d - 1)]


def r_selector(r: random.Random, d: int) -> list:
    if d <= 0 or r.random() < 0.5:
        return r.choice([["argmax"], ["ordered"], ["sample", r.choice([0, 0.5, 2, 10])]])
    if r.random() < 0.5:
        return ["top_k", r.randint(1, 4), r_selector(r, d - 1)]
    return ["prefer", r_pred(r, 1), r_selector(r, d - 1)]


def random_sweep(n: int) -> list[dict]:
    r = random.Random(20261122)
    out = []
    for i in range(n):
        term = pol(r_pred(r, 3), r_scorer(r, 3), r_selector(r, 2))
        ctx = dict(CTX)
        ctx["seed"] = r.randint(0, 10 ** 9)
        ctx["request"] = {"requirements": r.choice([{}, {"min_context": 30000}, {"needs": ["tools"]}])}
        out.append(v_policy(f"sweep-{i:03d}", term, POP, ctx))
    return out


# ---- flows ------------------------------------------------------------------

P1 = pol(["meets_req"], ["neg", ["normalize", ["field", "price_in"]]])
P2 = pol(["and", ["meets_req"], ["cmp", "context", "ge", 100000]], ["field", "context"])


def v_flow(name: str, flow: Any) -> dict:
    nf = admit_flow(flow)
    return {"name": name, "kind": "flow", "flow": flow,
            "expect": {"encoding": nf.encoding, "fingerprint": nf.fingerprint, "identity": nf.identity}}


def v_flow_reject(name: str, flow: Any) -> dict:
    try:
        admit_flow(flow)
    except LangError as exc:
        return {"name": name, "kind": "reject", "flow": flow, "expect": {"code": exc.code, "path": exc.path}}
    raise SystemExit(f"{name}: expected a refusal")


def flows() -> list[dict]:
    llm = lambda system, ins, p=P1, **kw: {"kind": "llm", "system": system, "policy": p, "inputs": ins, **kw}  # noqa: E731
    v = [
        v_flow("flow-single", ["flow", {"u": {"kind": "input"}, "a": llm("Answer.", ["u"]),
                                        "out": {"kind": "output", "inputs": ["a"]}}]),
        v_flow("flow-fusion", ["flow", {"u": {"kind": "input"}, "a": llm("Concise.", ["u"]),
                                        "b": llm("Rigorous.", ["u"], P2),
                                        "f": llm("Synthesize.", ["a", "b"], template="A:\n$1\n\nB:\n$2"),
                                        "out": {"kind": "output", "inputs": ["f"]}}]),
        v_flow("flow-fusion-renamed", ["flow", {"in": {"kind": "input"}, "x": llm("Rigorous.", ["in"], P2),
                                                "y": llm("Concise.", ["in"]),
                                                "z": llm("Synthesize.", ["y", "x"], template="A:\n$1\n\nB:\n$2"),
                                                "o": {"kind": "output", "inputs": ["z"]}}]),
        v_flow("flow-input-to-output", ["flow", {"u": {"kind": "input"}, "o": {"kind": "output", "inputs": ["u"]}}]),
        v_flow("flow-duplicate-nodes", ["flow", {"u": {"kind": "input"}, "a": llm("Same.", ["u"]),
                                                 "b": llm("Same.", ["u"]), "c": llm("Join.", ["u", "b", "a"]),
                                                 "out": {"kind": "output", "inputs": ["c"]}}]),
        v_flow("flow-escapes", ["flow", {"u": {"kind": "input"}, "a": llm('Say "hi"\n\tnow \\ é', ["u"], template=""),
                                         "out": {"kind": "output", "inputs": ["a"]}}]),
        v_flow("flow-guard-extension", ["flow", {"u": {"kind": "input"}, "d": llm("Draft.", ["u"]),
                                                 "g": llm("Check.", ["d"], guard={}),
                                                 "out": {"kind": "output", "inputs": ["g"]}}]),
        v_flow_reject("flow-reject-cycle", ["flow", {"u": {"kind": "input"}, "a": llm("A", ["u", "b"]),
                                                     "b": llm("B", ["a"]), "out": {"kind": "output", "inputs": ["b"]}}]),
        v_flow_reject("flow-reject-orphan", ["flow", {"u": {"kind": "input"}, "a": llm("A", ["u"]),
                                                      "b": llm("B", ["u"]), "out": {"kind": "output", "inputs": ["a"]}}]),
        v_flow_reject("flow-reject-two-inputs", ["flow", {"u": {"kind": "input"}, "v": {"kind": "input"},
                                                          "out": {"kind": "output", "inputs": ["u"]}}]),
        v_flow_reject("flow-reject-bad-policy", ["flow", {"u": {"kind": "input"},
                                                          "a": llm("A", ["u"], ["cmp", "price_in", "le", 1]),
                                                          "out": {"kind": "output", "inputs": ["a"]}}]),
        v_flow_reject("flow-reject-unknown-key", ["flow", {"u": {"kind": "input", "system": "x"},
                                                           "out": {"kind": "output", "inputs": ["u"]}}]),
    ]
    return v


# ---- declarative specs (POST /x/policy/build) -----------------------------------

BUILD_SPECS: list[tuple[str, Any]] = [
    ("defaults", {}),
    ("atoms_price_ceiling_scorer", {"filter": ["requirements", "not_disabled", {"price_max": {"output": 50}}],
                                    "scorer": ["add", ["scale", 2, ["field", "context"]],
                                               ["scale", 1, ["neg", ["normalize", ["field", "price_in"]]]]],
                                    "selector": "argmax"}),
    ("family_set_softmax", {"filter": {"family_in": ["gpt-5.5", "claude-opus-4-8"]}, "selector": "softmax_sample"}),
    ("any_of_top_k_sampled", {"filter": {"any_of": [{"tier_in": ["partner"]}, {"provider_not_in": ["a", "b"]}]},
                              "selector": "top_k", "selector_opts": {"k": 2, "temp": 0.5}}),
    ("none_of_mutate_list_retry_table", {
        "filter": {"none_of": ["breaker_closed"]},
        "mutate": [{"filter_text": ["NFKC"]}, {"jitter": {"temperature": 0.3, "top_p": 0.1}}],
        "retry_table": {"rate_limit": {"action": "next_candidate", "open_breaker_ms": 30000},
                        "auth_error": {"action": "disable_provider"}, "unknown": {"action": "next_candidate"}}}),
    ("zero_ceiling_set_param_top_k", {"filter": {"price_max": {"input": 0}},
                                      "mutate": {"set_param": {"seed": "from_ctx", "user": "router"}},
                                      "selector": "top_k"}),
    ("both_ceilings_clamp_softmax", {"filter": {"price_max": {"input": 1.5, "output": 10}},
                                     "mutate": {"clamp": {"max_tokens": 1000}}, "selector": "softmax_sample",
                                     "selector_opts": {"temp": 2}}),
    ("served_by_pipe", {"filter": {"served_by_in": ["x"]},
                        "mutate": {"pipe": [{"filter_text": ["NFKC"]}, {"jitter": {"temperature": 0.2}}]}}),
    ("scope_provider_override", {"filter": ["scope_matches", {"provider_in": ["oa"]}], "scorer": ["field", "context"],
                                 "retry_table": {"timeout": {"action": "retry_same", "max": 2}}}),
]


def build_vectors() -> list[dict]:
    from unhardcoded.lang.elaborate import build_policy
    out = []
    for name, spec in BUILD_SPECS:
        _, enc = normalize_and_encode(build_policy(spec))
        out.append({"name": name, "spec": spec, "encoding": enc, "fingerprint": lane_fingerprint(enc)})
    return out


def main() -> None:
    pol_doc = {"version": "sigma-pol/v2", "vectors": hand_picked() + random_sweep(120)}
    flow_doc = {"version": "sigma-flow/v1", "vectors": flows()}
    build_doc = {"version": "sigma-pol/v2", "vectors": build_vectors()}
    for name, doc in (("sigma_pol_v2.json", pol_doc), ("sigma_flow_v1.json", flow_doc),
                      ("declarative/sigma_pol_v2_build.json", build_doc)):
        text = "{\"version\":" + json.dumps(doc["version"]) + ",\"vectors\":[\n" + ",\n".join(
            json.dumps(v, ensure_ascii=False, sort_keys=True, allow_nan=False) for v in doc["vectors"]) + "\n]}\n"
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}: {len(doc['vectors'])} vectors")


if __name__ == "__main__":
    main()
