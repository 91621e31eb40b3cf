"""The benchmark workload: a generated catalog, the policies and the request bodies.

The catalog has ``providers × models`` candidates (default 40 × 5 = 200): every
model family is offered by every provider, every route points at the mock
upstream, prices are explicit on each route (no price-library lookup) and
varied deterministically, and each family declares the Num field
``bench_intelligence``. The last provider (``p39`` by default) points at the
upstream's ``/429/`` path and is priced above every ceiling, so the main
policy filters it out and only the fallback policy tries it.

    python bench/workload.py --out DIR --upstream http://127.0.0.1:18000

writes ``DIR/catalog.toml``, ``DIR/body_*.json`` and ``DIR/litellm.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MESSAGES = [{"role": "user", "content": "Say hello."}]

# filter + scorer + selector + xform + failplan: cheapest by expected cost among
# capable (bench_intelligence >= 0.3), affordable routes; healthy routes first;
# move to the next candidate on rate limits and server faults, abort on auth errors.
MAIN_POLICY: list[Any] = [
    "policy",
    ["and", ["cmp", "bench_intelligence", "ge", 0.3],
     ["cmp", "price_in", "le", 8], ["cmp", "price_out", "le", 24],
     ["cmp", "context", "ge", 32000]],
    ["add", ["scale", 0.8, ["neg", ["normalize", ["add", ["scale", 0.8, ["field", "price_in"]],
                                                     ["scale", 0.2, ["field", "price_out"]]]]]],
     ["scale", 0.2, ["normalize", ["field", "bench_intelligence"]]]],
    ["prefer", ["not", ["is", "breaker_open"]], ["top_k", 5, ["argmax"]]],
    ["id"],
    ["override", ["override", ["always", {"action": "next_candidate"}], "auth_error", {"action": "abort"}],
     "rate_limit", {"action": "next_candidate"}],
]

# the profile the `model: "profile:default"` variant runs: the same intent, written by the operator
PROFILE_POLICY: list[Any] = [
    "policy",
    ["and", ["meets_req"], ["not", ["is", "disabled"]], ["cmp", "success_rate", "ge", 0.8],
     ["cmp", "bench_intelligence", "ge", 0.3], ["cmp", "price_in", "le", 8], ["cmp", "price_out", "le", 24]],
    ["add", ["scale", 0.75, ["neg", ["normalize", ["add", ["scale", 0.8, ["field", "price_in"]],
                                                      ["scale", 0.2, ["field", "price_out"]]]]]],
     ["scale", 0.25, ["normalize", ["field", "bench_intelligence"]]]],
    ["prefer", ["not", ["is", "breaker_open"]], ["top_k", 5, ["argmax"]]],
    ["id"],
    ["override", ["always", {"action": "next_candidate"}], "auth_error", {"action": "disable_provider"}],
]


def fallback_policy(rl_provider: str, ok_provider: str, family: str = "m0") -> list[Any]:
    """Two candidates: the rate-limited route first (it is cheaper), then a healthy one."""
    return [
        "policy",
        ["and", ["family_eq", family], ["or", ["provider_eq", rl_provider], ["provider_eq", ok_provider]]],
        ["neg", ["normalize", ["field", "price_in"]]],
        ["argmax"],
        ["id"],
        ["override", ["always", {"action": "abort"}], "rate_limit", {"action": "next_candidate"}],
    ]


def price(pi: int, mi: int) -> tuple[float, float]:
    """Deterministic, varied prices (USD per million tokens)."""
    base = [0.15, 0.6, 2.0, 5.0, 12.0][mi % 5]
    factor = 0.6 + ((pi * 37 + mi * 11) % 29) / 20.0   # 0.6 .. 2.0
    pin = round(base * factor, 4)
    return pin, round(pin * 4, 4)


def intelligence(mi: int) -> float:
    return [0.25, 0.45, 0.6, 0.75, 0.9][mi % 5] if mi < 5 else round(0.2 + (mi * 0.137) % 0.75, 3)


def catalog_doc(n_providers: int = 40, n_models: int = 5, upstream: str = "http://127.0.0.1:18000",
                rate_limited_last: bool = True) -> dict[str, Any]:
    """A catalog document (what build_catalog takes) with n_providers × n_models candidates."""
    pids = [f"p{i:02d}" if n_providers <= 100 else f"p{i:04d}" for i in range(n_providers)]
    rl = pids[-1] if rate_limited_last and n_providers > 1 else None
    providers = {}
    for i, pid in enumerate(pids):
        providers[pid] = {"wire": "openai", "base_url": f"{upstream}/429/v1" if pid == rl else f"{upstream}/v1",
                          "key_env": "BENCH_UPSTREAM_KEY", "tier": ["partner", "marketplace", "fallback"][i % 3]}
    models = {}
    for mi in range(n_models):
        fam = f"m{mi}"
        routes = []
        for pi, pid in enumerate(pids):
            pin, pout = price(pi, mi)
            if pid == rl:
                pin, pout = (0.01, 0.02) if mi == 0 else (100.0, 400.0)
            routes.append({"provider": pid, "id": "bench-model", "price_in": pin, "price_out": pout})
        models[fam] = {"vendor": "bench", "context": 128000 if mi % 2 == 0 else 64000, "supports_tools": True,
                       "fields": {"bench_intelligence": intelligence(mi)}, "routes": routes}
    return {
        "version": 1,
        "tier_order": ["fallback", "marketplace", "partner"],
        "envelope": json.dumps(["and", ["meets_req"], ["not", ["is", "disabled"]]]),
        "fields": {"bench_intelligence": {"sort": "Num", "default": 0, "group": "model",
                                          "description": "benchmark score 0..1"}},
        "providers": providers,
        "models": models,
        "profiles": {"default": {"policy": json.dumps(PROFILE_POLICY), "description": "bench default"}},
    }


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    out = ["# generated by bench/workload.py: do not edit", ""]
    for k in ("version", "tier_order", "envelope"):
        out.append(f"{k} = {_toml_value(doc[k])}")
    for section in ("fields", "providers", "models", "profiles"):
        for name, table in doc[section].items():
            out.append("")
            out.append(f"[{section}.{json.dumps(name)}]")
            for k, v in table.items():
                if k == "routes":
                    out.append("routes = [")
                    out.extend(f"  {_toml_value(r)}," for r in v)
                    out.append("]")
                else:
                    out.append(f"{k} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


LONG_STREAM_CHUNKS = 200  # content chunks of a long streamed answer (upstream.py: max_tokens >= 64)


def bodies(n_providers: int = 40) -> dict[str, dict[str, Any]]:
    rl = f"p{n_providers - 1:02d}"
    base = {"messages": MESSAGES, "max_tokens": 16}
    long = {"messages": MESSAGES, "max_tokens": LONG_STREAM_CHUNKS}
    return {
        # the direct call and the bare forwarder get what the upstream needs
        "direct": {"model": "bench-model", **base},
        "direct_stream": {"model": "bench-model", **base, "stream": True},
        # the router: a policy in every request
        "router": {"model": "", **base, "policy_ir": MAIN_POLICY},
        "router_profile": {"model": "profile:default", **base},
        "router_fallback": {"model": "", **base, "policy_ir": fallback_policy(rl, "p00")},
        "router_stream": {"model": "", **base, "policy_ir": MAIN_POLICY, "stream": True},
        # LiteLLM: model groups of its config
        "litellm": {"model": "bench-model", **base},
        "litellm_fallback": {"model": "rl-bench-model", **base},
        "litellm_stream": {"model": "bench-model", **base, "stream": True},
        # a long streamed answer: the mock upstream sends max_tokens chunks (LONG_STREAM_CHUNKS)
        "direct_long_stream": {"model": "bench-model", **long, "stream": True},
        "router_long_stream": {"model": "", **long, "policy_ir": MAIN_POLICY, "stream": True},
        "litellm_long_stream": {"model": "bench-model", **long, "stream": True},
    }


def litellm_config(upstream: str) -> str:
    """One deployment per model group; retries, cooldowns and callbacks off; one fallback."""
    return f"""# generated by bench/workload.py
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
  - model_name: rl-bench-model
    litellm_params:
      model: openai/rl-bench-model
      api_base: {upstream}/429/v1
      api_key: sk-bench-upstream
litellm_settings:
  num_retries: 0
  request_timeout: 30
  callbacks: []
  success_callback: []
  failure_callback: []
  telemetry: false
  set_verbose: false
router_settings:
  num_retries: 0
  retry_after: 0
  allowed_fails: 1000000
  disable_cooldowns: true
  fallbacks: [{{"rl-bench-model": ["bench-model"]}}]
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


def write(out: Path, upstream: str, n_providers: int = 40, n_models: int = 5) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"catalog": out / "catalog.toml", "litellm": out / "litellm.yaml"}
    paths["catalog"].write_text(to_toml(catalog_doc(n_providers, n_models, upstream)))
    paths["litellm"].write_text(litellm_config(upstream))
    for name, body in bodies(n_providers).items():
        p = out / f"body_{name}.json"
        p.write_text(json.dumps(body, separators=(",", ":")))
        paths[f"body_{name}"] = p
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="write the benchmark catalog and bodies")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--upstream", default="http://127.0.0.1:18000")
    ap.add_argument("--providers", type=int, default=40)
    ap.add_argument("--models", type=int, default=5)
    a = ap.parse_args()
    for k, v in write(a.out, a.upstream, a.providers, a.models).items():
        print(f"{k}: {v}")
