"""A usage report: what the stored calls of a window add up to, in total and grouped.

``Usage.add(row)`` takes one stored call (a summary row of ``record.COLUMNS``, newest first, and
for a flow its ``nodes``) and ``Usage.report()`` gives the figures. Nothing here reads a store
or a clock: the host streams rows in (``SQLiteStore.usage``) and this keeps only sums, one
latency per call, and the page of recent rows asked for, so a window of a million calls costs
memory for its groups, not its rows.

What is counted, and how:

* a **call** is one stored record: a chat call once, a flow once (as ``/x/sessions/{id}`` and
  caller budgets count them); ``errors`` are the calls whose status is not ``ok``;
* **cost** is exact decimal USD, the sum of the costs the records carry (each priced by the
  router when it ran: ``docs/spec/trace.md``); a call without a price is never guessed at: it is
  left out of the sum and counted in ``unpriced`` (an answered call) so a total is never read as
  complete when it is not;
* **by provider, model family and served model**, a flow is split into the nodes that answered
  (each node's provider, model, tokens and cost), since "what did we spend at Anthropic" must
  include the steps of flows (a step answered when a provider did, whatever the flow then made
  of it; a step that called no model is not there); ``-`` is a call no provider answered. By route, status, policy,
  caller, kind and day a flow counts once, under the flow's own identity;
* **latency** (``total_ms``) is of answered calls only: a refused call's few microseconds would
  pull the percentiles down.
"""

from __future__ import annotations

import re
from array import array
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from ..costs import usd_text

NONE_KEY = "-"
MAX_RECENT = 500
_WINDOW = re.compile(r"([1-9][0-9]{0,8})([smhdw])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Integers below this are not milliseconds of any time this store can hold (it is 1973-03-03 in
# ms): they are almost surely seconds, and reading them as ms would silently select everything.
_MIN_MS = 100_000_000_000


class UsageArgError(ValueError):
    """A window argument that cannot be read; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def window_ms(text: str) -> int:
    """``15m``, ``24h``, ``7d``, ``4w``, ``90s`` → milliseconds."""
    m = _WINDOW.fullmatch(text)
    if m is None:
        raise UsageArgError("window", f"window is a count and a unit (s, m, h, d, w), as 15m, 24h, 7d; not {text[:40]!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def instant_ms(param: str, text: str) -> int:
    """``since``/``until``: milliseconds since the epoch, or an ISO-8601 date or time (a time
    without an offset is UTC)."""
    if text.isascii() and text.isdigit():
        v = int(text)
        if v < _MIN_MS:
            raise UsageArgError(param, f"{param} is milliseconds since the epoch; {text} looks like seconds "
                                f"(send {v * 1000}) or an ISO-8601 time")
        if v >= 2 ** 63:
            raise UsageArgError(param, f"{param} is beyond any time a record can hold")
        return v
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageArgError(param, f"{param} is milliseconds since the epoch or an ISO-8601 time "
                            f"(2026-12-01, 2026-12-01T09:30:00Z); not {text[:40]!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


class _Sum:
    __slots__ = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cached", "cost", "priced", "unpriced")

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens_in = self.tokens_out = self.tokens_cached = 0
        self.priced = self.unpriced = 0
        self.cost: Decimal | None = None

    def add(self, ok: bool, t_in: Any, t_out: Any, t_cached: Any, cost: Decimal | None) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.tokens_in += t_in or 0
        self.tokens_out += t_out or 0
        self.tokens_cached += t_cached or 0
        if cost is not None:
            self.priced += 1
            self.cost = cost if self.cost is None else self.cost + cost
        elif ok:
            self.unpriced += 1

    def merge(self, o: "_Sum") -> None:
        self.requests += o.requests
        self.errors += o.errors
        self.tokens_in += o.tokens_in
        self.tokens_out += o.tokens_out
        self.tokens_cached += o.tokens_cached
        self.priced += o.priced
        self.unpriced += o.unpriced
        if o.cost is not None:
            self.cost = o.cost if self.cost is None else self.cost + o.cost

    def view(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "tokens_cached": self.tokens_cached,
                "tokens_total": self.tokens_in + self.tokens_out, "cost_usd": usd_text(self.cost),
                "priced": self.priced, "unpriced": self.unpriced}

    def order(self) -> tuple[Decimal, int]:
        return (self.cost or Decimal(0), self.requests)


def _into(table: dict[Any, _Sum], key: Any, ok: bool, t_in: Any, t_out: Any, t_cached: Any,
          cost: Decimal | None) -> None:
    k = NONE_KEY if key is None else key if type(key) is str else str(key)
    s = table.get(k)
    if s is None:
        s = table[k] = _Sum()
    s.add(ok, t_in, t_out, t_cached, cost)


def _cost(text: Any) -> Decimal | None:
    if text is None:
        return None
    try:
        d = Decimal(str(text))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _percentile(sorted_ms: Any, q: float) -> float | None:
    """Nearest-rank percentile (the value at rank ceil(q·n)): a latency some call really had."""
    n = len(sorted_ms)
    if not n:
        return None
    rank = max(1, -(-int(q * 1000) * n // 1000))
    return round(sorted_ms[min(n, rank) - 1], 3)


GROUPS = ("by_provider", "by_model_family", "by_served_model", "by_route", "by_status", "by_policy", "by_kind",
          "by_caller")


class Usage:
    """The sums of one report. ``by_caller`` is the operator's view (a named caller's report is
    of its own calls only); ``offset``/``limit`` choose the page of ``recent`` rows kept."""

    def __init__(self, *, by_caller: bool = True, limit: int = 20, offset: int = 0) -> None:
        self.total = _Sum()
        self.groups: dict[str, dict[str, _Sum]] = {g: {} for g in GROUPS if by_caller or g != "by_caller"}
        g = self.groups
        # (table, column) of the groups a call counts in once; None: not kept in this view
        self._once = [(g[name], column) for name, column in (
            ("by_route", "route"), ("by_status", "status"), ("by_policy", "policy_identity"), ("by_kind", "kind"),
            ("by_caller", "caller")) if name in g]
        self._answer = (g["by_provider"], g["by_model_family"], g["by_served_model"])
        self.days: dict[int, _Sum] = {}  # by UTC day number: named (and rolled up into months) at the end
        self.latency = array("d")
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.limit, self.offset = limit, offset
        self.recent: list[dict[str, Any]] = []
        self.seen = 0

    def add(self, row: Mapping[str, Any]) -> None:
        get = row.get
        ok = get("status") == "ok"
        t_in, t_out, t_cached = get("tokens_in"), get("tokens_out"), get("tokens_cached")
        cost = _cost(get("cost_usd"))
        self.total.add(ok, t_in, t_out, t_cached, cost)
        for table, column in self._once:
            _into(table, get(column), ok, t_in, t_out, t_cached, cost)
        nodes = get("nodes")
        providers, families, served = self._answer
        if get("kind") == "flow" and isinstance(nodes, list):
            for n in nodes:  # the steps that called a model
                if isinstance(n, Mapping) and n.get("trace_id") is not None:
                    p = n.get("provider")
                    args = (p is not None, n.get("tokens_in"), n.get("tokens_out"), n.get("tokens_cached"),
                            _node_cost(n))
                    _into(providers, p, *args)
                    _into(families, n.get("model_family"), *args)
                    _into(served, n.get("served_model_id"), *args)
        else:
            _into(providers, get("provider"), ok, t_in, t_out, t_cached, cost)
            _into(families, get("model_family"), ok, t_in, t_out, t_cached, cost)
            _into(served, get("served_model_id"), ok, t_in, t_out, t_cached, cost)
        started = get("started_at_ms") or 0
        day = self.days.get(started // 86_400_000)
        if day is None:
            day = self.days[started // 86_400_000] = _Sum()
        day.add(ok, t_in, t_out, t_cached, cost)
        total_ms = get("total_ms")
        if ok and isinstance(total_ms, (int, float)):
            self.latency.append(float(total_ms))
        if self.first_ms is None or started < self.first_ms:
            self.first_ms = started
        finished = get("finished_at_ms")
        if finished is not None and (self.last_ms is None or finished > self.last_ms):
            self.last_ms = finished
        if self.offset <= self.seen < self.offset + self.limit:
            self.recent.append({k: v for k, v in row.items() if k != "nodes"})
        self.seen += 1

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latency)
        totals = self.total.view()
        totals.update({
            "error_rate": round(self.total.errors / self.total.requests, 6) if self.total.requests else None,
            "latency_ms": {"answered": len(lat), "avg": round(sum(lat) / len(lat), 3) if lat else None,
                           "p50": _percentile(lat, 0.5), "p95": _percentile(lat, 0.95),
                           "p99": _percentile(lat, 0.99), "max": round(lat[-1], 3) if lat else None},
            "first_started_at_ms": self.first_ms, "last_finished_at_ms": self.last_ms,
        })
        out: dict[str, Any] = {"totals": totals}
        for group, table in self.groups.items():
            out[group] = {k: s.view() for k, s in sorted(table.items(), key=lambda kv: (tuple(-x for x in kv[1].order()), kv[0]))}
        daily, months = [], {}
        for n, s in sorted(self.days.items()):
            date = datetime.fromtimestamp(n * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")
            daily.append({"date": date, **s.view()})
            m = months.setdefault(date[:7], _Sum())
            m.merge(s)
        out["daily"] = daily
        out["monthly"] = [{"month": k, **s.view()} for k, s in months.items()]
        out["recent"] = self.recent
        out["recent_total"] = self.seen
        return out


def _node_cost(node: Mapping[str, Any]) -> Decimal | None:
    """A flow node's exact cost: its own record's decimal text where the record is kept, else
    the float the node's view carries."""
    rec = node.get("record")
    if isinstance(rec, Mapping):
        cost = rec.get("cost")
        if isinstance(cost, Mapping) and "cost_usd" in cost:
            return _cost(cost.get("cost_usd"))
    return _cost(node.get("cost_usd"))
