"""The catalog: the shipped default, the format's refusals, and where values come from."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from unhardcoded.catalog import CatalogError, build_catalog, load_catalog
from unhardcoded.catalog.loader import DEFAULT_CATALOG
from unhardcoded.catalog.prices import GenaiPrices
from unhardcoded.lang import compile_policy

AT = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

BASE = {
    "providers": {"p": {"wire": "openai", "base_url": "http://127.0.0.1:1/v1", "key_env": "P_KEY"}},
    "models": {"m": {"routes": [{"provider": "p", "id": "m-1", "price_in": 1, "price_out": 2}]}},
}


def doc(**over: object) -> dict:
    d = json.loads(json.dumps(BASE))
    d.update(over)
    return d


def test_the_shipped_catalog_loads_with_its_profiles_and_fields() -> None:
    c = load_catalog(at=AT)
    assert len(c) >= 25
    assert {"default", "cheapest", "agent"} <= set(c.profiles)
    assert {"openai", "anthropic", "gemini", "openrouter"} <= set(c.providers)
    assert c.providers["anthropic"].wire == "anthropic" and c.providers["gemini"].wire == "gemini"
    for f in ("bench_intelligence", "bench_intelligence_rank", "cap_tools", "in_image"):
        assert c.schema.decl(f) is not None
    for p in c.profiles.values():
        compile_policy(p.policy, c.schema)  # every shipped profile admits


def test_prices_and_context_come_from_the_pricing_library_when_the_catalog_is_silent() -> None:
    c = load_catalog(at=AT)
    cand = next(x for x in c.candidates() if x["provider_id"] == "anthropic" and x["model_family"] == "claude-haiku-4-5")
    listing = GenaiPrices().lookup("anthropic", "claude-haiku-4-5", AT)
    assert listing is not None
    assert cand["price_in"] == listing.price.input and cand["price_out"] == listing.price.output
    route = c.route("anthropic", "claude-haiku-4-5")
    assert route.price.source.startswith("genai-prices ")
    assert cand["capabilities"]["context"] == listing.context


def test_benchmarks_come_from_the_traits_file_and_unknown_families_have_none() -> None:
    c = load_catalog(at=AT)
    meta = json.loads((DEFAULT_CATALOG.parent / "model_meta.json").read_text())["families"]
    gpt = next(x for x in c.candidates() if x["model_family"] == "gpt-5.5")
    assert gpt["bench_intelligence"] == meta["gpt-5.5"]["bench_intelligence"]
    claude = next(x for x in c.candidates() if x["model_family"] == "claude-opus-4-8")
    assert "bench_intelligence" not in claude  # never invented: the field default applies
    assert c.schema.observe("bench_intelligence_rank", claude, {}) == 1e9


def test_a_value_nobody_knows_stays_absent() -> None:
    c = build_catalog(doc(models={"m": {"routes": [{"provider": "p", "id": "unknown-model"}]}}))
    cand = c.candidates()[0]
    assert "price_in" not in cand and "price_out" not in cand and "context" not in cand["capabilities"]
    assert c.schema.observe("price_in", cand, {}) == math.inf


def test_the_digest_is_stable_and_content_addressed() -> None:
    a, b = build_catalog(doc()), build_catalog(doc())
    assert a.digest == b.digest and len(a.digest) == 64
    changed = doc()
    changed["models"]["m"]["routes"][0]["price_in"] = 1.5
    assert build_catalog(changed).digest != a.digest


@pytest.mark.parametrize("mutate,code,path", [
    (lambda d: d.update(color="blue"), "unknown_key", "$.color"),
    (lambda d: d["providers"]["p"].update(wire="grpc"), "bad_wire", "$.providers.p.wire"),
    (lambda d: d["providers"]["p"].update(tier="gold"), "unknown_tier", "$.providers.p.tier"),
    (lambda d: d["providers"]["p"].update(base_url="ftp://x"), "bad_value", "$.providers.p.base_url"),
    (lambda d: d["models"]["m"]["routes"][0].update(provider="nope"), "unknown_provider", "$.models.m.routes[0].provider"),
    (lambda d: d["models"]["m"]["routes"][0].update(price_in=-1), "bad_price", "$.models.m.routes[0].price_in"),
    (lambda d: d["models"]["m"]["routes"][0].update(price_in=float("nan")), "bad_price", "$.models.m.routes[0].price_in"),
    (lambda d: d["models"]["m"].update(context=0), "bad_value", "$.models.m.context"),
    (lambda d: d["models"]["m"].update(routes=[]), "missing_key", "$.models.m.routes"),
    (lambda d: d["models"]["m"].update(fields={"x": 1}), "undeclared_field", "$.models.m.fields.x"),
    (lambda d: d.update(fields={"price_in": {"sort": "Num", "default": 0}}), "core_field", "$.fields.price_in"),
    (lambda d: d.update(fields={"x": {"sort": "Text", "default": 0}}), "bad_field", "$.fields.x"),
    (lambda d: d.update(profiles={"default": {"policy": '["cmp", "nope", "le", 1]'}}), "undeclared_field",
     "$.profiles.default.policy[1]"),
    (lambda d: d.update(profiles={"default": {"policy": '["top"]'}}), "sort_mismatch", "$.profiles.default.policy"),
    (lambda d: d.update(profiles={"default": {"policy": '["top", NaN]'}}), "json_non_finite", "$.profiles.default.policy"),
    (lambda d: d.update(envelope='["zero"]'), "sort_mismatch", "$.envelope"),
])
def test_refusals_carry_code_and_path(mutate, code, path) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(CatalogError) as e:
        build_catalog(d)
    assert e.value.code == code
    assert e.value.path == path


def test_a_json_catalog_file_loads(tmp_path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc()))
    assert len(load_catalog(p, prices=None)) == 1


def test_a_toml_syntax_error_is_a_catalog_error(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[providers\n")
    with pytest.raises(CatalogError) as e:
        load_catalog(p)
    assert e.value.code == "catalog_syntax"


def test_the_demo_runs_end_to_end_with_no_keys(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "unhardcoded.cli", "demo", "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "attempt" in p.stdout and "rate_limit (429)" in p.stdout
    assert ": identical" in p.stdout
    assert "Responses API" in p.stdout and " completed: " in p.stdout
    assert "intern-tools gets" in p.stdout and "its second call: 429 rate_limit_exceeded" in p.stdout
    assert re.search(r"would change [1-9][0-9]* of [1-9][0-9]* pick\(s\); cost [0-9.]+ -> [0-9.]+ USD", p.stdout), p.stdout
    assert re.search(r"9\. What it all cost .*\n   [1-9][0-9]* calls, [0-9]+ failed; [0-9.]+ USD over [1-9]", p.stdout), p.stdout
    assert "Traceback" not in p.stderr
