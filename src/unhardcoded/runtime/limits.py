"""Named callers and their limits: requests and tokens per minute, and a spending budget.

The operator names callers in the config (``[callers.NAME]``), each with the SHA-256 of its
keys and any of three limits. A request from a caller over one of them is refused before
anything is routed:

* ``requests_per_minute``: calls admitted in the last 60 s (a sliding window, counted by the
  second, not a bucket that refills at the minute's turn);
* ``tokens_per_minute``: tokens (prompt + completion) of the calls that finished in the last
  60 s. A call's tokens are known only when it ends, so calls in flight when the limit is
  reached still finish: the limit is checked against what was used, never estimated;
* ``max_concurrent_requests``: calls of the caller in flight at once (a flow is one);
* ``budget_usd`` per ``budget_window`` (a UTC ``day`` or ``month``): the cost of the calls
  that finished in the window. A call the catalog has no price for costs nothing here and is
  counted apart (``unpriced_calls``), never priced by guess.

The budget survives a restart: :meth:`CallerLimits.load` reads what the trace store holds of
the window (and of the last minute). Everything here runs in the event loop; a check is a few
comparisons and a deque append.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

from ..costs import usd_text

# The caller of the request being served, set by the server once the key is checked, read by
# the router when a run starts (every task of a request sees it, flow nodes included).
CURRENT_CALLER: ContextVar[str | None] = ContextVar("unhardcoded_caller", default=None)
# What the answer tells the caller of its limits (``x-ratelimit-*``), once its call is admitted.
LIMIT_HEADERS: ContextVar[list[tuple[bytes, bytes]] | None] = ContextVar("unhardcoded_limit_headers", default=None)

BUDGET_WINDOWS = ("day", "month")
_MINUTE_MS = 60_000


@dataclass(frozen=True)
class CallerSpec:
    name: str
    keys_sha256: frozenset[str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd: Decimal | None = None
    budget_window: str = "month"
    max_concurrent_requests: int | None = None
    envelope: Any = None               # a Pred term ∧-ed onto every policy this caller's calls run


class LimitExceeded(Exception):
    """A caller over one of its limits: ``code`` is OpenAI's (``rate_limit_exceeded`` or
    ``insufficient_quota``), ``retry_after_s`` when the limit frees again."""

    def __init__(self, code: str, message: str, retry_after_s: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s, self.headers = code, message, retry_after_s, headers


def window_start_ms(now_ms: int, window: str) -> int:
    """The start (UTC) of the budget window ``now_ms`` is in."""
    t = time.gmtime(now_ms // 1000)
    day = 1 if window == "month" else t.tm_mday
    return calendar.timegm((t.tm_year, t.tm_mon, day, 0, 0, 0)) * 1000


def window_end_ms(start_ms: int, window: str) -> int:
    if window == "day":
        return start_ms + 86_400_000
    t = time.gmtime(start_ms // 1000)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def _reset_text(seconds: float) -> str:
    """A reset delay as OpenAI's ``x-ratelimit-reset-*`` headers write it (``1m30s``, ``0.5s``)."""
    minutes, rest = divmod(max(seconds, 0.0), 60.0)
    tail = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{tail}" if minutes else tail


def _add(buckets: deque[list[int]], now_ms: int, n: int) -> None:
    """Count ``n`` in the bucket of ``now_ms``'s second (a new one when it is the first of it)."""
    end = now_ms - now_ms % 1000 + 1000  # a bucket is known by its second's end: it leaves 60 s after that
    if buckets and buckets[-1][0] >= end:
        buckets[-1][1] += n
    else:
        buckets.append([end, n])


class _State:
    # The minute is kept as per-second buckets ([second's end ms, count]): at most 61 of each
    # whatever the traffic, and an entry stays counted 60 to 61 s (never less than a minute).
    __slots__ = ("admitted", "admitted_sum", "tokens", "tokens_sum", "window_start", "spent", "unpriced", "calls",
                 "inflight")

    def __init__(self) -> None:
        self.admitted: deque[list[int]] = deque()         # [second's end ms, calls admitted in it]
        self.admitted_sum = 0
        self.tokens: deque[list[int]] = deque()           # [second's end ms, tokens of calls ended in it]
        self.tokens_sum = 0
        self.window_start = 0
        self.spent = Decimal(0)
        self.unpriced = 0
        self.calls = 0
        self.inflight = 0


class CallerLimits:
    def __init__(self, callers: Mapping[str, CallerSpec] | None = None,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.callers = dict(callers or {})
        self._clock = clock_ms or (lambda: int(time.time() * 1000))
        self._state = {name: _State() for name in self.callers}
        self.refused: dict[tuple[str, str], int] = {}  # (caller, limit) -> calls refused

    def _fresh(self, spec: CallerSpec, now: int) -> _State:
        """The caller's state with what has left the minute and the budget window dropped."""
        st = self._state[spec.name]
        edge = now - _MINUTE_MS
        while st.admitted and st.admitted[0][0] <= edge:
            st.admitted_sum -= st.admitted.popleft()[1]
        while st.tokens and st.tokens[0][0] <= edge:
            st.tokens_sum -= st.tokens.popleft()[1]
        start = window_start_ms(now, spec.budget_window)
        if start != st.window_start:
            st.window_start, st.spent, st.unpriced, st.calls = start, Decimal(0), 0, 0
        return st

    def admit(self, name: str | None) -> None:
        """Count one call of ``name``, or raise :class:`LimitExceeded` (nothing counted)."""
        spec = self.callers.get(name) if name is not None else None
        if spec is None:
            return
        now = self._clock()
        st = self._fresh(spec, now)
        if spec.budget_usd is not None and st.spent >= spec.budget_usd:
            self._count(spec.name, "budget_usd")
            end = window_end_ms(st.window_start, spec.budget_window)
            wait = (end - now) / 1000
            raise LimitExceeded("insufficient_quota", (
                f"caller {name!r} has spent {usd_text(st.spent)} USD of its {usd_text(spec.budget_usd)} USD "
                f"budget this {spec.budget_window} (UTC); it renews in {_reset_text(wait)}"),
                wait, {"x-should-retry": "false"})
        most = spec.max_concurrent_requests
        if most is not None and st.inflight >= most:
            self._count(spec.name, "max_concurrent_requests")
            raise LimitExceeded("rate_limit_exceeded", (
                f"caller {name!r} has {st.inflight} calls in flight, its limit is {most}; "
                "try again when one has finished"), 1.0, {})
        rpm = spec.requests_per_minute
        if rpm is not None and st.admitted_sum >= rpm:
            self._count(spec.name, "requests_per_minute")
            wait = (st.admitted[0][0] + _MINUTE_MS - now) / 1000
            raise LimitExceeded("rate_limit_exceeded", (
                f"caller {name!r} reached its limit of {rpm} requests per minute; "
                f"try again in {_reset_text(wait)}"), wait, {
                "x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": _reset_text(wait)})
        tpm = spec.tokens_per_minute
        if tpm is not None and st.tokens_sum >= tpm:
            self._count(spec.name, "tokens_per_minute")
            # the wait until enough of the minute's tokens have left it to be under the limit
            over, wait_ms = st.tokens_sum - tpm, 0
            for at, n in st.tokens:
                over -= n
                wait_ms = at + _MINUTE_MS - now
                if over < 0:
                    break
            wait = wait_ms / 1000
            raise LimitExceeded("rate_limit_exceeded", (
                f"caller {name!r} used {st.tokens_sum} tokens in the last minute, its limit is {tpm}; "
                f"try again in {_reset_text(wait)}"), wait, {
                "x-ratelimit-limit-tokens": str(tpm), "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": _reset_text(wait)})
        _add(st.admitted, now, 1)
        st.admitted_sum += 1
        st.inflight += 1
        st.calls += 1
        if rpm is not None or tpm is not None:
            LIMIT_HEADERS.set(self._headers(spec, st, now))

    @staticmethod
    def _headers(spec: CallerSpec, st: _State, now: int) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` headers for a call just admitted: what is left of each limit
        and when it is whole again (the oldest entry leaves the minute)."""
        out: list[tuple[bytes, bytes]] = []
        if spec.requests_per_minute is not None:
            reset = (st.admitted[0][0] + _MINUTE_MS - now) / 1000
            out += [(b"x-ratelimit-limit-requests", str(spec.requests_per_minute).encode()),
                    (b"x-ratelimit-remaining-requests", str(spec.requests_per_minute - st.admitted_sum).encode()),
                    (b"x-ratelimit-reset-requests", _reset_text(reset).encode())]
        if spec.tokens_per_minute is not None:
            reset = (st.tokens[-1][0] + _MINUTE_MS - now) / 1000 if st.tokens else 0.0
            out += [(b"x-ratelimit-limit-tokens", str(spec.tokens_per_minute).encode()),
                    (b"x-ratelimit-remaining-tokens", str(max(spec.tokens_per_minute - st.tokens_sum, 0)).encode()),
                    (b"x-ratelimit-reset-tokens", _reset_text(reset).encode())]
        return out

    def release(self, name: str) -> None:
        """A call admitted by :meth:`admit` has ended (answered, failed or cut off)."""
        st = self._state.get(name)
        if st is not None and st.inflight > 0:
            st.inflight -= 1

    def _count(self, name: str, limit: str) -> None:
        self.refused[(name, limit)] = self.refused.get((name, limit), 0) + 1

    def settle(self, name: str, tokens: int, cost_usd: Decimal | None, now_ms: int | None = None,
               answered: bool = True) -> None:
        """What one finished run of ``name`` used (a flow settles each of its steps)."""
        spec = self.callers.get(name)
        if spec is None:
            return
        now = self._clock() if now_ms is None else now_ms
        st = self._fresh(spec, now)
        if tokens:
            _add(st.tokens, now, tokens)
            st.tokens_sum += tokens
        if cost_usd is not None:
            st.spent += cost_usd
        elif answered:
            st.unpriced += 1

    def load(self, usage_since: Callable[[str, int, int], tuple[int, int, Decimal, list[tuple[int, int]]]]) -> None:
        """Start from what the store holds: ``usage_since(name, window_ms, minute_ms)`` gives the
        calls, unpriced calls and USD spent since ``window_ms``, and (finish ms, tokens) of each
        call that finished since ``minute_ms``."""
        now = self._clock()
        for name, spec in self.callers.items():
            st = self._fresh(spec, now)
            calls, unpriced, spent, recent = usage_since(name, st.window_start, now - _MINUTE_MS)
            st.calls, st.unpriced, st.spent = calls, unpriced, spent
            for at, n in sorted(recent):
                _add(st.tokens, at, n)
                st.tokens_sum += n

    def counted(self, name: str) -> tuple[int, int, int, Decimal] | None:
        """The caller's budget window as counted here: (its start, calls, unpriced calls, USD
        spent); None: no such caller. Taken when a reading of a shared store begins (``merge``)."""
        spec = self.callers.get(name)
        if spec is None:
            return None
        st = self._fresh(spec, self._clock())
        return st.window_start, st.calls, st.unpriced, st.spent

    def merge(self, name: str, at_read: tuple[int, int, int, Decimal], calls: int, unpriced: int,
              spent: Decimal) -> None:
        """Merge what a trace store that other routers share holds of the caller's window (read
        since its start): each count becomes the store's plus what was counted here since the
        reading began (``at_read``, from ``counted``: those calls were not committed then), where
        that is more than this router's own; never less. A window that has turned since the
        reading began is left as it is."""
        spec = self.callers.get(name)
        if spec is None:
            return
        st = self._fresh(spec, self._clock())
        start, calls0, unpriced0, spent0 = at_read
        if st.window_start != start:
            return
        st.calls = max(st.calls, calls + st.calls - calls0)
        st.unpriced = max(st.unpriced, unpriced + st.unpriced - unpriced0)
        st.spent = max(st.spent, spent + st.spent - spent0)

    def usage(self, name: str) -> dict[str, Any] | None:
        """The caller's limits and what it has used of them (None: no such caller)."""
        spec = self.callers.get(name)
        if spec is None:
            return None
        now = self._clock()
        st = self._fresh(spec, now)
        out: dict[str, Any] = {
            "caller": name,
            "requests_per_minute": {"limit": spec.requests_per_minute, "used": st.admitted_sum},
            "tokens_per_minute": {"limit": spec.tokens_per_minute, "used": st.tokens_sum},
            "concurrent_requests": {"limit": spec.max_concurrent_requests, "in_flight": st.inflight},
        }
        budget: dict[str, Any] = {
            "window": spec.budget_window, "started_at_ms": st.window_start,
            "renews_at_ms": window_end_ms(st.window_start, spec.budget_window),
            "limit_usd": usd_text(spec.budget_usd), "spent_usd": usd_text(st.spent),
            "remaining_usd": None if spec.budget_usd is None else usd_text(max(spec.budget_usd - st.spent, Decimal(0))),
            "calls": st.calls, "unpriced_calls": st.unpriced,
        }
        out["budget"] = budget
        return out
