"""The command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from unhardcoded.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unhardcoded.cli", *args], capture_output=True, text=True)


def test_rank_prints_the_failover_order_and_every_rejection(capsys) -> None:
    assert main(["rank", "--policy", '["cmp","bench_intelligence","ge",0.5]']) == 0
    out = capsys.readouterr().out
    assert "predicate on profile default + envelope" in out
    assert 'sent     pol_bcf8d5  sigma-pol/v2:(cmp "bench_intelligence" "ge" 0.5)' in out
    assert "ranked (" in out and "rejected (" in out
    assert "cmp:bench_intelligence:ge" in out
    # a model without a benchmark reads the default 0 and is rejected
    assert "claude-haiku-4-5" in out.split("rejected (")[1]


def test_rank_json_is_machine_readable(capsys) -> None:
    assert main(["rank", "--json", "--model", "family:gpt-5.4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in out["ranked"]} == {"gpt-5.4"}
    assert all(r["model"] != "gpt-5.4" for r in out["rejected"])
    assert {r["reason"] for r in out["rejected"]} >= {"model_family"}
    assert out["policy"]["source"] == "profile"
    assert out["policy"]["effective"]["identity"].startswith(out["policy"]["effective"]["short_id"][4:])


def test_rank_pin_scores_only_the_pinned_route(capsys) -> None:
    assert main(["rank", "--json", "--model", "pin:groq/llama-3.3-70b"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["provider"], r["model"]) for r in out["ranked"]] == [("groq", "llama-3.3-70b")]
    assert out["rejected"] == []


def test_rank_refuses_a_bad_policy_with_code_and_path() -> None:
    p = run("rank", "--policy", '["and",["meets_req"],["cmp","nope","ge",1]]')
    assert p.returncode == 2
    assert "$.policy_ir[2][1]" in p.stderr and "undeclared_field" in p.stderr
    assert "Traceback" not in p.stderr


def test_rank_refuses_malformed_json() -> None:
    p = run("rank", "--policy", '["cmp", "price_in", "le", NaN]')
    assert p.returncode == 2
    assert "json_non_finite" in p.stderr and "$[3]" in p.stderr


def test_policy_prints_identity(capsys) -> None:
    assert main(["policy", '["and",["is","has_tee"],["meets_req"]]', "--core-only"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoding"] == 'sigma-pol/v2:(and (is "has_tee") (meets_req))'
    assert out["short_id"] == "pol_" + out["identity"][:6]
    assert len(out["identity"]) == 64


def test_conformance_replay_exit_codes(golden_path, tmp_path) -> None:
    ok = run("conformance", "replay", str(golden_path))
    assert ok.returncode == 0 and "15/15 vectors agree" in ok.stdout
    doc = json.loads(golden_path.read_text())
    doc["vectors"][0]["expect"]["fingerprint"] = "1-2"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    p = run("conformance", "replay", str(bad))
    assert p.returncode == 1 and "14/15 vectors agree" in p.stdout and "fingerprint" in p.stdout


def test_fields_lists_core_and_host_fields(capsys) -> None:
    assert main(["fields"]) == 0
    out = capsys.readouterr().out
    for name in ("price_in", "breaker_open", "bench_intelligence_rank", "cap_tools"):
        assert name in out
    assert "fallback < marketplace < partner" in out
