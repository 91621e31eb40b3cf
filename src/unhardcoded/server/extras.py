"""Operator endpoints beyond the chat surface: trace history, replay and backtest, sessions, and
a named caller's own limits.

A named caller (``[callers.NAME]``) sees only its own calls here: the list is narrowed to them,
and another caller's trace is "not found". An anonymous caller key (``caller_keys_sha256``) is
the operator's and sees every call."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, unquote

from ..runtime.limits import CURRENT_CALLER
from ..lang.errors import LangError
from ..traces.backtest import MAX_BACKTEST, OVER, Backtest
from ..traces.replay import ReplayError, against_current, replay_record
from ..traces.sqlite import MAX_PAGE
from .app import App, HTTPError, lang_error

_FILTERS = ("policy", "route", "model", "provider", "status", "session", "caller", "kind")
_SESSIONS = "/x/sessions/"


def _store(app: App) -> Any:
    store = app.router.sink
    if not hasattr(store, "list"):
        raise HTTPError(501, "no_trace_store", "this router keeps no trace store")
    return store


def install(app: App) -> None:
    async def list_traces(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        store = _store(app)
        q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        kw: dict[str, Any] = {k: q[k] for k in _FILTERS if k in q}
        caller = CURRENT_CALLER.get()
        if caller is not None:
            if kw.get("caller", caller) != caller:
                raise HTTPError(403, "caller_scope", "a named caller lists its own calls only", "$.caller",
                                type_="permission_error")
            kw["caller"] = caller
        for key, name in (("since_ms", "since"), ("until_ms", "until")):
            if name in q:
                try:
                    kw[key] = int(q[name])
                except ValueError:
                    raise HTTPError(400, "bad_parameter", f"{name} is milliseconds since the epoch", f"$.{name}") from None
        try:
            limit = int(q.get("limit", 50))
        except ValueError:
            raise HTTPError(400, "bad_parameter", "limit is an integer", "$.limit") from None
        if not 1 <= limit <= MAX_PAGE:
            raise HTTPError(400, "bad_parameter", f"limit is between 1 and {MAX_PAGE}", "$.limit")
        try:
            rows, nxt = await asyncio.to_thread(store.list, cursor=q.get("cursor"), limit=limit, **kw)
        except ValueError as exc:
            raise HTTPError(400, "bad_cursor", str(exc), "$.cursor") from None
        return 200, {"object": "list", "data": rows, "next_cursor": nxt}

    async def get_trace(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        store = _store(app)
        trace_id = scope["path"].rsplit("/", 1)[-1]
        rec = _own(await asyncio.to_thread(store.get, trace_id))
        if rec is None:
            raise HTTPError(404, "trace_not_found", f"no trace {trace_id}")
        return 200, rec

    async def replay(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        store = _store(app)
        if not isinstance(body, dict) or not isinstance(body.get("trace_id"), str):
            raise HTTPError(400, "bad_request_body", 'send {"trace_id": "...", "against": "stored"|"current"}', "$")
        against = body.get("against", "stored")
        if against not in ("stored", "current"):
            raise HTTPError(400, "bad_parameter", "against is stored or current", "$.against")
        rec = _own(await asyncio.to_thread(store.get, body["trace_id"]))
        if rec is None:
            raise HTTPError(404, "trace_not_found", f"no trace {body['trace_id']}")
        try:
            if against == "current":
                return 200, against_current(rec, app.router)
            snap = await asyncio.to_thread(store.catalog_snapshot, rec.get("catalog", {}).get("digest", ""))
            if snap is None:
                raise HTTPError(409, "catalog_missing", "the catalog snapshot of this trace is not stored")
            return 200, replay_record(rec, snap)
        except ReplayError as exc:
            raise HTTPError(409, exc.code, exc.message) from None

    async def backtest(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        """``POST /x/backtest``: a policy run over stored calls (``traces/backtest.py``). A named
        caller backtests over its own calls only."""
        store = _store(app)
        args = backtest_args(body)
        caller = CURRENT_CALLER.get()
        filters = args["filters"]
        if caller is not None:
            if filters.get("caller", caller) != caller:
                raise HTTPError(403, "caller_scope", "a named caller backtests over its own calls only", "$.caller",
                                type_="permission_error")
            filters["caller"] = caller
        try:
            bt = Backtest(args["policy_ir"], app.router, over=args["over"], samples=args["samples"],
                          snapshots=store.catalog_snapshot)
        except LangError as exc:
            raise lang_error(exc) from None
        try:
            records, nxt = await asyncio.to_thread(store.records, cursor=args["cursor"], limit=args["limit"],
                                                   kind="chat", **filters)
        except ValueError as exc:
            raise HTTPError(400, "bad_cursor", str(exc), "$.cursor") from None
        if args["over"] == "stored":  # the snapshots the records name, read off the event loop
            digests = {(r.get("catalog") or {}).get("digest", "") for r in records}
            snaps = await asyncio.to_thread(lambda: {d: store.catalog_snapshot(d) for d in digests if d})
            bt.snapshots = snaps.get
        # on the loop (the router's compiler is not shared with a thread), 5 ms at a time, so the
        # calls it serves meanwhile wait at most that long (a call decided uncached over 200
        # candidates takes ~0.4 ms: bench/backtest.py)
        i = 0
        while i < len(records):
            until = time.perf_counter() + 0.005
            while i < len(records) and time.perf_counter() < until:
                bt.add(records[i])
                i += 1
            await asyncio.sleep(0)
        out = bt.report()
        out["window"] = {"since_ms": filters.get("since_ms"), "until_ms": filters.get("until_ms"),
                         "limit": args["limit"], "next_cursor": nxt,
                         "filters": {k: v for k, v in filters.items() if k not in ("since_ms", "until_ms")}}
        return 200, out

    async def session(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        store = _store(app)
        name = unquote(scope["path"][len(_SESSIONS):])
        totals = await asyncio.to_thread(store.session_totals, name, CURRENT_CALLER.get())
        if totals is None:
            raise HTTPError(404, "session_not_found", f"no stored call names the session {name!r}")
        return 200, totals

    async def caller_usage(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        caller = CURRENT_CALLER.get()
        usage = app.router.limits.usage(caller) if caller is not None else None
        if usage is None:
            raise HTTPError(404, "no_caller", "this key names no caller; [callers.NAME] in the config names "
                            "callers and their limits")
        return 200, usage

    async def callers_usage(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        if CURRENT_CALLER.get() is not None:
            raise HTTPError(403, "caller_scope", "every caller's use is the operator's to read: a named caller "
                            "reads its own at /x/caller", type_="permission_error")
        limits = app.router.limits
        return 200, {"object": "list", "data": [limits.usage(name) for name in sorted(limits.callers)]}

    from .flows import install as install_flows
    install_flows(app)

    app.extra_routes[("GET", "/x/traces")] = list_traces
    app.extra_routes[("GET", "/x/traces/")] = get_trace
    app.extra_routes[("POST", "/x/replay")] = replay
    app.extra_routes[("POST", "/x/backtest")] = backtest
    app.extra_routes[("GET", _SESSIONS)] = session
    app.extra_routes[("GET", "/x/caller")] = caller_usage
    app.extra_routes[("GET", "/x/callers")] = callers_usage


def _own(rec: Any) -> Any:
    """The record if the request's caller may read it (None: as if it did not exist)."""
    caller = CURRENT_CALLER.get()
    if rec is None or caller is None or rec.get("caller") == caller:
        return rec
    return None



_BACKTEST_KEYS = {"policy_ir", "over", "since", "until", "limit", "cursor", "samples", *_FILTERS}


def backtest_args(body: Any) -> dict[str, Any]:
    """The arguments of ``POST /x/backtest``, each checked at its JSON path."""
    if not isinstance(body, dict):
        raise HTTPError(400, "bad_request_body", 'send {"policy_ir": [...], "over": "stored"|"current", ...}', "$")
    for key in body:
        if key not in _BACKTEST_KEYS:
            raise HTTPError(400, "unknown_parameter", f"unknown parameter {key[:100]!r} (known: "
                            f"{', '.join(sorted(_BACKTEST_KEYS))})", f"$.{key[:100]}")
    if "policy_ir" not in body:
        raise HTTPError(400, "missing_parameter", "policy_ir is the policy to backtest (a Policy or a Pred term)",
                        "$.policy_ir")
    over = body.get("over", "stored")
    if over not in OVER:
        raise HTTPError(400, "bad_parameter", "over is 'stored' (each call's own catalog and state) or "
                        "'current' (today's)", "$.over")

    def integer(name: str, default: Any, lo: int, hi: int) -> Any:
        v = body.get(name, default)
        if v is None and default is None:
            return None
        if type(v) is not int or not lo <= v <= hi:
            raise HTTPError(400, "bad_parameter", f"{name} is an integer from {lo} to {hi}", f"$.{name}")
        return v

    filters: dict[str, Any] = {}
    for name in _FILTERS:
        if name in body:
            if type(body[name]) is not str or not body[name]:
                raise HTTPError(400, "bad_parameter", f"{name} is a non-empty string", f"$.{name}")
            filters[name] = body[name]
    for key, name in (("since_ms", "since"), ("until_ms", "until")):
        v = integer(name, None, 0, 2 ** 63 - 1)
        if v is not None:
            filters[key] = v
    cursor = body.get("cursor")
    if cursor is not None and type(cursor) is not str:
        raise HTTPError(400, "bad_parameter", "cursor is the next_cursor of an earlier backtest", "$.cursor")
    return {"policy_ir": body["policy_ir"], "over": over, "filters": filters, "cursor": cursor,
            "limit": integer("limit", 1000, 1, MAX_BACKTEST), "samples": integer("samples", 20, 0, 100)}
