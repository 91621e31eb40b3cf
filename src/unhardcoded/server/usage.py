"""``GET /v1/usage`` (also ``/x/usage`` and the reference host's ``/api/usage``): what the stored
calls of a window add up to: totals, latency, cost, and the same by provider, model, route,
status, policy, kind, caller and day, with a page of the most recent calls.

A named caller (``[callers.NAME]``) gets the report of its own calls only, as the reference host
scopes it to the key; the operator's key gets every call's, with ``by_caller``, and may narrow it
with ``caller``. The figures come from the trace store (``traces/usage.py`` says how each is
counted), read off the event loop.

Query parameters, each checked (an unknown one is refused rather than ignored, since a
misspelt ``windw=24h`` would otherwise answer for all time): ``window`` (``15m``, ``24h``,
``7d``, ``4w``: the window ending now) or ``since``; ``until``; ``limit`` (recent rows, 0 to
500, default 20) and ``offset``; and the filters of ``GET /x/traces``.

``GET /x/sessions`` lists the sessions of the same window and filters, the most recently active
first, each with its calls, errors, tokens and exact cost, ``limit`` (0 to 1,000, default 50) at
a time from ``offset``, and ``total``, scoped to a named caller's own calls as above.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from ..runtime.limits import CURRENT_CALLER
from ..traces.usage import MAX_RECENT, Usage, UsageArgError, instant_ms, window_ms
from .app import App, HTTPError

FILTERS = ("policy", "route", "model", "provider", "status", "session", "caller", "kind")
PARAMS = ("window", "since", "until", "limit", "offset", *FILTERS)
PATHS = ("/v1/usage", "/x/usage", "/api/usage")
MAX_OFFSET = 1_000_000
MAX_SESSIONS = 1000


def read_query(query: bytes | str, *, now_ms: int, limit: tuple[int, int] = (20, MAX_RECENT)) -> dict[str, Any]:
    """The query string checked: ``{"filters", "limit", "offset", "window"}``; a 400 at the
    first fault, with the parameter as its path."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    try:
        q = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except ValueError:
        raise HTTPError(400, "bad_parameter", "too many query parameters", "$") from None
    for name, values in q.items():
        if name not in PARAMS:
            raise HTTPError(400, "unknown_parameter", f"unknown parameter {name[:100]!r} (known: "
                            f"{', '.join(PARAMS)})", f"$.{name[:100]}")
        if len(values) > 1:
            raise HTTPError(400, "bad_parameter", f"{name} is given once", f"$.{name}")
    one = {k: v[0] for k, v in q.items()}
    filters: dict[str, Any] = {}
    for name in FILTERS:
        if name in one:
            if not one[name]:
                raise HTTPError(400, "bad_parameter", f"{name} is a non-empty string", f"$.{name}")
            filters[name] = one[name]
    if "window" in one and "since" in one:
        raise HTTPError(400, "bad_parameter", "window is the span ending now, since its start: send one of them",
                        "$.window")
    span = None
    try:
        if "window" in one:
            span = window_ms(one["window"])
            filters["since_ms"] = now_ms - span
        if "since" in one:
            filters["since_ms"] = instant_ms("since", one["since"])
        if "until" in one:
            filters["until_ms"] = instant_ms("until", one["until"])
    except UsageArgError as exc:
        raise HTTPError(400, "bad_parameter", exc.message, f"$.{exc.param}") from None
    if "since_ms" in filters and "until_ms" in filters and filters["until_ms"] < filters["since_ms"]:
        raise HTTPError(400, "bad_parameter", "until is before since", "$.until")

    def integer(name: str, default: int, hi: int) -> int:
        v = one.get(name)
        if v is None:
            return default
        if not (v.isascii() and v.isdigit()) or int(v) > hi:
            raise HTTPError(400, "bad_parameter", f"{name} is an integer from 0 to {hi}", f"$.{name}")
        return int(v)

    return {"filters": filters, "limit": integer("limit", *limit), "offset": integer("offset", 0, MAX_OFFSET),
            "window": one.get("window")}


def scoped(filters: dict[str, Any], caller: str | None) -> dict[str, Any]:
    """A named caller's filters narrowed to its own calls (asking for another's: 403)."""
    if caller is not None:
        if filters.get("caller", caller) != caller:
            raise HTTPError(403, "caller_scope", "a named caller reads its own usage only", "$.caller",
                            type_="permission_error")
        filters = {**filters, "caller": caller}
    return filters


def build_report(store: Any, args: dict[str, Any], caller: str | None, *, now_ms: int) -> dict[str, Any]:
    """The whole answer (blocking: it reads the store)."""
    filters = args["filters"]
    usage = Usage(by_caller=caller is None, limit=args["limit"], offset=args["offset"])
    store.usage(usage, **filters)
    out = usage.report()
    recent, total = out.pop("recent"), out.pop("recent_total")
    return {
        "object": "usage", "caller": caller, "generated_at_ms": now_ms,
        "window": {"window": args["window"], "since_ms": filters.get("since_ms"), "until_ms": filters.get("until_ms"),
                   "filters": {k: v for k, v in filters.items() if k not in ("since_ms", "until_ms")},
                   "limit": args["limit"], "offset": args["offset"], "recent_total": total,
                   "recent_returned": len(recent)},
        **out, "recent": recent,
    }


def install(app: App) -> None:
    async def usage(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        store = app.router.sink
        if not hasattr(store, "usage"):
            raise HTTPError(501, "no_trace_store", "this router keeps no trace store")
        now = int(app.router.clock())
        args = read_query(scope.get("query_string", b""), now_ms=now)
        caller = CURRENT_CALLER.get()
        args["filters"] = scoped(args["filters"], caller)
        return 200, await asyncio.to_thread(build_report, store, args, caller, now_ms=now)

    async def sessions(scope: dict[str, Any], body: Any) -> tuple[int, Any]:
        """``GET /x/sessions``: the sessions of the window, the most recently active first, each
        with its totals (``/x/sessions/{id}`` adds up one)."""
        store = app.router.sink
        if not hasattr(store, "sessions"):
            raise HTTPError(501, "no_trace_store", "this router keeps no trace store")
        args = read_query(scope.get("query_string", b""), now_ms=int(app.router.clock()), limit=(50, MAX_SESSIONS))
        filters = scoped(args["filters"], CURRENT_CALLER.get())
        rows, total = await asyncio.to_thread(store.sessions, limit=args["limit"], offset=args["offset"], **filters)
        return 200, {"object": "list", "data": rows, "total": total, "limit": args["limit"], "offset": args["offset"]}

    for path in PATHS:
        app.extra_routes[("GET", path)] = usage
    app.extra_routes[("GET", "/x/sessions")] = sessions
