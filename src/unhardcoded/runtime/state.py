"""Runtime state the language observes: breakers, disabled providers, and what
real attempts measured per route.

* A provider's **breaker** opens after ``breaker_threshold`` consecutive
  provider-fault failures, or at once when a FailPlan action carries
  ``open_breaker_ms``; it stays open for that long (default
  ``breaker_open_ms``) and then closes by itself. A success closes it.
* ``disable_provider`` takes a provider out for ``disable_ms`` (the action's
  ``disable_ms`` knob, else the host default).
* Every attempt is an **observation** of its route (provider, family) in a
  rolling window (15 minutes, kept as one-minute slices, so memory does not grow
  with traffic): ``success_rate`` (share of attempts that did not fail by
  the provider's fault), ``latency_ms`` (mean over successful attempts) and
  ``tok_s`` (output tokens per second of generation). They are stamped onto
  candidates, so ``cmp success_rate``, ``field latency_ms`` and
  ``is breaker_open`` mean what they say.

Errors caused by the request itself (``bad_request``, ``content_filter``,
``context_overflow``) say nothing about a provider and count nowhere.

The state is in-process; a snapshot of it goes into every trace so a decision
replays without it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..lang.interpreter import same_value
from ..providers.base import CLIENT_FAULT_KINDS


# the observed fields a stamp writes onto a candidate (what ``observed`` measures, but attempts)
STAMPED = ("success_rate", "latency_ms", "tok_s")


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Breaker:
    consecutive_failures: int = 0
    open_until_ms: int = 0
    opened_at_ms: int | None = None
    last_error: str | None = None


@dataclass(slots=True)
class Disable:
    kind: str
    at_ms: int
    until_ms: int


class Bucket:
    """What the attempts of one route measured in one slice of the window."""

    __slots__ = ("start_ms", "n", "ok", "latency_sum", "tok_s_sum", "tok_s_n")

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self.n = self.ok = self.tok_s_n = 0
        self.latency_sum = self.tok_s_sum = 0.0


@dataclass
class RuntimeConfig:
    breaker_threshold: int = 3
    breaker_open_ms: int = 30_000
    disable_ms: int = 300_000
    window_ms: int = 15 * 60_000
    buckets: int = 15            # the window is kept as this many slices (one minute each by default)
    stamp_refresh_ms: int = 100  # observed fields stamped onto candidates are at most this old


class RuntimeState:
    def __init__(self, config: RuntimeConfig | None = None, clock: Callable[[], int] = wall_ms) -> None:
        self.config = config or RuntimeConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self.breakers: dict[str, Breaker] = {}
        self.disabled: dict[str, Disable] = {}
        self.routes: dict[str, deque[Bucket]] = {}
        self.credits: dict[str, float] = {}
        self.version = 0  # bumps on every change
        self._stamped: tuple[Any, int, list[Mapping[str, Any]]] | None = None
        self._stamped_stats: dict[str, dict[str, float]] = {}  # the routes the last stamp stamped, their figures
        # per route: observations recorded (a version), and (version, computed at, valid through, figures)
        self._versions: dict[str, int] = {}
        self._stats: dict[str, tuple[int, int, int, dict[str, float] | None]] = {}
        self._at: tuple[Any, dict[str, list[int]]] | None = None  # (candidates, route -> positions)
        # the snapshot changes only when a breaker or a disable does, or one of them expires:
        # (epoch it was taken at, the first expiry after it, snapshot, hashable key)
        self._epoch = 0
        self._snap: tuple[int, int, dict[str, Any], tuple, int] | None = None

    # ---- what the language sees -------------------------------------------
    def is_disabled(self, provider: str, now_ms: int | None = None) -> bool:
        d = self.disabled.get(provider)
        if d is None:
            return False
        now = self.clock() if now_ms is None else now_ms
        if now >= d.until_ms:
            with self._lock:
                if self.disabled.get(provider) is d:
                    del self.disabled[provider]
                    self.version += 1
                    self._epoch += 1
            return False
        return True

    def breaker_is_open(self, provider: str, now_ms: int) -> bool:
        b = self.breakers.get(provider)
        return b is not None and b.open_until_ms > now_ms

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """``ctx.state`` at ``now_ms``: open breakers, live disables, credits. Shared by every
        caller until it changes: treat it as read-only."""
        return self.snapshot_keyed(now_ms)[0]

    def snapshot_keyed(self, now_ms: int) -> tuple[dict[str, Any], tuple]:
        """The snapshot and a hashable key equal for equal snapshots (a decision's cache key).

        Taken again only when a breaker or a disable changed or expired since: between
        those, every request sees the same object."""
        memo = self._snap
        if memo is not None and memo[0] == self._epoch and memo[1] > now_ms >= memo[4]:
            return memo[2], memo[3]
        with self._lock:
            epoch = self._epoch
            breakers = {p: True for p, b in self.breakers.items() if b.open_until_ms > now_ms}
            disabled = {p: {"kind": d.kind, "at_ms": d.at_ms} for p, d in self.disabled.items()
                        if d.until_ms > now_ms}
            credits = dict(self.credits)
            expiries = [b.open_until_ms for b in self.breakers.values() if b.open_until_ms > now_ms]
            expiries += [d.until_ms for d in self.disabled.values() if d.until_ms > now_ms]
        snap = {"breakers": breakers, "disabled": disabled, "credits": credits, "ema": {}}
        key = (tuple(sorted(breakers)), tuple(sorted((p, v["kind"], v["at_ms"]) for p, v in disabled.items())),
               tuple(sorted(credits.items())))
        # valid from now until the first expiry, and never for a clock that went back
        self._snap = (epoch, min(expiries, default=1 << 62), snap, key, now_ms)  # type: ignore[assignment]
        return snap, key

    def observed(self, now_ms: int) -> dict[str, dict[str, float]]:
        """Per route key ``provider|family``: success_rate, latency_ms, tok_s over the window.

        A route's figures are summed again only when it was observed since, or a slice it
        counted has left the window: else they are the same dict as last time (read-only)."""
        out: dict[str, dict[str, float]] = {}
        window = self.config.window_ms
        horizon = now_ms - window
        known, versions = self._stats, self._versions
        for key, buckets in list(self.routes.items()):
            version = versions.get(key, 0)
            hit = known.get(key)
            if hit is not None and hit[0] == version and hit[1] <= now_ms <= hit[2]:
                if hit[3] is not None:
                    out[key] = hit[3]
                continue
            n = ok = tn = 0
            lat = ts = 0.0
            first = None
            for b in list(buckets):
                if b.start_ms < horizon:
                    continue
                if first is None or b.start_ms < first:
                    first = b.start_ms
                n += b.n
                ok += b.ok
                lat += b.latency_sum
                ts += b.tok_s_sum
                tn += b.tok_s_n
            # valid until the oldest slice counted leaves the window (later ones come with a new version)
            through = 1 << 62 if first is None else first + window
            if not n:
                known[key] = (version, now_ms, through, None)
                continue
            stats: dict[str, float] = {"success_rate": ok / n, "attempts": float(n)}
            if ok:
                stats["latency_ms"] = lat / ok
            if tn:
                stats["tok_s"] = ts / tn
            known[key] = (version, now_ms, through, stats)
            out[key] = stats
        return out

    def stamp(self, candidates: Sequence[Mapping[str, Any]], now_ms: int) -> list[Mapping[str, Any]]:
        """Candidates with observed fields stamped; unobserved ones are shared, not copied.

        The stamped pool is rebuilt at most every ``stamp_refresh_ms``: a decision sees
        observations (successes and failures alike) at most that old, and its trace records
        exactly which it saw. What changes a decision discretely, a breaker opening or a
        provider disabled, is not stamped here: it is read from the snapshot at once.

        A rebuild keeps what did not change: a candidate whose observed fields read as they did
        in the last stamp of the same list is that stamp's object, and if none changed the pool
        is the last one itself. So a plan made over the last pool still holds (the router's plan
        memo is by the pool's identity), and one made over a pool that differs in a few places
        needs to look again only there (``Policy.plan``'s ``prior``): under light traffic, when
        every call comes after the last stamp expired, a call re-plans only the routes that
        served since.
        """
        cached = self._stamped
        if cached is not None and cached[0] is candidates and 0 <= now_ms - cached[1] < self.config.stamp_refresh_ms:
            return cached[2]
        out = self._stamp(candidates, now_ms, cached[2] if cached is not None and cached[0] is candidates else None)
        self._stamped = (candidates, now_ms, out)
        return out

    def _stamp(self, candidates: Sequence[Mapping[str, Any]], now_ms: int,
               before: list[Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
        observed = self.observed(now_ms)
        out = list(candidates) if before is None else list(before)
        at = self._positions(candidates)
        changed = False
        if before is not None:  # routes stamped last time and no longer observed: back to the catalog's
            for key in self._stamped_stats.keys() - observed.keys():
                for i in at.get(key, ()):
                    if out[i] is not candidates[i]:
                        out[i] = candidates[i]
                        changed = True
        last = self._stamped_stats if before is not None else {}  # (what the last stamp of this list used)
        for key, stats in observed.items():
            if last.get(key) is stats:  # the same figures as at the last stamp: nothing to do
                continue
            for i in at.get(key, ()):
                c, was = candidates[i], out[i]
                if was is not c and all(same_value(was.get(k), stats[k] if k in stats else c.get(k)) for k in STAMPED):
                    continue  # stamped as it would be now
                stamped = dict(c)
                for k in STAMPED:
                    if k in stats:
                        stamped[k] = stats[k]
                out[i] = stamped
                changed = True
        self._stamped_stats = observed
        return before if before is not None and not changed else out

    def _positions(self, candidates: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
        """Where each route ``provider|family`` stands in ``candidates`` (made once per list)."""
        memo = self._at
        if memo is not None and memo[0] is candidates:
            return memo[1]
        at: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            at.setdefault(f"{c['provider_id']}|{c['model_family']}", []).append(i)
        self._at = (candidates, at)
        return at

    # ---- what attempts report -----------------------------------------------
    def record_success(self, provider: str, family: str, latency_ms: float, tok_s: float | None = None) -> None:
        now = self.clock()
        with self._lock:
            b = self.breakers.get(provider)
            if b is not None:
                b.consecutive_failures = 0
                if b.open_until_ms:
                    b.open_until_ms = 0
                    self._epoch += 1
            self._observe(f"{provider}|{family}", now, True, latency_ms, tok_s)
            self.version += 1

    def record_failure(self, provider: str, family: str, kind: str, latency_ms: float,
                       open_breaker_ms: float | None = None) -> None:
        if kind in CLIENT_FAULT_KINDS:
            return
        now = self.clock()
        with self._lock:
            b = self.breakers.setdefault(provider, Breaker())
            b.consecutive_failures += 1
            b.last_error = kind
            if open_breaker_ms is not None or b.consecutive_failures >= self.config.breaker_threshold:
                span = int(open_breaker_ms) if open_breaker_ms is not None else self.config.breaker_open_ms
                b.opened_at_ms = now
                b.open_until_ms = max(b.open_until_ms, now + span)
                self._epoch += 1
            self._observe(f"{provider}|{family}", now, False, latency_ms, None)
            self.version += 1
            # no restamp here: under a provider that keeps failing (sustained 429s) a restamp per
            # failure made every request re-plan over the whole pool; the breaker, which is what
            # must act at once, is in the snapshot and so in every plan's key

    def disable(self, provider: str, kind: str, ms: float | None = None) -> None:
        now = self.clock()
        with self._lock:
            self.disabled[provider] = Disable(kind, now, now + int(ms if ms is not None else self.config.disable_ms))
            self.version += 1
            self._epoch += 1

    def _observe(self, key: str, now: int, ok: bool, latency_ms: float, tok_s: float | None) -> None:
        width = max(1, self.config.window_ms // self.config.buckets)
        start = now - now % width
        q = self.routes.get(key)
        if q is None:
            q = self.routes[key] = deque(maxlen=self.config.buckets + 1)
        if not q or q[-1].start_ms != start:
            q.append(Bucket(start))
        b = q[-1]
        b.n += 1
        if ok:
            b.ok += 1
            b.latency_sum += latency_ms
            if tok_s is not None:
                b.tok_s_sum += tok_s
                b.tok_s_n += 1
        # after the slice is written: a reading of the figures in between is stale by this version
        self._versions[key] = self._versions.get(key, 0) + 1

    # ---- operator view -----------------------------------------------------
    def describe(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "now_ms": now,
            "breakers": {p: {"open": b.open_until_ms > now, "consecutive_failures": b.consecutive_failures,
                             "opened_at_ms": b.opened_at_ms, "ms_until_close": max(0, b.open_until_ms - now),
                             "last_error": b.last_error}
                         for p, b in sorted(self.breakers.items())},
            "disabled": {p: {"kind": d.kind, "at_ms": d.at_ms, "ms_until_enabled": max(0, d.until_ms - now)}
                         for p, d in sorted(self.disabled.items()) if d.until_ms > now},
            "routes": dict(sorted(self.observed(now).items())),
            "window_ms": self.config.window_ms,
        }

    def reset(self, providers: Iterable[str] | None = None) -> None:
        with self._lock:
            self._stamped = None
            self._epoch += 1
            if providers is None:
                self.breakers.clear()
                self.disabled.clear()
                self.routes.clear()
                self._stats.clear()
                self._stamped_stats = {}
            else:
                for p in providers:
                    self.breakers.pop(p, None)
                    self.disabled.pop(p, None)
            self.version += 1
