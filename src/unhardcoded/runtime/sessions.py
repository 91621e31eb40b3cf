"""Running totals per session, for ``x_router.session_acc``: what a session's calls have added up
to, this call included, told on every answer without a store read.

The totals count what ``GET /x/sessions/{id}`` counts (a chat call once, a flow once with all its
steps' tokens and cost) and are kept per (caller, session): a named caller's session is its
own. A session this process has not seen starts from what the trace store already holds for it
(``seed``), so the totals carry over a restart; the router reads the store once per session per
process. The least recently used sessions are forgotten beyond ``keep`` (and read again if they
come back).

With a store other routers write to (PostgreSQL), a session's calls may reach any of them: a
router then reads a session it knows again when its last reading is ``every`` seconds old
(``due``), and merges the reading (``merge``): the store's totals, plus what this router counted
since the reading began (its calls then were not committed yet), where that is more than its own
count. What it can miss is its own calls of the last flush interval before a reading.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

Key = tuple["str | None", str]


@dataclass
class SessionTotals:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost_usd: Decimal | None = None  # None while no call of the session had a price
    read_at: float = 0.0             # when the store's totals were last read (monotonic seconds)
    at_read: tuple | None = None     # the totals when that reading began (what it cannot include)

    def view(self) -> dict[str, Any]:
        return {"calls": self.calls, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "tokens_cached": self.tokens_cached,
                "cost_usd": None if self.cost_usd is None else float(self.cost_usd)}


class SessionMeter:
    def __init__(self, keep: int = 50_000) -> None:
        self.keep = keep
        self._totals: "OrderedDict[Key, SessionTotals]" = OrderedDict()

    def known(self, caller: str | None, session: str) -> bool:
        return (caller, session) in self._totals

    def seed(self, caller: str | None, session: str, stored: Mapping[str, Any] | None, now: float = 0.0) -> None:
        """Start a session from the store's totals (``SQLiteStore.session_totals``; None: no stored
        call). A session already counted here is left as it is: two first calls of it at once
        both read the store, and the later reading must not undo the earlier call's count."""
        key = (caller, session)
        if key in self._totals:
            return
        t = SessionTotals(read_at=now)
        if stored:
            t.calls = int(stored.get("calls") or 0)
            t.tokens_in = int(stored.get("tokens_in") or 0)
            t.tokens_out = int(stored.get("tokens_out") or 0)
            t.tokens_cached = int(stored.get("tokens_cached") or 0)
            cost = stored.get("cost_usd")
            t.cost_usd = None if cost is None else Decimal(str(cost))
        self._put(key, t)

    def due(self, caller: str | None, session: str, now: float, every: float) -> bool:
        """Whether a known session's store totals are ``every`` seconds old; if so, they count
        as read from ``now`` (one reading at a time)."""
        t = self._totals.get((caller, session))
        if t is None or now - t.read_at < every:
            return False
        t.read_at = now
        t.at_read = (t.calls, t.tokens_in, t.tokens_out, t.tokens_cached, t.cost_usd)
        return True

    def get(self, caller: str | None, session: str) -> dict[str, Any] | None:
        """A known session's totals (None: not known here)."""
        t = self._totals.get((caller, session))
        return None if t is None else t.view()

    def merge(self, caller: str | None, session: str, stored: Mapping[str, Any] | None) -> None:
        """Merge a reading that ``due`` began: field by field, the store's total plus what was
        counted here since, where that is more than this router's own count (the other routers'
        calls); never less."""
        t = self._totals.get((caller, session))
        if t is None or not stored or t.at_read is None:
            return
        calls0, in0, out0, cached0, cost0 = t.at_read
        t.at_read = None
        t.calls = max(t.calls, int(stored.get("calls") or 0) + t.calls - calls0)
        t.tokens_in = max(t.tokens_in, int(stored.get("tokens_in") or 0) + t.tokens_in - in0)
        t.tokens_out = max(t.tokens_out, int(stored.get("tokens_out") or 0) + t.tokens_out - out0)
        t.tokens_cached = max(t.tokens_cached, int(stored.get("tokens_cached") or 0) + t.tokens_cached - cached0)
        cost = stored.get("cost_usd")
        if cost is not None:
            since = (t.cost_usd or Decimal(0)) - (cost0 or Decimal(0))
            merged = Decimal(str(cost)) + since
            t.cost_usd = merged if t.cost_usd is None else max(t.cost_usd, merged)

    def add(self, caller: str | None, session: str, *, tokens_in: int, tokens_out: int, tokens_cached: int,
            cost_usd: Decimal | None) -> dict[str, Any]:
        """Count one finished call; the session's totals after it."""
        key = (caller, session)
        t = self._totals.get(key)
        if t is None:
            t = SessionTotals()
            self._put(key, t)
        else:
            self._totals.move_to_end(key)
        t.calls += 1
        t.tokens_in += tokens_in
        t.tokens_out += tokens_out
        t.tokens_cached += tokens_cached
        if cost_usd is not None:
            t.cost_usd = cost_usd if t.cost_usd is None else t.cost_usd + cost_usd
        return t.view()

    def preview(self, caller: str | None, session: str, *, tokens_in: int, tokens_out: int, tokens_cached: int,
                cost_usd: Decimal | None) -> dict[str, Any]:
        """The session's totals with one more call, not yet counted (a stream's last chunk is
        sent before its run ends)."""
        now = self._totals.get((caller, session)) or SessionTotals()
        cost = now.cost_usd if cost_usd is None else cost_usd if now.cost_usd is None else now.cost_usd + cost_usd
        return SessionTotals(now.calls + 1, now.tokens_in + tokens_in, now.tokens_out + tokens_out,
                             now.tokens_cached + tokens_cached, cost).view()

    def _put(self, key: Key, t: SessionTotals) -> None:
        self._totals[key] = t
        while len(self._totals) > self.keep:
            self._totals.popitem(last=False)

    def __len__(self) -> int:
        return len(self._totals)
