"""Random terms through our core and through the Lua reference; every disagreement printed.

    python conformance/differential/run.py --reference DIR [--seed N] [--cases N] [--big] [--odd] [--flows]

``DIR`` is a checkout of genlayerlabs/llm-policy (its ``llm_policy/`` and ``tests/unit/_json.lua``
are read from there; nothing of it is in this repository), and ``lua5.4`` must be on the path.
Not part of CI: the vectors in ``conformance/*.json`` are what CI replays. This is how new
disagreements are found; a finding becomes a fix, a vector and a test of our own.

Each case is a term of a random sort (mostly policies), drawn from the signature with a few
malformed parameters and shapes, a population of 0–7 candidates (``--big``: 8–40) and a context.
Both sides report the refusal, or the sort, encoding, fingerprint and what the term does: a
Pred's verdict and reason per candidate; a Policy's order, scores (integer and double kept
apart), rejections, its transform of a request and its FailPlan's classifications; an Xform's
request per candidate; a FailPlan's classifications. A runtime fault counts as a result
(``{"error": true}``) on either side. ``--flows`` draws sigma-flow/v1 flows instead (random
labels, repeated node contents that tie in the canonical relabelling, a few faults) and
compares admission, encoding and fingerprint.

Known disagreements are counted apart, not printed (``docs/spec/sigma-pol.md`` section 9):
``prefer`` (the reference host's selector, not in the reference interpreter), ``custom`` with an
unregistered name (refused at admission here, at evaluation there), ``null`` inside a term
(the reference's JSON reader drops it). ``--odd`` also gives candidates values of the wrong
type (a string price, a list tier); our catalog loader refuses those, so the disagreements it
shows (the reference raises on some, compares others) cannot reach a decision here.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from unhardcoded.lang import (  # noqa: E402
    ACTIONS, CORE_FIELDS, LangError, admit_flow, check, classify, default_algebra, default_schema, evaluate, lane_fingerprint,
    normalize_and_encode,
)
from unhardcoded.lang.signature import OPERATIONAL_SORTS, OPS, REFERENCE_CORE_OPS, RELATIONS  # noqa: E402

NUM_FIELDS = [f.name for f in CORE_FIELDS if f.sort == "Num"]
BOOL_FIELDS = [f.name for f in CORE_FIELDS if f.sort == "Bool"]
TIERS = ["fallback", "marketplace", "partner"]
KINDS = ["rate_limit", "auth_error", "server_error", "timeout", "bogus"]
MALFORMED = 0.04  # share of parameters drawn from outside their sort


class Draw:
    """The case generator (one seeded stream)."""

    def __init__(self, seed: int, big: bool, odd: bool, flows: bool = False) -> None:
        self.r = random.Random(seed)
        self.big, self.odd, self.flows = big, odd, flows

    def num(self) -> Any:
        r = self.r
        k = r.random()
        if k < 0.3:
            return r.choice([0, 1, 2, 3, 5, 10, 100, 4000, -1, -5, 8000, 128000])
        if k < 0.55:
            return r.choice([0.1, 0.5, 0.3, 0.9, 1.5, 2.5, -0.5, 0.25, 1e-5, 2.5e-10, 0.7])
        if k < 0.65:  # integers past 2^53 and 2^63, extremes of the doubles
            return r.choice([2**53, 2**53 + 1, 2**62, 2**63 - 1, -2**63, 1e300, -1e300, 5e-324, 1e16,
                             123456789012345678])
        if k < 0.75:
            return round(r.uniform(-10, 10), r.randint(0, 6))
        if k < 0.8:
            return r.choice([-0.0, 0.0])
        return r.uniform(0, 10)

    def param(self, sort: str) -> Any:
        r = self.r
        if r.random() < MALFORMED:
            if sort in ("Recipe", "Chain"):  # a non-empty object there is a known disagreement
                return r.choice(["x", None, True, 1.5, -1, 0, [1], [{"a": "b"}], {}])
            return r.choice(["x", None, True, [], {}, 1.5, -1, 0, "le", "partner", [1], {"a": 1}])
        if sort == "Num":
            return self.num()
        if sort == "Count":
            return r.choice([1, 2, 3, 5, 10, 2.0])
        if sort == "Rel":
            return r.choice(RELATIONS)
        if sort == "NumField":
            return r.choice(NUM_FIELDS)
        if sort == "BoolField":
            return r.choice(BOOL_FIELDS)
        if sort == "Tier":
            return r.choice(TIERS)
        if sort == "Family":
            return r.choice(["m1", "m2", "m3"])
        if sort == "Provider":
            return r.choice(["p1", "p2", "p3", "p4"])
        if sort == "ServedBy":
            return r.choice(["p1", "p2", "peer1", "peer2"])
        if sort == "Capability":
            return r.choice(["vision", "tools", "json_mode", "context", "audio"])
        if sort == "ParamName":
            return r.choice(["temperature", "max_tokens", "top_p", "seed", "presence_penalty"])
        if sort == "Scalar":
            return r.choice([0.5, 1, "x", True, False, 2**40, -3, 0.0])
        if sort == "Sym":
            return "redact"
        if sort == "FailReason":
            return r.choice(["rate_limit", "auth_error", "server_error", "timeout", "unknown", "bogus"])
        if sort == "Action":
            a: dict[str, Any] = {"action": r.choice(sorted(ACTIONS))}
            if r.random() < 0.3:
                a["attempts"] = r.choice([1, 2, 3, 2.5])
            if r.random() < 0.2:
                a["backoff_ms"] = r.choice([100, [100, 200], 0.5])
            if r.random() < 0.1:
                a["then_action"] = r.choice(sorted(ACTIONS))
            if r.random() < 0.1:
                a["open_breaker_ms"] = 1000
            if r.random() < 0.05:
                a["mark_unavailable_ms"] = 5
            return a
        if sort == "Recipe":
            return [r.choice(["strip_pii", {"level": r.choice([1, 2.5])}, "lower"]) for _ in range(r.randint(0, 3))]
        if sort == "Chain":
            return [{("provider" if r.random() < 0.7 else "provider_id"): r.choice(["p1", "p2", "p3", "p4"]),
                     ("model" if r.random() < 0.7 else "model_family"): r.choice(["m1", "m2", "m3"])}
                    for _ in range(r.randint(0, 4))]
        raise ValueError(sort)

    def term(self, sort: str, depth: int = 0) -> list:
        r = self.r
        ops = [o for o in OPS.values() if o.out == sort and o.name in REFERENCE_CORE_OPS and o.name != "custom"]
        if depth > 4:  # leaves only, past a depth
            leaves = [o for o in ops if o.variadic is None and not any(s in OPERATIONAL_SORTS for s in o.ins)]
            ops = leaves or ops
        op = r.choice(ops)
        if r.random() < MALFORMED / 4:  # an operation of another sort
            op = r.choice(list(OPS.values()))
        if op.variadic:
            n = r.randint(1, 4) if r.random() > MALFORMED / 2 else 0
            return [op.name] + [self.term(op.variadic, depth + 1) for _ in range(n)]
        out: list = [op.name]
        for s in op.ins:
            out.append(self.term(s, depth + 1) if s in OPERATIONAL_SORTS else self.param(s))
        if r.random() < MALFORMED / 4:  # one argument too many or too few
            if r.random() < 0.5:
                out.append(1)
            else:
                out.pop()
        return out

    def candidate(self, i: int) -> dict[str, Any]:
        r = self.r
        c: dict[str, Any] = {"provider_id": f"p{i + 1}" if r.random() < 0.7 else r.choice(["p1", "p2", "p3"]),
                             "model_family": r.choice(["m1", "m2", "m3"])}
        if r.random() < 0.9:
            c["served_model_id"] = c["model_family"] + "-wire"
        if r.random() < 0.85:
            c["tier"] = r.choice(TIERS)
        caps: dict[str, Any] = {}
        if r.random() < 0.8:
            caps["context"] = r.choice([4000, 8000, 128000, 0, 1e5, 2**60, 32000.5])
        for f in ("vision", "tools", "json_mode", "audio"):
            if r.random() < 0.4:
                caps[f] = r.random() < 0.7
        if r.random() < 0.9:
            c["capabilities"] = caps
        for f in ("price_in", "price_out", "latency_ms", "tok_s", "success_rate"):
            if r.random() < 0.6:
                c[f] = self.num() if r.random() < 0.3 else r.choice([0, 0.5, 1, 3, 12, 0.15, 250.0, 1200, 0.99, 1.0])
        for f in ("has_tee", "no_log"):
            if r.random() < 0.4:
                c[f] = r.random() < 0.5
        if r.random() < 0.2:
            c["offer"] = {"peer_id": r.choice(["peer1", "peer2"])}
        if r.random() < 0.1:
            c["scope"] = r.choice(["a", "b"])
        if r.random() < 0.3:
            c["quality_hint"] = r.choice([0.4, 0.7, 0.9])
        if self.odd and r.random() < 0.25:
            f = r.choice(["price_in", "price_out", "latency_ms", "tok_s", "success_rate", "has_tee", "no_log", "tier",
                          "capabilities", "provider_id", "model_family", "offer", "scope"])
            c[f] = r.choice(["3", "yes", "", True, False, [], {}, [1, 2], {"context": "x"}, {"context": True}, 0, -1,
                             2**63 - 1, 1e308, "partner"])
        return c

    def context(self) -> dict[str, Any]:
        r = self.r
        req: dict[str, Any] = {}
        if r.random() < 0.3:
            req["min_context"] = r.choice([4000, 16000])
        if r.random() < 0.1:
            req["model_family"] = "m1"
        if r.random() < 0.1:
            req["tier"] = r.choice(TIERS)
        if r.random() < 0.15:
            req["privacy"] = r.choice(["tee_required", "no_log"])
        if r.random() < 0.1:
            req["min_tok_s"] = 50
        if r.random() < 0.1:
            req["min_quality"] = 0.5
        request: dict[str, Any] = {"requirements": req}
        if r.random() < 0.3:
            request["messages"] = [{"role": "user", "content": r.choice([
                "hi", [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "http://x"}}]])}]
        if r.random() < 0.1:
            request["tools"] = [{"type": "function", "function": {"name": "f"}}]
        if r.random() < 0.1:
            request["scope"] = "a"
        state: dict[str, Any] = {}
        if r.random() < 0.4:
            state["breakers"] = {r.choice(["p1", "p2", "p3"]): True}
        if r.random() < 0.2:
            state["disabled"] = {r.choice(["p1", "p2"]): {"until_ms": 5}}
        if r.random() < 0.3:
            state["credits"] = {r.choice(["p1", "p2"]): r.choice([0, 5, 2.5])}
        if r.random() < 0.3:
            state["ema"] = {"p1|m1": {"price_in": 3, "price_out": 12}}
        return {"request": request, "state": state, "now_ms": r.choice([0, 1000, 1796165306131]),
                "seed": r.choice([42, 1, 0, 2**31, 7])}

    def flow(self) -> dict[str, Any]:
        """A flow of 1-7 llm nodes between its input and output, labelled at random, with
        repeated contents (equal nodes tie in the canonical relabelling) and a few faults."""
        r = self.r
        labels = r.sample(["a", "b", "c", "d", "e", "in", "out", "x1", "n0", "n1", "n3", "n10", "zz", "Z", "é",
                           "node 1"], 9)
        source, sink, llms = labels[0], labels[1], labels[2:2 + r.randint(1, 7)]
        policies = [["policy", ["top"], ["zero"], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]],
                    ["policy", ["cmp", "price_in", "le", 5], ["neg", ["normalize", ["field", "price_in"]]], ["argmax"],
                     ["id"], ["always", {"action": "next_candidate"}]]]
        drawn = self.term("Policy")
        try:
            check(drawn)
            policies.append(drawn)
        except LangError:
            pass
        nodes: dict[str, Any] = {source: {"kind": "input"}}
        if r.random() < 0.2:
            nodes[source]["inputs"] = []
        done = [source]
        for nid in llms:
            k = min(len(done), r.choice([1, 1, 1, 2, 2, 3]))
            ins = r.sample(done, k) if r.random() < 0.9 else [r.choice(done)] * 2
            node: dict[str, Any] = {"kind": "llm", "inputs": ins, "system": r.choice(["s", "t", "s\n\"x\"", ""]),
                                    "policy": r.choice(policies)}
            if r.random() < 0.3:
                node["template"] = r.choice(["$1 and $2", "", "$1", "\t$3"])
            nodes[nid] = node
            done.append(nid)
        for i, nid in enumerate(llms[:-1]):  # every llm node feeds a later one: none is off the path
            if not any(nid in nodes[later]["inputs"] for later in llms[i + 1:]):
                nodes[r.choice(llms[i + 1:])]["inputs"].append(nid)
        nodes[sink] = {"kind": "output", "inputs": [llms[-1] if r.random() < 0.95 else source]}
        if r.random() < 0.15:  # a fault: a cycle, an orphan, a missing system, a second output...
            victim = r.choice(llms)
            fault = r.choice(["cycle", "orphan", "system", "output", "unknown", "kind", "template", "policy"])
            if fault == "cycle":
                nodes[victim]["inputs"] = nodes[victim]["inputs"] + [llms[-1]]
            elif fault == "orphan":
                nodes["orphan"] = {"kind": "llm", "inputs": [source], "system": "s", "policy": policies[0]}
            elif fault == "system":
                nodes[victim]["system"] = r.choice([None, 3, ["s"]])
            elif fault == "output":
                nodes["out2"] = {"kind": "output", "inputs": [victim]}
            elif fault == "unknown":
                nodes[victim]["inputs"] = nodes[victim]["inputs"] + ["nowhere"]
            elif fault == "kind":
                nodes[victim]["kind"] = r.choice(["tool", None, "LLM"])
            elif fault == "template":
                nodes[victim]["template"] = r.choice([1, None, ["$1"]])
            else:
                nodes[victim]["policy"] = r.choice([["top"], ["policy", ["top"]], "argmax"])
        return {"flow": ["flow", nodes]}

    def case(self) -> dict[str, Any]:
        r = self.r
        if self.flows:
            return self.flow()
        sort = r.choice(["Policy"] * 6 + ["Pred"] * 2 + ["Xform", "FailPlan"])
        request = {"model": "m", "temperature": r.choice([0.7, 1, 2, "hot", 0]), "max_tokens": r.choice([100, 4000, 1.5])}
        if r.random() < 0.3:
            request["top_p"] = 0.9
        n = r.randint(8, 40) if self.big else r.randint(0, 7)
        return {"term": self.term(sort), "candidates": [self.candidate(i) for i in range(n)], "ctx": self.context(),
                "request": request, "kinds": KINDS}


def typed(v: Any) -> Any:
    """Our result in the driver's notation: "i:"/"f:" numbers, [] for an empty table, no nulls in objects."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return f"i:{v}"
    if isinstance(v, float):
        if math.isnan(v):
            return "f:nan"
        if math.isinf(v):
            return "f:inf" if v > 0 else "f:-inf"
        return "f:%.17g" % v
    if isinstance(v, (list, tuple)):
        return [typed(x) for x in v]
    if isinstance(v, dict):
        return {str(k): typed(x) for k, x in sorted(v.items()) if x is not None} or []
    return f"<{type(v).__name__}>"


def _run(f: Any, *args: Any) -> tuple[bool, Any]:
    try:
        return True, f(*args)
    except Exception as exc:  # a fault while deciding is a result, compared with the reference's
        return False, exc


def ours(v: dict[str, Any]) -> dict[str, Any]:
    schema = default_schema()
    if "flow" in v:
        try:
            nf = admit_flow(v["flow"], schema)
        except LangError as exc:
            return {"refused": str(exc)}
        return {"sort": "Flow", "encoding": nf.encoding, "fingerprint": nf.fingerprint}
    try:
        sort = check(v["term"], schema)
    except LangError as exc:
        return {"refused": str(exc)}
    nf, encoding = normalize_and_encode(v["term"])
    r: dict[str, Any] = {"sort": sort, "encoding": encoding, "fingerprint": lane_fingerprint(encoding)}
    ok, carrier = _run(evaluate, nf, default_algebra(schema))
    if not ok:
        r["eval_error"] = True
        return r
    cands, ctx = v["candidates"], v["ctx"]
    if sort == "Pred":
        r["verdicts"] = []
        for c in cands:
            ok, why = _run(carrier, c, ctx)
            r["verdicts"].append({"error": True} if not ok else {"ok": True} if why is None else {"ok": False, "why": why})
    elif sort == "Policy":
        ok, plan = _run(carrier.plan, cands, ctx)
        if not ok:
            r["plan"] = {"error": True}
            return r
        r["plan"] = {"ordered": [x.candidate.get("provider_id") for x in plan.ordered],
                     "scores": [x.score for x in plan.ordered],
                     "rejected": [{"provider": x.provider, "reason": x.reason} for x in plan.rejected]}
        first = plan.ordered[0].candidate if plan.ordered else (cands[0] if cands else None)
        if first is not None:
            ok, req = _run(carrier.xform, v["request"], first, ctx)
            r["request"] = req if ok else {"error": True}
        r["classified"] = [classify(carrier.failplan, k) for k in v["kinds"]]
    elif sort == "Xform":
        r["requests"] = []
        for c in cands:
            ok, req = _run(carrier, v["request"], c, ctx)
            r["requests"].append(req if ok else {"error": True})
    elif sort == "FailPlan":
        r["classified"] = [classify(carrier, k) for k in v["kinds"]]
    return r


def known(term: Any) -> str | None:
    """Which documented disagreement a term falls under, if any."""
    text = json.dumps(term)
    if '"prefer"' in text:
        return "prefer"
    if '"custom"' in text:
        return "custom"
    if "null" in text:
        return "null in a term"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, type=Path, help="a checkout of genlayerlabs/llm-policy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--big", action="store_true", help="populations of 8-40 candidates")
    ap.add_argument("--odd", action="store_true", help="candidate values of the wrong type (see the docstring)")
    ap.add_argument("--flows", action="store_true", help="sigma-flow/v1 flows instead of terms")
    ap.add_argument("--show", type=int, default=5, help="disagreements to print in full")
    a = ap.parse_args()
    draw = Draw(a.seed, a.big, a.odd, a.flows)
    cases = [draw.case() for _ in range(a.cases)]
    with tempfile.TemporaryDirectory(prefix="unhardcoded-differential-") as tmp:
        src, out = Path(tmp, "cases.json"), Path(tmp, "reference.jsonl")
        src.write_text(json.dumps(cases))
        subprocess.run(["lua5.4", str(HERE / "reference_driver.lua"), str(a.reference.resolve()), str(src), str(out)],
                       check=True)
        theirs = [json.loads(line) for line in out.read_text().splitlines()]
    if len(theirs) != len(cases):
        print(f"the reference answered {len(theirs)} of {len(cases)} cases", file=sys.stderr)
        return 2
    tally: dict[str, int] = {}
    differ = 0
    for i, (v, t) in enumerate(zip(cases, theirs)):
        o = ours(v)
        if "refused" in o and "refused" in t:  # the messages differ; both refusing is agreement
            tally["both refused"] = tally.get("both refused", 0) + 1
            continue
        mine = typed(o)
        if mine == t:
            tally[o["sort"]] = tally.get(o["sort"], 0) + 1
            continue
        why = known(v.get("term", v.get("flow")))
        if why is not None:
            tally[f"known: {why}"] = tally.get(f"known: {why}", 0) + 1
            continue
        differ += 1
        if differ <= a.show:
            print(f"=== case {i}: {json.dumps(v.get('term', v.get('flow')))}")
            for k in sorted(set(mine) | set(t)):
                if mine.get(k) != t.get(k):
                    print(f"  {k}\n    ours:      {json.dumps(mine.get(k))[:800]}\n    reference: {json.dumps(t.get(k))[:800]}")
    print(f"{differ} disagreements in {a.cases} cases (seed {a.seed}); agreed or known: "
          + ", ".join(f"{k} {n}" for k, n in sorted(tally.items())))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
