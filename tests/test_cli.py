"""The command line, as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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
    assert ok.stdout.strip().splitlines()[-1] == "15 passed, 0 failed"
    doc = json.loads(golden_path.read_text())
    doc["vectors"][0]["expect"]["fingerprint"] = "1-2"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    p = run("conformance", "replay", str(bad))
    assert p.returncode == 1 and "14/15 vectors agree" in p.stdout and "fingerprint" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "14 passed, 1 failed"


def test_fields_lists_core_and_host_fields(capsys) -> None:
    assert main(["fields"]) == 0
    out = capsys.readouterr().out
    for name in ("price_in", "breaker_open", "bench_intelligence_rank", "cap_tools"):
        assert name in out
    assert "fallback < marketplace < partner" in out


def test_validate_normalize_encode_fingerprint_for_policies(capsys, tmp_path) -> None:
    term = '["and",["meets_req"],["and",["cmp","price_in","le",5]]]'  # nested and: flattened, sorted
    assert main(["normalize", term, "--core-only"]) == 0
    assert json.loads(capsys.readouterr().out) == ["and", ["cmp", "price_in", "le", 5], ["meets_req"]]
    assert main(["encode", term, "--core-only"]) == 0
    encoding = capsys.readouterr().out.strip()
    assert encoding == 'sigma-pol/v2:(and (cmp "price_in" "le" 5) (meets_req))'
    f = tmp_path / "p.json"
    f.write_text(term)
    assert main(["fingerprint", str(f), "--core-only"]) == 0
    fp = capsys.readouterr().out
    assert main(["policy", term, "--core-only"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert f"fingerprint {described['fingerprint']}" in fp and described["identity"] in fp
    assert main(["validate", "@" + str(f)]) == 0
    assert capsys.readouterr().out.startswith("ok: policy (Pred, sigma-pol/v2) pol_")


def test_the_verbs_read_stdin_and_flow_files() -> None:
    p = subprocess.run([sys.executable, "-m", "unhardcoded.cli", "encode", "--core-only"],
                       input='["cmp","price_in","le",5]', capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == 'sigma-pol/v2:(cmp "price_in" "le" 5)'
    from pathlib import Path

    import unhardcoded.flows as flows_pkg
    example = Path(flows_pkg.__file__).parent / "examples" / "two-drafts.json"
    v = run("validate", str(example))
    assert v.returncode == 0 and v.stdout.startswith("ok: flow (Flow, sigma-flow/v1) flow_")
    n = run("normalize", str(example))
    assert json.loads(n.stdout)[0] == "flow" and "n0" in json.loads(n.stdout)[1]


def test_the_verbs_refuse_with_code_and_path_never_a_traceback(tmp_path) -> None:
    cases = [
        (["validate", '["cmp","nope","ge",1]'], "$[1]", "undeclared_field"),
        (["encode", '{"model": "", "policy_ir": ["cmp","price_in","zz",1]}'], "$.policy_ir", ""),
        (["normalize", '{"a":1,"a":2}'], "$.a", "json_duplicate_key"),
        (["fingerprint", "[" * 5000], "$", "json_too_deep"),
        (["validate", '{"nodes": {}}'], "$", ""),
        (["validate", str(tmp_path / "missing.json")], "", "No such file"),
    ]
    for argv, path, code in cases:
        p = run(*argv)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.startswith("error: "), p.stderr
        assert path in p.stderr and code in p.stderr, (argv, p.stderr)


@pytest.fixture(scope="module")
def stored_traces(tmp_path_factory):
    """A trace store with a few records in it, as `serve` leaves one."""
    from unhardcoded.demo import main as demo
    data = tmp_path_factory.mktemp("demo")
    assert demo(str(data)) == 0
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=6), st.integers(-5, 2000).map(str)))
def test_traces_limit_and_since_are_checked_by_the_parser_never_a_traceback(stored_traces, capsys, text) -> None:
    for option, good in (("--limit", text.isascii() and text.isdigit() and 1 <= int(text) <= 1000),
                         ("--since", bool(re.fullmatch(r"[0-9]+[smhd]?", text)))):
        argv = ["traces", "--data-dir", str(stored_traces), "--json", option, text]
        if text.startswith("-"):  # argparse reads a leading dash as an option: still a usage error
            argv[-2:] = [f"{option}={text}"]
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's usage error
            rc = exc.code
        out = capsys.readouterr()
        if good:
            assert rc == 0, (option, text, out.err)
            json.loads(out.out)
        else:
            assert rc == 2 and f"argument {option}" in out.err, (option, text, out.err)


def test_the_store_commands_refuse_a_missing_store_and_leave_nothing_behind(tmp_path) -> None:
    empty = tmp_path / "nowhere"
    for argv in (["traces"], ["trace", "tr_x"], ["replay", "tr_x"]):
        p = run(*argv, "--data-dir", str(empty))
        assert p.returncode == 2 and p.stderr.startswith("error: no trace store at "), (argv, p.stderr)
        assert "Traceback" not in p.stderr
    assert not empty.exists()


def test_traces_refuses_a_cursor_it_did_not_hand_out(stored_traces) -> None:
    p = run("traces", "--data-dir", str(stored_traces), "--cursor", "not-a-cursor")
    assert p.returncode == 2 and p.stderr.startswith("error: --cursor: malformed cursor"), p.stderr
    first = json.loads(run("traces", "--data-dir", str(stored_traces), "--json", "--limit", "1").stdout)
    assert len(first["data"]) == 1 and first["next_cursor"]
    nxt = json.loads(run("traces", "--data-dir", str(stored_traces), "--json", "--limit", "1",
                         "--cursor", first["next_cursor"]).stdout)
    assert len(nxt["data"]) == 1 and nxt["data"][0]["trace_id"] != first["data"][0]["trace_id"]


def test_serve_with_a_catalog_it_cannot_read_says_so_and_never_says_listening(tmp_path) -> None:
    p = run("serve", "--catalog", str(tmp_path / "missing.toml"), "--port", str(_free_port()),
            "--data-dir", str(tmp_path / "data"))
    assert p.returncode == 2 and "catalog_missing" in p.stderr and "listening" not in p.stderr, p.stderr


def test_serve_on_port_0_announces_the_port_it_serves_on(tmp_path) -> None:
    """`serve --port 0` asks for any free port; the "listening" line names the one it got,
    and the router answers there."""
    with _serving(tmp_path, "--port", "0") as (proc, line):
        m = re.match(r"unhardcoded listening on http://127\.0\.0\.1:(\d+)/v1 ", line)
        assert m, line
        port = int(m.group(1))
        assert port != 0
        _answers_healthz(proc, f"http://127.0.0.1:{port}")


@pytest.mark.skipif(not __import__("socket").has_ipv6, reason="no IPv6 here")
def test_serve_on_ipv6_loopback_announces_a_url_that_works(tmp_path) -> None:
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with _serving(tmp_path, "--host", "::1", "--port", "0") as (proc, line):
        m = re.match(r"unhardcoded listening on (http://\[::1\]:\d+)/v1 ", line)
        assert m, line
        _answers_healthz(proc, m.group(1))


@contextlib.contextmanager
def _serving(tmp_path, *args: str):
    """`unhardcoded serve ARGS` with its own data dir: (the process, the first line it printed to
    stderr); stopped on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "unhardcoded.cli", "serve", *args, "--data-dir",
                             str(tmp_path / "data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc, proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers_healthz(proc: subprocess.Popen, base: str) -> None:
    """The server ``proc`` announced answers GET /healthz at ``base`` within 15 s."""
    import urllib.request
    for _ in range(300):
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                assert r.status == 200
                return
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
    raise AssertionError(f"nothing answered at {base}")


def test_python_dash_m_unhardcoded_is_the_command_line() -> None:
    p = subprocess.run([sys.executable, "-m", "unhardcoded", "policy", '["cmp","bench_intelligence","ge",0.5]'],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "pol_bcf8d5" in p.stdout, p.stderr


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize("setting, want", [("batch", "SCHED_BATCH"), ("normal", "SCHED_OTHER")])
def test_serve_runs_every_thread_under_its_cpu_scheduling(tmp_path, setting, want) -> None:
    """`unhardcoded serve` puts itself and every thread it starts (the server's runtime, the
    trace writer) under the configured policy; `normal` leaves the default. (The trace writer's
    own setting, SCHED_IDLE by default, is `normal` here: tests/test_traces.py has its own.)"""
    env = {**os.environ, "UNHARDCODED_CPU_SCHEDULING": setting, "UNHARDCODED_TRACE_WRITER_SCHEDULING": "normal"}
    proc = _serve_until_healthy(tmp_path, env)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(tids) >= 2  # the event loop and the server's runtime thread at least
        policies = {os.sched_getscheduler(t) for t in tids}
        assert policies == {getattr(os, want)}, (setting, policies)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
@pytest.mark.parametrize("setting", [None, "normal"])
def test_serve_runs_its_trace_writer_idle_by_default(tmp_path, setting) -> None:
    """By default the trace writer gives way to the threads that serve calls (SCHED_IDLE) where
    it can be raised again; asked for `normal`, it keeps the server's policy. Every other thread
    keeps the server's policy either way."""
    from unhardcoded.traces.writer_priority import can_leave_idle
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    if setting is not None:
        env["UNHARDCODED_TRACE_WRITER_SCHEDULING"] = setting
    proc = _serve_until_healthy(tmp_path, env)
    try:
        by_name: dict[str, set[int]] = {}
        for _ in range(100):  # the writer names itself once it runs
            by_name = {}
            for t in os.listdir(f"/proc/{proc.pid}/task"):
                with open(f"/proc/{proc.pid}/task/{t}/comm") as f:
                    by_name.setdefault(f.read().strip(), set()).add(os.sched_getscheduler(int(t)))
            if "trace-writer" in by_name:
                break
            time.sleep(0.02)
        writer = by_name.pop("trace-writer")
        assert writer == {os.SCHED_IDLE if setting is None and can_leave_idle() else os.SCHED_BATCH}
        assert set().union(*by_name.values()) == {os.SCHED_BATCH}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _serve_until_healthy(tmp_path, env: dict[str, str]) -> subprocess.Popen:
    """`unhardcoded serve` on a free port with ``env``, once it answers /healthz."""
    import urllib.request
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "unhardcoded.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("unhardcoded serve did not answer /healthz within 15 s")
    if proc.poll() is not None:
        raise AssertionError(f"unhardcoded serve exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    return proc


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backtest_runs_a_policy_over_the_stored_calls(stored_traces) -> None:
    smart = '["policy",["meets_req"],["field","bench_intelligence"],["argmax"],["id"],["always",{"action":"next_candidate"}]]'
    p = run("backtest", smart, "--data-dir", str(stored_traces), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    t = out["totals"]
    assert t["traces"] >= 1 and t["decided"] + t["not_replayable"] + t["refused"] + t["catalog_missing"] == t["traces"]
    assert t["decided"] >= 1 and out["over"] == "stored"
    assert sum(g["traces"] for g in out["transitions"]) == t["decided"]
    text = run("backtest", smart, "--data-dir", str(stored_traces), "--limit", "2")
    assert text.returncode == 0 and text.stdout.startswith("backtest of pol_") and "would go to" in text.stdout
    one = json.loads(run("backtest", smart, "--data-dir", str(stored_traces), "--json", "--limit", "1").stdout)
    assert one["totals"]["traces"] == 1 and one["window"]["next_cursor"]
    # the demo's named caller (intern-tools) is not in this command's config: said, not hidden
    full = run("backtest", smart, "--data-dir", str(stored_traces))
    assert t["unknown_callers"] >= 1 and "callers this config does not name" in full.stdout, full.stdout
    now = json.loads(run("backtest", smart, "--data-dir", str(stored_traces), "--json", "--over", "current").stdout)
    assert now["over"] == "current" and now["totals"]["traces"] == t["traces"]


def test_backtest_refuses_with_code_and_path_never_a_traceback(stored_traces, tmp_path) -> None:
    for argv, needle in ((["backtest", '["cmp","nope","ge",1]'], "undeclared_field"),
                         (["backtest", '["flow",{}]'], "flow_backtest_unsupported"),
                         (["backtest", "[1,"], "$"),
                         (["backtest", '["meets_req"]', "--cursor", "not-a-cursor"], "--cursor"),
                         (["backtest", '["meets_req"]', "--limit", "10001"], "argument --limit"),
                         (["backtest", '["meets_req"]', "--samples", "-1"], "argument --samples")):
        p = run(*argv, "--data-dir", str(stored_traces))
        assert p.returncode == 2 and "Traceback" not in p.stderr and needle in p.stderr, (argv, p.stderr)
    p = run("backtest", '["meets_req"]', "--data-dir", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and p.stderr.startswith("error: no trace store at ")
