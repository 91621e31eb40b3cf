"""The ``unhardcoded`` command line.

    unhardcoded demo        the whole product on loopback, no keys, no network
    unhardcoded serve       the OpenAI-compatible router
    unhardcoded rank        dry-run: rank the catalog with a policy, print a table
    unhardcoded traces / trace / replay   the trace store
    unhardcoded backtest POLICY   a policy over the stored calls: where they would go, what they'd cost
    unhardcoded policy      admit a term; print its normal form, encoding and identity
    unhardcoded fields      the field vocabulary a policy can observe
    unhardcoded conformance replay FILE   replay language-neutral vectors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from .lang import strictjson
from .lang.errors import LangError


def _read_json_arg(text: str) -> Any:
    """A JSON value given inline, or ``@path`` to read it from a file (``@-`` for stdin)."""
    if text.startswith("@"):
        src = text[1:]
        raw = sys.stdin.buffer.read() if src == "-" else Path(src).read_bytes()
        return strictjson.loads(raw)
    return strictjson.loads(text)


def _fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "+inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if v != int(v) or abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def _fmt_ctx(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [False] * len(headers)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# ----------------------------------------------------------------- commands

def cmd_rank(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .lang.compiler import Compiler
    from .router.contract import parse_contract
    from .router.decision import choose_policy, decide

    catalog = load_catalog(args.catalog)
    body: dict[str, Any] = {"model": args.model or ""}
    if args.policy:
        body["policy_ir"] = _read_json_arg(args.policy)
    if args.requirements:
        body["requirements"] = _read_json_arg(args.requirements)
    if args.tools:
        body["tools"] = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    if args.seed is not None:
        body["seed"] = args.seed
    contract = parse_contract(body)
    compiler = Compiler(catalog.schema)
    choice = choose_policy(contract, catalog, compiler)
    ctx = {"request": contract.request_view(body), "state": {}, "seed": contract.seed, "now_ms": 0}
    plan = decide(choice.effective.policy, catalog.candidates(), ctx, contract.pin)

    if args.json:
        out = {
            "policy": choice.describe(),
            "catalog": {"source": catalog.source, "digest": catalog.digest, "routes": len(catalog)},
            "ranked": [{"rank": i, "provider": r.candidate["provider_id"], "model": r.candidate["model_family"],
                        "served_model_id": r.candidate.get("served_model_id"),
                        "score": r.score if isinstance(r.score, (int, float)) and math.isfinite(r.score) else None,
                        "price_in": r.candidate.get("price_in"), "price_out": r.candidate.get("price_out")}
                       for i, r in enumerate(plan.ordered, start=1)],
            "rejected": [{"provider": x.provider, "model": x.model, "reason": x.reason} for x in plan.rejected],
        }
        print(json.dumps(out, indent=2))
        return 0

    eff = choice.effective
    how = {"profile": f"profile {choice.profile}", "policy": "policy_ir + envelope",
           "predicate": f"predicate on profile {choice.profile} + envelope"}[choice.source]
    print(f"policy   {eff.short_id}  ({how})  fingerprint {eff.fingerprint}")
    if choice.sent is not None:
        print(f"sent     {choice.sent.short_id}  {choice.sent.encoding}")
    print(f"catalog  {Path(catalog.source).name}  {len(catalog)} routes  {catalog.digest[:12]}")
    if contract.requirements or contract.pin:
        print(f"request  requirements {json.dumps(contract.requirements)}" + (f"  pin {contract.pin}" if contract.pin else ""))
    print()
    rows = []
    for i, r in enumerate(plan.ordered, start=1):
        c = r.candidate
        rows.append([str(i), c["provider_id"], c["model_family"], _fmt_num(r.score),
                     _fmt_num(c.get("price_in"), 3), _fmt_num(c.get("price_out"), 3),
                     _fmt_ctx((c.get("capabilities") or {}).get("context")),
                     _fmt_num(c.get("bench_intelligence"), 3)])
    if rows:
        print(f"ranked ({len(rows)}): the failover order, best first")
        print(table(["#", "provider", "model", "score", "$/M in", "$/M out", "context", "intelligence"], rows,
                    [True, False, False, True, True, True, True, True]))
    else:
        print("ranked (0): no route passes this policy")
    if plan.rejected:
        print()
        print(f"rejected ({len(plan.rejected)})")
        print(table(["provider", "model", "reason"], [[str(x.provider), str(x.model), x.reason] for x in plan.rejected]))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .lang.compiler import Compiler

    schema = load_catalog(args.catalog).schema if args.catalog or not args.core_only else None
    compiled = Compiler(schema).compile(_read_json_arg(args.term))
    print(json.dumps(compiled.describe(), indent=2, ensure_ascii=False))
    return 0


def _term_input(src: str | None) -> Any:
    """A policy or flow from a file path, ``@path``, inline JSON, or stdin (no argument or ``-``)."""
    if src is None or src in ("-", "@-"):
        return strictjson.loads(sys.stdin.buffer.read())
    if src.startswith("@"):
        return strictjson.loads(Path(src[1:]).read_bytes())
    if src.lstrip().startswith(("[", "{", '"')):
        return strictjson.loads(src)
    return strictjson.loads(Path(src).read_bytes())  # a missing file is an OSError: one line on stderr


def _is_flow(term: Any) -> bool:
    return isinstance(term, dict) or (isinstance(term, list) and len(term) == 2 and term[0] == "flow")


def _identify(args: argparse.Namespace) -> dict[str, Any]:
    """Admit a policy term (any sort) or a flow: its normal form, encoding and identity."""
    from .catalog import load_catalog
    from .lang.compiler import Compiler
    from .lang.flow import admit_flow

    term = _term_input(args.term)
    schema = None if args.core_only else load_catalog(args.catalog).schema
    # a request body or a flow file carries the term in a member: read it there (paths say so)
    member = next((k for k in ("flow_ir", "policy_ir") if isinstance(term, dict) and k in term), None)
    path: tuple[str, ...] = (member,) if member else ()
    if member:
        term = term[member]
    if member == "flow_ir" or (member is None and _is_flow(term)):
        nf = admit_flow(term, schema, path=path)
        return {"kind": "flow", "sort": "Flow", **nf.describe()}
    return {"kind": "policy", **Compiler(schema).compile(term, path=path).describe()}


def cmd_term(args: argparse.Namespace) -> int:
    d = _identify(args)
    ir = d.get("policy_ir", d.get("flow_ir"))
    if args.verb == "validate":
        print(f"ok: {d['kind']} ({d['sort']}, {d['version']}) {d['short_id']}")
    elif args.verb == "normalize":
        print(json.dumps(ir, ensure_ascii=False, separators=(",", ":")))
    elif args.verb == "encode":
        print(d["encoding"])
    else:
        print(f"fingerprint {d['fingerprint']}\nidentity    {d['identity']}\nid          {d['short_id']}")
    return 0


def cmd_fields(args: argparse.Namespace) -> int:
    from .catalog import load_catalog

    schema = load_catalog(args.catalog).schema
    rows = [[d["name"], d["sort"], str(d["default"]).lower() if isinstance(d["default"], bool) else str(d["default"]),
             d["group"], d["description"]] for d in schema.describe()]
    print(table(["field", "sort", "default", "group", "meaning"], rows))
    print(f"\ntiers (lowest first): {' < '.join(schema.tier_order)}")
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from .lang.conformance import replay

    failed = total = 0
    for f in args.files:
        doc = strictjson.loads(Path(f).read_bytes())
        for r in replay(doc):
            total += 1
            if not r.ok:
                failed += 1
                print(f"FAIL {Path(f).name}: {r.name} ({r.kind})")
                for msg in r.failures:
                    print(f"     {msg}")
            elif args.verbose:
                print(f"ok   {Path(f).name}: {r.name}")
    print(f"{total - failed}/{total} vectors agree" + ("" if not failed else f"; {failed} differ"))
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .server import resolve_port, serve
    from .traces import describe_store

    settings = load_settings(args.config, host=args.host, port=args.port, catalog=args.catalog,
                             data_dir=args.data_dir)
    try:
        settings.port = resolve_port(settings.host, settings.port)
    except OSError as e:
        raise CommandError(f"cannot bind {settings.host}: {e.strerror or e}") from None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address in a URL
    serve(settings, log_level=args.log_level, server=args.server, config_path=args.config,
          announce=f"unhardcoded listening on http://{host}:{settings.port}/v1  "
                   f"(traces: {describe_store(settings)})")
    return 0


class CommandError(Exception):
    """A command that cannot do what it was asked: one line for the user, exit status 2."""


def _store_for(args: argparse.Namespace):  # noqa: ANN202
    from .config import load_settings
    from .traces import open_store

    settings = load_settings(args.config, data_dir=args.data_dir)
    path = Path(settings.data_dir) / "traces.sqlite3"
    if settings.trace_store == "sqlite" and not path.is_file():  # reading must not leave an empty store behind where none was
        raise CommandError(f"no trace store at {path} (pass the --data-dir that serve or demo wrote to)")
    store = open_store(settings)
    import atexit
    atexit.register(store.close)  # a command reads and ends: a database store's pool closes with it
    return settings, store


def cmd_callers(args: argparse.Namespace) -> int:
    """The named callers of the config, their limits and what the trace store holds of their use
    (the budget window so far, the last minute's tokens). Calls in flight are only the running
    router's: ``GET /x/caller``."""
    from .runtime.limits import CallerLimits

    settings, store = _store_for(args)
    if not settings.callers:
        raise CommandError("the config names no callers ([callers.NAME] tables)")
    limits = CallerLimits(settings.callers)
    limits.load(store.caller_usage)
    rows = [limits.usage(name) for name in sorted(settings.callers)]
    for row in rows:
        row["concurrent_requests"].pop("in_flight", None)  # the store cannot know what runs now
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'caller':<20} {'window':<6} {'spent / budget (USD)':>22} {'calls':>7} {'unpriced':>8} "
          f"{'tokens last min / limit':>24} {'req/min':>7} {'concurrent':>10}")
    for row in rows:
        b, tpm = row["budget"], row["tokens_per_minute"]
        budget = f"{b['spent_usd']} / {b['limit_usd'] or '-'}"
        tokens = f"{tpm['used']} / {tpm['limit'] or '-'}"
        print(f"{row['caller']:<20} {b['window']:<6} {budget:>22} {b['calls']:>7} {b['unpriced_calls']:>8} "
              f"{tokens:>24} {row['requests_per_minute']['limit'] or '-':>7} "
              f"{row['concurrent_requests']['limit'] or '-':>10}")
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from .traces.views import traces_table

    # argparse hands "--limit=--" over as [] without calling the type: refuse what is not a number
    for name in ("limit", "since"):
        v = getattr(args, name)
        if v is not None and type(v) is not int:
            print(f"unhardcoded traces: error: argument --{name}: not a value", file=sys.stderr)
            return 2
    _, store = _store_for(args)
    try:
        rows, nxt = store.list(policy=args.policy, route=args.route, model=args.model, provider=args.provider,
                               status=args.status, session=args.session, caller=args.caller, limit=args.limit, cursor=args.cursor,
                               since_ms=args.since)
    except ValueError as exc:  # a cursor that is not one this store handed out
        raise CommandError(f"--cursor: {exc}") from None
    if args.json:
        print(json.dumps({"data": rows, "next_cursor": nxt}, indent=2))
    else:
        print(traces_table(rows, nxt))
    return 0


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²", which isdigit() takes and int() refuses


def _since(text: str) -> int:
    """``--since``: an age (``90s``, ``30m``, ``24h``, ``7d``) or milliseconds since the epoch."""
    import time
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and _digits(text[:-1]):
        return int((time.time() - int(text[:-1]) * units[text[-1]]) * 1000)
    if _digits(text):
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not an age (90s, 30m, 24h, 7d) nor milliseconds since the epoch")


def _limit(text: str) -> int:
    """``--limit``: what ``GET /x/traces`` accepts, from 1 to the store's page size."""
    from .traces.sqlite import MAX_PAGE
    if not _digits(text) or not 1 <= int(text) <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of traces from 1 to {MAX_PAGE}")
    return int(text)


def cmd_trace(args: argparse.Namespace) -> int:
    from .traces.views import receipt

    _, store = _store_for(args)
    rec = store.get(args.trace_id)
    if rec is None:
        print(f"error: no trace {args.trace_id}", file=sys.stderr)
        return 2
    print(json.dumps(rec, indent=2, ensure_ascii=False) if args.json else receipt(rec))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .traces.replay import ReplayError, against_current, replay_record
    from .traces.views import replay_text

    settings, store = _store_for(args)
    rec = store.get(args.trace_id)
    if rec is None:
        print(f"error: no trace {args.trace_id}", file=sys.stderr)
        return 2
    try:
        if args.against == "current":
            from .catalog import load_catalog
            from .router.engine import Router
            router = Router(load_catalog(args.catalog or settings.catalog), settings)
            out = against_current(rec, router)
        else:
            snap = store.catalog_snapshot(rec.get("catalog", {}).get("digest", ""))
            if snap is None:
                print("error: the catalog snapshot of this trace is not stored", file=sys.stderr)
                return 2
            out = replay_record(rec, snap)
    except ReplayError as exc:
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, ensure_ascii=False) if args.json else replay_text(out))
    return 0 if out.get("identical", True) else 1


def cmd_backtest(args: argparse.Namespace) -> int:
    """``POST /x/backtest`` without a server: the stored calls of ``--data-dir``, the catalog and
    config of today (``--catalog`` for another), read-only."""
    from .catalog import load_catalog
    from .router.engine import Router
    from .traces.backtest import Backtest
    from .traces.views import backtest_text

    settings, store = _store_for(args)
    term = _read_json_arg(args.policy)
    router = Router(load_catalog(args.catalog or settings.catalog), settings)
    bt = Backtest(term, router, over=args.over, snapshots=store.catalog_snapshot, samples=args.samples)
    filters = {k: getattr(args, k) for k in ("policy_id", "route", "model", "provider", "status", "session", "caller")
               if getattr(args, k)}
    if "policy_id" in filters:
        filters["policy"] = filters.pop("policy_id")
    try:
        records, nxt = store.records(cursor=args.cursor, limit=args.limit, kind="chat", since_ms=args.since,
                                     until_ms=args.until, **filters)
    except ValueError as exc:
        raise CommandError(f"--cursor: {exc}") from None
    out = bt.run(records).report()
    out["window"] = {"since_ms": args.since, "until_ms": args.until, "limit": args.limit, "next_cursor": nxt,
                     "filters": filters}
    print(json.dumps(out, indent=2, ensure_ascii=False) if args.json else backtest_text(out))
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy the store that --config/--data-dir name into the one --to's config names: every trace
    with its catalog snapshots, and the stored responses (``traces/copy.py``)."""
    from .config import load_settings
    from .traces import describe_store, open_store
    from .traces.copy import copy_responses, copy_traces
    from .traces.responses import open_response_store

    settings, source = _store_for(args)
    target_settings = load_settings(args.to)
    if describe_store(target_settings) == describe_store(settings):
        raise CommandError(f"--to names the same store ({describe_store(settings)})")
    target = open_store(target_settings)
    try:
        counts = copy_traces(source, target, progress=None if args.json else
                             lambda n: print(f"  {n} traces copied", file=sys.stderr))
    except (TimeoutError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        target.close()
    counts["responses"] = 0
    held = settings.trace_store != "sqlite" or (Path(settings.data_dir) / "responses.sqlite3").is_file()
    src_responses = open_response_store(settings) if settings.store_responses and held else None
    if src_responses is not None and src_responses.count():
        dst_responses = open_response_store(target_settings)
        if dst_responses is None:
            raise CommandError("the source holds stored responses and --to's config keeps none "
                               "(traces.store_responses = false)")
        try:
            counts["responses"] = copy_responses(src_responses, dst_responses)
        finally:
            dst_responses.close()
            src_responses.close()
    if args.json:
        print(json.dumps({"from": describe_store(settings), "to": describe_store(target_settings), **counts}))
    else:
        print(f"copied {counts['traces']} traces ({counts['catalogs']} catalog snapshots) and "
              f"{counts['responses']} stored responses from {describe_store(settings)} "
              f"to {describe_store(target_settings)}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """``GET /v1/usage`` without a server, over the trace store of ``--data-dir`` (every caller's
    calls, or ``--caller``'s)."""
    import time

    from .server.usage import build_report
    from .traces.views import usage_text

    _, store = _store_for(args)
    filters = {k: getattr(args, k) for k in ("policy", "route", "model", "provider", "status", "session", "caller", "kind")
               if getattr(args, k)}
    now = int(time.time() * 1000)
    if args.window is not None:
        filters["since_ms"] = now - args.window[1]
    elif args.since is not None:
        filters["since_ms"] = args.since
    if args.until is not None:
        filters["until_ms"] = args.until
    report = build_report(store, {"filters": filters, "limit": args.limit, "offset": 0,
                                  "window": None if args.window is None else args.window[0]}, None, now_ms=now)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else usage_text(report))
    return 0


def _window(text: str) -> tuple[str, int]:
    from .traces.usage import UsageArgError, window_ms
    try:
        return text, window_ms(text)
    except UsageArgError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _recent(text: str) -> int:
    from .traces.usage import MAX_RECENT
    if not _digits(text) or int(text) > MAX_RECENT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of recent calls from 0 to {MAX_RECENT}")
    return int(text)


def _backtest_limit(text: str) -> int:
    from .traces.backtest import MAX_BACKTEST
    if not _digits(text) or not 1 <= int(text) <= MAX_BACKTEST:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of calls from 1 to {MAX_BACKTEST}")
    return int(text)


def _samples(text: str) -> int:
    if not _digits(text) or not 0 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of samples from 0 to 100")
    return int(text)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    return demo_main(args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unhardcoded", description="A decision layer for LLM calls.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole product on loopback: mock providers, real HTTP, no keys")
    d.add_argument("--data-dir", dest="data_dir", help="where the demo's traces go (default: a new temp dir)")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("rank", help="dry-run: rank the catalog with a policy (no call is made)")
    r.add_argument("--catalog", help="catalog file (TOML or JSON); default: the shipped catalog")
    r.add_argument("--model", default="", help='route as in the "model" field: profile:NAME, family:F, pin:P/F')
    r.add_argument("--policy", help="a policy_ir term (full policy or bare predicate) as JSON, or @file")
    r.add_argument("--requirements", help='requirements as JSON, e.g. \'{"min_context": 200000}\'')
    r.add_argument("--tools", action="store_true", help="rank as if the request carried tools")
    r.add_argument("--seed", type=int, help="request seed (sample and jitter draw from it)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(fn=cmd_rank)

    pol = sub.add_parser("policy", help="admit a term; print normal form, encoding, fingerprint, identity")
    pol.add_argument("term", help="the term as JSON, or @file")
    pol.add_argument("--catalog", help="declare the fields of this catalog (default: the shipped catalog)")
    pol.add_argument("--core-only", action="store_true", help="admit against the core vocabulary only")
    pol.set_defaults(fn=cmd_policy)

    verbs = {"validate": "admit a policy or flow (file, @file, inline JSON, or stdin); exit 2 with code and path if refused",
             "normalize": "print the normal form of a policy or flow",
             "encode": "print the canonical encoding of a policy or flow",
             "fingerprint": "print the fingerprint and identity of a policy or flow"}
    for verb, text in verbs.items():
        v = sub.add_parser(verb, help=text)
        v.add_argument("term", nargs="?", help="a file, @file, inline JSON, or - / nothing for stdin")
        v.add_argument("--catalog", help="declare the fields of this catalog (default: the shipped catalog)")
        v.add_argument("--core-only", action="store_true", help="admit against the core vocabulary only")
        v.set_defaults(fn=cmd_term, verb=verb)

    fl = sub.add_parser("fields", help="the field vocabulary policies observe")
    fl.add_argument("--catalog")
    fl.set_defaults(fn=cmd_fields)

    sv = sub.add_parser("serve", help="run the router (OpenAI-compatible) on loopback")
    sv.add_argument("--config", help="settings file (TOML)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--catalog")
    sv.add_argument("--data-dir", dest="data_dir")
    sv.add_argument("--log-level", default="warning")
    sv.add_argument("--server", choices=("granian", "uvicorn"), default="granian",
                    help="HTTP server: granian (RSGI, faster; the default when installed) or uvicorn (ASGI)")
    sv.set_defaults(fn=cmd_serve)

    def store_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config")
        sp.add_argument("--data-dir", dest="data_dir")
        sp.add_argument("--json", action="store_true")

    tr = sub.add_parser("traces", help="recent runs, newest first")
    store_args(tr)
    for name in ("policy", "route", "model", "provider", "status", "session", "caller", "cursor"):
        tr.add_argument(f"--{name}")
    tr.add_argument("--since", type=_since, help="e.g. 24h, 30m, or milliseconds since the epoch")
    tr.add_argument("--limit", type=_limit, default=20, help="at most this many (1 to 1000; default 20)")
    tr.set_defaults(fn=cmd_traces)

    cl = sub.add_parser("callers", help="named callers: their limits and their use (budget, last minute)")
    store_args(cl)
    cl.set_defaults(fn=cmd_callers)

    one = sub.add_parser("trace", help="one run's receipt: what answered, why, the path, latency, cost")
    store_args(one)
    one.add_argument("trace_id")
    one.set_defaults(fn=cmd_trace)

    rp = sub.add_parser("replay", help="re-run a stored decision from its record alone and compare bytes")
    store_args(rp)
    rp.add_argument("trace_id")
    rp.add_argument("--against", choices=("stored", "current"), default="stored",
                    help="stored: the record's own inputs; current: today's catalog and state")
    rp.add_argument("--catalog", help="with --against current: the catalog to compare with")
    rp.set_defaults(fn=cmd_replay)

    bt = sub.add_parser("backtest", help="run a policy over the stored calls: where they would go, what they'd cost")
    store_args(bt)
    bt.add_argument("policy", help="the policy_ir (a Policy or a Pred term) inline, or @FILE (@- for stdin)")
    bt.add_argument("--over", choices=("stored", "current"), default="stored",
                    help="stored: each call's own catalog and state; current: today's")
    bt.add_argument("--catalog", help="today's catalog, if not the config's")
    for name in ("route", "model", "provider", "status", "session", "caller", "cursor"):
        bt.add_argument(f"--{name}")
    bt.add_argument("--policy-id", dest="policy_id", help="only calls that ran this policy (pol_… or its identity)")
    bt.add_argument("--since", type=_since, help="e.g. 24h, 7d, or milliseconds since the epoch")
    bt.add_argument("--until", type=_since, help="e.g. 1h (an hour ago), or milliseconds since the epoch")
    bt.add_argument("--limit", type=_backtest_limit, default=1000, help="the newest this many calls (1 to 10000; default 1000)")
    bt.add_argument("--samples", type=_samples, default=20, help="changed calls to show (0 to 100; default 20)")
    bt.set_defaults(fn=cmd_backtest)

    us = sub.add_parser("usage", help="what the stored calls add up to: cost, tokens, errors, latency, by provider, "
                                      "model, route, policy, caller and day")
    store_args(us)
    when = us.add_mutually_exclusive_group()
    when.add_argument("--window", type=_window, help="the span ending now: 15m, 24h, 7d, 4w")
    when.add_argument("--since", type=_since, help="e.g. 24h, 7d, or milliseconds since the epoch")
    us.add_argument("--until", type=_since, help="e.g. 1h (an hour ago), or milliseconds since the epoch")
    for name in ("policy", "route", "model", "provider", "status", "session", "caller", "kind"):
        us.add_argument(f"--{name}")
    us.add_argument("--limit", type=_recent, default=0, help="with --json: the most recent this many calls too (0 to 500)")
    us.set_defaults(fn=cmd_usage)

    cp = sub.add_parser("copy", help="copy every trace and stored response into the store another config names "
                                     "(e.g. from the SQLite file to PostgreSQL)")
    store_args(cp)
    cp.add_argument("--to", required=True, metavar="CONFIG", help="the config file whose [traces] names the target")
    cp.set_defaults(fn=cmd_copy)

    conf = sub.add_parser("conformance", help="conformance vectors")
    csub = conf.add_subparsers(dest="action", required=True)
    rep = csub.add_parser("replay", help="replay vector files; exit 1 if any differs")
    rep.add_argument("files", nargs="+")
    rep.add_argument("-v", "--verbose", action="store_true")
    rep.set_defaults(fn=cmd_conformance)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LangError as exc:
        print(f"error: {exc.path}: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    except (OSError, CommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
