"""Decision-path micro-benchmarks: pure Python, no server, no network.

Per-call microseconds of each stage the router runs before it calls a provider:

* admission (``check``), normalisation + encoding (``normalize_and_encode``),
  fingerprint (``digest`` + ``lane_fingerprint``), evaluation into closures
  (``evaluate``), and the whole uncached ``Compiler.compile``;
* ``Compiler.compile`` on a cache hit (the same JSON term again);
* ``Policy.plan`` (filter, score, select) over the catalog's candidates;
* ``Router.prepare`` end to end (contract, policy choice with the envelope,
  credentialed pool, runtime stamp, plan), with warm caches, with a success
  recorded in the runtime state before every call (as under live traffic:
  "live"), and with the compiler's caches and the router's plan memo cleared before every call;
  and under light traffic ("restamped": every call after the stamp window, the route that served
  before re-stamped with a new latency), for the benchmark policy and for one whose scorer also
  reads the observed latency;

over catalogs of 50, 200, 2,000 and 10,000 candidates, and for policies of
about 5, 50 and 500 nodes (over 200 candidates).

    bench/.venvs/router/bin/python bench/micro.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import workload  # noqa: E402

from unhardcoded.catalog.loader import build_catalog  # noqa: E402
from unhardcoded.config import Keys, Settings  # noqa: E402
from unhardcoded.lang import (  # noqa: E402
    Compiler, check, compile_policy, digest, lane_fingerprint, normalize_and_encode,
)
from unhardcoded.lang.interpreter import default_algebra, evaluate  # noqa: E402
from unhardcoded.lang.encoding import _HEADS, _STRETCHES  # noqa: E402  (cleared where "uncached" is measured)
from unhardcoded.lang.signature import OPS  # noqa: E402
from unhardcoded.router.engine import Router, TraceSink  # noqa: E402

SIZES = {50: (10, 5), 200: (40, 5), 2000: (400, 5), 10000: (2000, 5)}


def bench(fn: Callable[[], Any], budget_s: float, repeats: int = 5) -> dict[str, float]:
    """Median and min per-call µs over ``repeats`` timed loops of about budget_s/repeats each."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(budget_s / repeats / one))
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        per.append((time.perf_counter() - t0) / number * 1e6)
    return {"median_us": round(statistics.median(per), 2), "min_us": round(min(per), 2), "calls": number * repeats}


def nodes(t: Any) -> int:
    if isinstance(t, list) and t and isinstance(t[0], str) and t[0] in OPS:
        return 1 + sum(nodes(k) for k in t[1:])
    return 0


def policy_of_size(target: int) -> list:
    """A full policy with about ``target`` term nodes (filter and scorer grow together)."""
    if target <= 6:
        return ["policy", ["cmp", "bench_intelligence", "ge", 0.3], ["neg", ["field", "price_in"]], ["argmax"],
                ["id"], ["always", {"action": "next_candidate"}]]
    k = max(1, (target - 8) // 5)   # each step adds a cmp (1) to the filter and scale+field (2)... see nodes()
    filt = ["and", *[["cmp", "bench_intelligence", "ge", round(0.3 - i * 1e-4, 6)] for i in range(k)],
            *[["cmp", "price_in", "le", 8 + i] for i in range(k)]]
    scorer = ["add", *[["scale", round(0.1 + i * 1e-3, 6), ["field", "price_in" if i % 2 else "bench_intelligence"]]
                       for i in range(k)]]
    return ["policy", filt, ["normalize", scorer], ["top_k", 5, ["argmax"]], ["id"],
            ["override", ["always", {"action": "next_candidate"}], "auth_error", {"action": "abort"}]]


def router_for(n: int) -> Router:
    prov, models = SIZES[n]
    cat = build_catalog(workload.catalog_doc(prov, models, rate_limited_last=False), prices=None)
    assert len(cat.candidates()) == n, (n, len(cat.candidates()))
    settings = Settings(keys=Keys(environ={"BENCH_UPSTREAM_KEY": "sk-bench"}))
    return Router(cat, settings, sink=TraceSink())


def clear_caches(r: Router) -> None:
    """Every cache on the decision path: the compiler's LRUs and subterm memos, the fingerprint's
    remembered stretches, and the router's plan memo, remembered routes (``Router._route_of``),
    plans by decision and plan parts, where it has them."""
    r.compiler.clear()
    _STRETCHES.clear()
    _HEADS.clear()
    for memo in ("_plans", "_routes", "_decisions", "_decided", "_parts", "_priors"):
        held = getattr(r, memo, None)
        if held is not None:
            held.clear()


def with_threshold(term: Any, n: int) -> Any:
    """``term`` with its first numeric ``cmp`` bound moved by n * 1e-9: a policy the router has
    not seen, as a backend that builds one per request sends (the lists on the way to that
    ``cmp`` are copied, the rest shared; None if the term has no such ``cmp``)."""
    if not isinstance(term, list):
        return None
    if len(term) == 4 and term[0] == "cmp" and type(term[3]) in (int, float):
        return ["cmp", term[1], term[2], term[3] + n * 1e-9]
    for i, sub in enumerate(term):
        moved = with_threshold(sub, n)
        if moved is not None:
            out = list(term)
            out[i] = moved
            return out
    return None


def decision_costs(r: Router, body: dict, budget: float) -> tuple[dict, dict, dict]:
    """One decision over the pool (Policy.plan), Router.prepare cached, and prepare with every cache cleared."""
    prep = r.prepare(body)
    policy, pool, ctx = prep.choice.effective.policy, prep.pool, prep.ctx

    def uncached() -> None:
        clear_caches(r)
        r.prepare(body)
    return (bench(lambda: policy.plan(pool, ctx), budget), bench(lambda: r.prepare(body), budget),
            bench(uncached, budget))


def new_policy_cost(r: Router, body: dict, budget: float) -> dict | None:
    """Router.prepare when every call brings a policy the router has not seen that differs from
    the one before in a threshold (``with_threshold``), caches warm: what a backend that builds
    its policy per request pays. None if the policy has no numeric ``cmp``."""
    if with_threshold(body["policy_ir"], 1) is None:
        return None
    tick = [0]

    def new_policy() -> None:
        tick[0] += 1
        r.prepare({**body, "policy_ir": with_threshold(body["policy_ir"], tick[0])})
    return bench(new_policy, budget)


def latency_scored(term: list) -> list:
    """``term`` (a full policy) whose scorer also prefers routes observed faster: a policy that
    reads what the runtime stamps, so a re-stamp changes its scores."""
    return [term[0], term[1], ["add", term[2], ["scale", 0.1, ["neg", ["normalize", ["field", "latency_ms"]]]]],
            *term[3:]]


def restamped_cost(r: Router, body: dict, budget: float) -> dict:
    """Router.prepare under light traffic: every call comes after the stamp window has passed,
    and the route that served the call before has a new mean latency (the pool is re-stamped
    there, and only there)."""
    wall = r.clock
    now = [wall()]
    step = r.runtime.config.stamp_refresh_ms + 1
    r.clock = r.runtime.clock = lambda: now[0]
    served = [r.prepare(body).plan.ordered[0].candidate]

    def call() -> None:
        c = served[0]
        r.runtime.record_success(c["provider_id"], c["model_family"], 100.0 + (now[0] % 997) / 10, 50.0)
        now[0] += step
        p = r.prepare(body)
        if p.plan.ordered:
            served[0] = p.plan.ordered[0].candidate
    try:
        return bench(call, budget)
    finally:
        r.clock = r.runtime.clock = wall


def stages(term: list, schema: Any, budget: float) -> dict[str, Any]:
    algebra = default_algebra(schema, {})
    nf, enc = normalize_and_encode(term)
    out = {
        "admission_check": bench(lambda: check(term, schema), budget),
        "normalize_and_encode": bench(lambda: normalize_and_encode(term), budget),
        # the fingerprint as defined, nothing remembered; and with the stretches of an encoding seen before
        "fingerprint": bench(lambda: (_STRETCHES.clear(), _HEADS.clear(), digest(enc), lane_fingerprint(enc)), budget),
        "fingerprint_seen_stretches": bench(lambda: (digest(enc), lane_fingerprint(enc)), budget),
        "evaluate": bench(lambda: evaluate(nf, algebra), budget),
    }
    fresh = Compiler(schema)

    def uncached() -> None:
        fresh.clear()
        fresh.compile(term, want="Policy")
    out["compile_uncached"] = bench(uncached, budget)
    warm = Compiler(schema)
    warm.compile(term, want="Policy")
    out["compile_cached"] = bench(lambda: warm.compile(term, want="Policy"), budget)
    if with_threshold(term, 1) is not None:
        tick = [0]

        def new_threshold() -> None:
            tick[0] += 1
            warm.compile(with_threshold(term, tick[0]), want="Policy")
        out["compile_new_threshold"] = bench(new_threshold, budget)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="decision-path micro-benchmarks")
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "micro-latest.json")
    a = ap.parse_args()
    budget = 0.25 if a.quick else 1.0
    import hashlib
    import subprocess
    src = hashlib.sha256()
    for p in sorted((BENCH.parent / "src").rglob("*.py")):
        src.update(str(p.relative_to(BENCH.parent)).encode())
        src.update(p.read_bytes())
    head = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    res: dict[str, Any] = {"schema": "unhardcoded.bench.micro/v1", "python": platform.python_version(),
                           "git_head": head, "src_sha256": src.hexdigest(),
                           "budget_s_per_measure": budget, "gc": "enabled", "by_catalog": {}, "by_policy_size": {}}
    body = workload.bodies()["router"]
    term = body["policy_ir"]
    res["policy_nodes"] = nodes(term)
    # the public one-off entry point, for reference (cached on the default compiler)
    compile_policy(["policy", ["cmp", "price_in", "le", 5], ["zero"], ["argmax"], ["id"],
                    ["always", {"action": "next_candidate"}]])

    for n in SIZES:
        r = router_for(n)
        schema = r.catalog.schema
        row: dict[str, Any] = {}
        if n == 200:
            row["stages"] = stages(term, schema, budget)
        prep = r.prepare(body)
        row["survivors"] = len(prep.pool) - len(prep.plan.rejected)
        row["plan"], row["prepare_cached"], row["prepare_uncached"] = decision_costs(r, body, budget)
        row["prepare_new_policy"] = new_policy_cost(r, body, budget)
        fams = [(c["provider_id"], c["model_family"]) for c in r.catalog.candidates()[:50]]
        tick = [0]

        def prepare_live() -> None:
            # as in a server under load: a success is recorded between two decisions
            pid, fam = fams[tick[0] % len(fams)]
            tick[0] += 1
            r.runtime.record_success(pid, fam, 1.0 + (tick[0] % 7), 50.0)
            r.prepare(body)
        row["prepare_live"] = bench(prepare_live, budget)
        row["prepare_restamped"] = restamped_cost(r, body, budget)
        row["prepare_restamped_latency_scored"] = restamped_cost(
            r, {**body, "policy_ir": latency_scored(body["policy_ir"])}, budget)
        prof = workload.bodies()["router_profile"]
        row["prepare_cached_profile_default"] = bench(lambda: r.prepare(prof), budget)
        res["by_catalog"][str(n)] = row
        print(f"N={n:>6}: plan {row['plan']['median_us']:>9.1f} us  prepare cached {row['prepare_cached']['median_us']:>9.1f} us"
              f"  live {row['prepare_live']['median_us']:>9.1f} us  uncached {row['prepare_uncached']['median_us']:>9.1f} us"
              f"  new policy {row['prepare_new_policy']['median_us']:>9.1f} us  profile {row['prepare_cached_profile_default']['median_us']:>9.1f} us"
              f"  restamped {row['prepare_restamped']['median_us']:>9.1f} us"
              f" (latency-scored {row['prepare_restamped_latency_scored']['median_us']:>9.1f} us)",
              file=sys.stderr)
        del r
        gc.collect()

    r = router_for(200)
    schema = r.catalog.schema
    for target in (5, 50, 500):
        t = policy_of_size(target)
        b = {"model": "", "messages": workload.MESSAGES, "policy_ir": t}
        st = stages(t, schema, budget)
        st["plan_200"], st["prepare_cached_200"], st["prepare_uncached_200"] = decision_costs(r, b, budget)
        st["prepare_new_policy_200"] = new_policy_cost(r, b, budget)
        st["nodes"] = nodes(t)
        st["json_bytes"] = len(json.dumps(t, separators=(",", ":")))
        res["by_policy_size"][str(target)] = st
        print(f"policy ~{target:>3} nodes ({st['nodes']}): compile uncached {st['compile_uncached']['median_us']:.1f} us, "
              f"cached {st['compile_cached']['median_us']:.1f} us, plan {st['plan_200']['median_us']:.1f} us, "
              f"prepare cached {st['prepare_cached_200']['median_us']:.1f} us", file=sys.stderr)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
