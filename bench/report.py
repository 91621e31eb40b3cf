"""Turn a harness JSON (and a micro JSON) into the Markdown tables of docs/performance.md.

    bench/.venvs/router/bin/python bench/report.py [--run results/latest-full.json] [--micro results/micro-full.json]

Every number is a median over the run's rounds; "added" figures are taken per
round against the direct call of the same round, then the median is reported.
Writes ``<run>.md`` beside the JSON and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
NAMES = {"direct": "upstream direct", "forwarder": "bare forwarder", "router": "router (policy_ir, traces on)",
         "router_profile": "router (profile:default)", "litellm": "LiteLLM proxy"}


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def per_round(d: dict[str, Any], target: str, fn: Callable[[dict[str, Any], dict[str, Any]], float | None]) -> float | None:
    vals = []
    for r in d["rounds"]:
        t = r["targets"].get(target)
        if t is not None:
            try:
                vals.append(fn(t, r["targets"]["direct"]))
            except (KeyError, TypeError):
                pass
    return med(vals)


def ms(us: float | None, nd: int = 2) -> str:
    return "–" if us is None else f"{us / 1000:.{nd}f}"


def _sched_text(policy: str) -> str:
    return "`SCHED_BATCH` (`chrt -b 0`; the router's own default)" if policy == "batch" else "the default (`SCHED_OTHER`)"


def num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def ratio(a: float | None, b: float | None, fmt: str = "{:.2f}×") -> str:
    if a is None or b is None or b == 0:
        return "–"
    return fmt.format(a / b)


def lat(t: dict[str, Any], key: str, p: str) -> float | None:
    m = t.get(key)
    if m is None or not m["requests"]:
        return None
    return m["latency_us"][p]


def build(d: dict[str, Any], micro: dict[str, Any] | None) -> str:
    targets = [t for t in ("direct", "forwarder", "router", "router_profile", "litellm") if t in d["rounds"][0]["targets"]]
    L: list[str] = []
    cfg = d["config"]
    L.append(f"Run `{d['started_utc']}` ({d['mode']}): {cfg['rounds']} interleaved rounds; c=1 runs {cfg['lat']} s, "
             f"c=16/64 runs {cfg['rps']} s, c=256 runs {cfg.get('rps256', cfg['rps'])} s, fallback {cfg['fallback']} s, "
             f"{cfg['ttfb_n']} streaming requests, steady load {cfg['steady']} s at c=64. Forwarder stack: "
             f"`{d['forwarder_stack']}` (server:client). CPU scheduling of every system under test: "
             f"{_sched_text(d['layout'].get('sut_cpu_scheduling', 'normal'))}. "
             f"Load average at start {d['loadavg_start']}, at end {d.get('loadavg_end')}.")
    L.append("")

    # ---- latency at c=1
    L.append("**Latency at concurrency 1** (ms; added = target − direct call, same round)")
    L.append("")
    L.append("| target | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    added: dict[str, dict[str, float | None]] = {}
    for t in targets:
        row = [NAMES[t]]
        for p in ("p50", "p99", "p99.9"):
            row.append(ms(per_round(d, t, lambda m, _d, p=p: lat(m, "lat_c1", p))))
        added[t] = {}
        for p in ("p50", "p99", "p99.9"):
            v = per_round(d, t, lambda m, dd, p=p: lat(m, "lat_c1", p) - lat(dd, "lat_c1", p))
            added[t][p] = v
            row.append("–" if t == "direct" else ms(v, 3))
        L.append("| " + " | ".join(row) + " |")
    L.append("")

    # ---- throughput
    L.append("**Throughput** (requests per second, closed loop, one wrk thread; p99 in ms)")
    L.append("")
    L.append("| target | RPS c=16 | p99 c=16 | RPS c=64 | p99 c=64 | RPS c=256 | p99 c=256 | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    rps: dict[str, dict[int, float | None]] = {}
    for t in targets:
        row = [NAMES[t]]
        rps[t] = {}
        errs = 0
        for c in (16, 64, 256):
            v = per_round(d, t, lambda m, _d, c=c: m[f"rps_c{c}"]["rps"])
            rps[t][c] = v
            row.append(num(v))
            row.append(ms(per_round(d, t, lambda m, _d, c=c: lat(m, f"rps_c{c}", "p99")), 1))
            errs += sum(r["targets"][t][f"rps_c{c}"]["failed"] for r in d["rounds"] if t in r["targets"])
        row.append(str(errs))
        L.append("| " + " | ".join(row) + " |")
    L.append("")

    # ---- fallback, streaming, memory
    L.append("**Fallback, streaming, memory**")
    L.append("")
    L.append("| target | fallback p50 (ms) | added beyond the 2nd call (ms) | beyond both calls (ms) | stream TTFB p50 (ms) | added TTFB (ms) | RSS idle (MB) | RSS steady (MB) | steady RPS c=64 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fb_added: dict[str, float | None] = {}
    ttfb_added: dict[str, float | None] = {}
    for t in targets:
        fb = per_round(d, t, lambda m, _d: lat(m, "fallback_c1", "p50")) if t != "direct" else None
        fb_added[t] = per_round(d, t, lambda m, dd: lat(m, "fallback_c1", "p50") - lat(dd, "lat_c1", "p50")) if t != "direct" else None
        both = per_round(d, t, lambda m, dd: lat(m, "fallback_c1", "p50") - lat(dd, "lat_c1", "p50")
                         - lat(dd, "fallback_c1", "p50")) if t != "direct" else None
        tt = per_round(d, t, lambda m, _d: m["stream"]["ttfb_us"]["p50"])
        ttfb_added[t] = per_round(d, t, lambda m, dd: m["stream"]["ttfb_us"]["p50"] - dd["stream"]["ttfb_us"]["p50"]) if t != "direct" else None
        idle = d.get("rss_idle_kb", {}).get(t)
        steady = d.get("steady", {}).get(t, {})
        L.append("| " + " | ".join([
            NAMES[t],
            ms(fb) if t != "direct" else f"(429 call: {ms(per_round(d, t, lambda m, _d: lat(m, 'fallback_c1', 'p50')), 3)})",
            ms(fb_added[t], 3) if t != "direct" else "–",
            ms(both, 3) if t != "direct" else "–",
            ms(tt, 3), ms(ttfb_added[t], 3) if t != "direct" else "–",
            num(idle / 1024 if idle else None, "{:.1f}"), num(steady.get("rss_after_kb", 0) / 1024 if steady else None, "{:.1f}"),
            num(steady.get("rps")) if steady else "–"]) + " |")
    L.append("")

    # ---- light traffic (runs before this measure existed have none)
    light = d.get("light")
    light_added: dict[str, float] = {}
    if light and light.get("ms", {}).get("direct"):
        calls = light["ms"]
        direct = statistics.median(calls["direct"])
        L.append(f"**Light traffic** (one call to each target in turn, {light['gap_ms']} ms between two calls to the "
                 f"same one, {light['calls']} each: every call finds the router's stamped pool expired; ms)")
        L.append("")
        L.append("| target | p50 | p90 | p99 | added p50 |")
        L.append("|---|---:|---:|---:|---:|")
        for t in targets:
            xs = sorted(calls.get(t) or [])
            if not xs:
                continue
            q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
            if t != "direct":
                light_added[t] = statistics.median(xs) - direct
            L.append(f"| {NAMES[t]} | {statistics.median(xs):.2f} | {q(0.9):.2f} | {q(0.99):.2f} | "
                     + ("–" if t == "direct" else f"{light_added[t]:.2f}") + " |")
        L.append("")

    # ---- long streams (runs before this measure existed have none)
    long = d.get("long_stream")
    per_chunk: dict[str, float] = {}
    if long and long.get("targets"):
        L.append(f"**Long streams** ({long['conns']} streamed answers open at once, {long['chunks']} chunks each, one "
                 f"every ~1 ms from the upstream, {long['seconds']} s per target; CPU of all the target's threads)")
        L.append("")
        L.append("| target | streams/s | p50 per stream (ms) | CPU per stream (ms) | CPU per chunk (µs) | failed |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for t in targets:
            e = long["targets"].get(t)
            if e is None:
                continue
            cpu = e.get("cpu_us_per_stream")
            if e.get("cpu_us_per_chunk") is not None:
                per_chunk[t] = e["cpu_us_per_chunk"]
            L.append(f"| {NAMES[t]} | {e['streams_per_s']:.1f} | {e['p50_us'] / 1000:.1f} | "
                     + ("–" if cpu is None else f"{cpu / 1000:.2f}") + " | "
                     + ("–" if t not in per_chunk else f"{per_chunk[t]:.1f}") + f" | {e['failed']} |")
        L.append("")

    # ---- ratios
    if "router" in targets:
        L.append("**Ratios, same run** (router with policy_ir and traces on)")
        L.append("")
        L.append("| measure | vs direct | vs bare forwarder | vs LiteLLM | issue 6 target | holds? |")
        L.append("|---|---:|---:|---:|---|---|")
        r, f, ll, dr = rps["router"], rps.get("forwarder", {}), rps.get("litellm", {}), rps.get("direct", {})
        for c in (16, 64, 256):
            tgt = "≥ 15× LiteLLM, ≥ 0.5× forwarder" if c == 64 else ""
            holds = ""
            if c == 64 and r.get(64) and ll.get(64) and f.get(64):
                holds = "yes" if r[64] >= 15 * ll[64] and r[64] >= 0.5 * f[64] else "no"
            L.append(f"| RPS c={c} | {ratio(r.get(c), dr.get(c))} | {ratio(r.get(c), f.get(c))} | {ratio(r.get(c), ll.get(c))} | {tgt} | {holds} |")
        a_r, a_f, a_l = added["router"], added.get("forwarder", {}), added.get("litellm", {})
        for p in ("p50", "p99", "p99.9"):
            tgt = "≤ 0.1× LiteLLM's" if p == "p50" else ""
            holds = ""
            if p == "p50" and a_r.get(p) is not None and a_l.get(p):
                holds = "yes" if a_r[p] <= 0.1 * a_l[p] else "no"
            L.append(f"| added {p} c=1 | {ms(a_r.get(p), 3)} ms | {ratio(a_r.get(p), a_f.get(p))} | {ratio(a_r.get(p), a_l.get(p), '{:.3f}×')} | {tgt} | {holds} |")
        L.append(f"| fallback added beyond 2nd call | – | {ratio(fb_added.get('router'), fb_added.get('forwarder'))} | "
                 f"{ratio(fb_added.get('router'), fb_added.get('litellm'), '{:.3f}×')} | | |")
        L.append(f"| stream added TTFB | – | {ratio(ttfb_added.get('router'), ttfb_added.get('forwarder'))} | "
                 f"{ratio(ttfb_added.get('router'), ttfb_added.get('litellm'), '{:.3f}×')} | | |")
        if "router" in light_added:
            L.append(f"| light traffic added p50 | {light_added['router']:.2f} ms | "
                     f"{ratio(light_added['router'], light_added.get('forwarder'))} | "
                     f"{ratio(light_added['router'], light_added.get('litellm'), '{:.3f}×')} | | |")
        if "router" in per_chunk:
            L.append(f"| long streams, CPU per chunk | {per_chunk['router']:.1f} µs | "
                     f"{ratio(per_chunk['router'], per_chunk.get('forwarder'))} | "
                     f"{ratio(per_chunk['router'], per_chunk.get('litellm'), '{:.3f}×')} | | |")
        st = d.get("steady", {})
        rr = st.get("router", {}).get("rss_after_kb")
        L.append(f"| steady RSS | – | {ratio(rr, st.get('forwarder', {}).get('rss_after_kb'))} | "
                 f"{ratio(rr, st.get('litellm', {}).get('rss_after_kb'), '{:.3f}×')} | < 100 MB | "
                 f"{'' if rr is None else ('yes' if rr / 1024 < 100 else 'no')} ({num(rr / 1024 if rr else None, '{:.1f}')} MB) |")
        L.append("")

    # ---- CPU per request, by thread
    st = d.get("steady", {})
    if any(v.get("cpu_by_thread") for v in st.values()):
        L.append("**Where each request's CPU time goes, by thread** (steady load, c=64; CPU time of each thread "
                 "of the process tree ÷ requests served; on one core these add up to ~1 s ÷ RPS)")
        L.append("")
        L.append("| target | RPS | total µs/request | by thread (µs/request) |")
        L.append("|---|---:|---:|---|")
        for n, v in st.items():
            rows = v.get("cpu_by_thread") or []
            if not rows:
                continue
            total = sum(r["us_per_request"] for r in rows)
            parts = ", ".join(f"{r['label']} {r['us_per_request']:.1f}" for r in rows if r["us_per_request"] >= 0.5)
            L.append(f"| {NAMES.get(n, n)} | {num(v.get('rps'))} | {total:.1f} | {parts} |")
        L.append("")

    # ---- load side headroom
    L.append("**Is the load side the bottleneck?** Core busy % during the c=64 runs (median over rounds); "
             "the system under test is on cpu0, wrk and the upstream on cpu1.")
    L.append("")
    L.append("| target | cpu0 (SUT) | cpu1 (load) |")
    L.append("|---|---:|---:|")
    for t in targets:
        c0 = per_round(d, t, lambda m, _d: m["rps_c64"]["cpu_busy_pct"]["cpu0"])
        c1 = per_round(d, t, lambda m, _d: m["rps_c64"]["cpu_busy_pct"]["cpu1"])
        L.append(f"| {NAMES[t]} | {num(c0, '{:.0f}')} | {num(c1, '{:.0f}')} |")
    hr = d.get("upstream_headroom", {})
    L.append("")
    L.append("Upstream alone (upstream and wrk together on cpu1): " + ", ".join(
        f"c={k[1:]}: {v['rps']:,.0f} rps (p50 {v['latency_us']['p50']} µs)" for k, v in hr.items()) + ".")
    L.append("")

    # ---- forwarder candidates
    fc = d.get("forwarder_candidates", {})
    if fc:
        L.append("**Bare-forwarder candidates** (each alone on cpu0, measured before the rounds in two passes, the second in reverse order; each at its better pass)")
        L.append("")
        L.append("| server:client | RPS c=64 | p99 c=64 (ms) | p50 c=1 (ms) | RSS (MB) | note |")
        L.append("|---|---:|---:|---:|---:|---|")
        for k, v in sorted(fc.items(), key=lambda kv: -(kv[1].get("rps_c64") or 0)):
            if v.get("ok"):
                L.append(f"| `{k}` | {v['rps_c64']:,.0f} | {ms(v['p99_c64_us'], 1)} | {ms(v['p50_c1_us'], 3)} | {v['rss_kb'] / 1024:.1f} | |")
            else:
                L.append(f"| `{k}` | – | – | – | – | did not run: {str(v.get('error', v.get('failed')))[:80]} |")
        L.append("")

    # ---- profile
    profs = d.get("profile") or {}
    if "samples" in profs:   # older result files: one all-threads profile
        profs = {"all_threads": profs}
    for kind, prof in profs.items():
        if not isinstance(prof, dict) or "samples" not in prof:
            continue
        title = {"gil": "GIL-holding samples: where the Python CPU time goes",
                 "all_threads": "all threads' samples"}.get(kind, kind)
        L.append(f"**Router profile, {title}** (`{prof['tool']}`, {prof['seconds']} s under {prof['load']}, "
                 f"{prof['samples']} samples)")
        L.append("")
        L.append("| self time by file/package | share | | top functions, self time | share |")
        L.append("|---|---:|---|---|---:|")
        areas, selfs = prof["self_by_area"][:15], prof["self"][:15]
        for i in range(max(len(areas), len(selfs))):
            x = areas[i] if i < len(areas) else None
            y = selfs[i] if i < len(selfs) else None
            L.append(f"| {'`' + x['area'] + '`' if x else ''} | {format(x['share'], '.1%') if x else ''} | | "
                     f"{'`' + y['frame'] + '`' if y else ''} | {format(y['share'], '.1%') if y else ''} |")
        L.append("")
        L.append("| router function (file:first line), inclusive time | share |")
        L.append("|---|---:|")
        for x in prof["inclusive_unhardcoded"][:24]:
            L.append(f"| `{x['frame']}` | {x['share']:.1%} |")
        L.append("")

    if micro:
        L.append("**Decision-path micro-benchmarks** (µs per call, median of 5 timed loops, one core, GC on)")
        L.append("")
        L.append("| candidates | survivors | `Policy.plan` | `Router.prepare` cached | prepare, live runtime | prepare, a new threshold | `Router.prepare` uncached | prepare `profile:default` | prepare, restamped | restamped, latency-scored |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def us(row: dict, key: str) -> str:  # absent in runs before the measure existed
            return f"{(row.get(key) or {}).get('median_us', float('nan')):,.1f}"
        for n, row in micro["by_catalog"].items():
            L.append(f"| {int(n):,} | {row['survivors']:,} | {us(row, 'plan')} | {us(row, 'prepare_cached')} | "
                     f"{us(row, 'prepare_live')} | {us(row, 'prepare_new_policy')} | {us(row, 'prepare_uncached')} | "
                     f"{us(row, 'prepare_cached_profile_default')} | {us(row, 'prepare_restamped')} | "
                     f"{us(row, 'prepare_restamped_latency_scored')} |")
        L.append("")
        st = micro["by_catalog"].get("200", {}).get("stages")
        if st:
            L.append(f"Stages for the benchmark policy ({micro['policy_nodes']} nodes), 200 candidates:")
            L.append("")
            L.append("| stage | µs |")
            L.append("|---|---:|")
            for k, v in st.items():
                L.append(f"| `{k}` | {v['median_us']:,.1f} |")
            L.append("")
        L.append("Growth with policy size (200 candidates):")
        L.append("")
        L.append("| nodes | JSON bytes | check | normalize+encode | fingerprint | evaluate | compile uncached | compile, a new threshold | compile cached | plan | prepare cached | prepare, a new threshold | prepare uncached |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for _, s in micro["by_policy_size"].items():
            L.append(f"| {s['nodes']} | {s['json_bytes']:,} | " + " | ".join(
                us(s, k) for k in ("admission_check", "normalize_and_encode", "fingerprint", "evaluate",
                                   "compile_uncached", "compile_new_threshold", "compile_cached", "plan_200",
                                   "prepare_cached_200", "prepare_new_policy_200", "prepare_uncached_200")) + " |")
        L.append("")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description="Markdown tables from bench results")
    ap.add_argument("--run", type=Path)
    ap.add_argument("--micro", type=Path)
    a = ap.parse_args()
    run = a.run or next((p for p in (RESULTS / "latest-full.json", RESULTS / "latest-quick.json") if p.exists()), None)
    micro = a.micro or next((p for p in (RESULTS / "micro-full.json", RESULTS / "micro-quick.json") if p.exists()), None)
    if run is None:
        print("no results yet: run bash bench/run.sh")
        return 1
    d = json.loads(run.read_text())
    m = json.loads(micro.read_text()) if micro else None
    text = build(d, m)
    out = run.with_suffix(".md")
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
