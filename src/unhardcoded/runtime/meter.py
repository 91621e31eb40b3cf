"""Counts of what the router has done since it started, for ``GET /metrics``.

Counting is a few dictionary and list updates per finished run, in the thread that finishes
it (the event loop); nothing is formatted or locked on the request path. The server turns a
snapshot into Prometheus' text format when it is scraped (``server/metrics.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Latency buckets of a whole call, in seconds (an LLM call spans milliseconds to minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Meter:
    """Runs started and finished, by outcome and by the provider that answered; their
    latency as a histogram; tokens and cost; and requests refused before any routing."""

    __slots__ = ("started", "finished", "by_outcome", "buckets", "duration_sum", "tokens_in", "tokens_out",
                 "tokens_cached", "cost_usd", "refused", "flows")

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.by_outcome: dict[tuple[str, str, str], int] = {}  # (status, provider, stream) -> runs
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)          # the last one is +Inf
        self.duration_sum = 0.0
        self.tokens_in = 0
        self.tokens_out = 0
        self.tokens_cached = 0
        self.cost_usd = 0.0
        self.refused: dict[tuple[int, str], int] = {}           # (HTTP status, error code) -> requests
        self.flows: dict[str, int] = {}                          # a whole flow's status -> flows (its nodes
        #                                                          are runs above, each counted as a call)

    @property
    def inflight(self) -> int:
        return self.started - self.finished

    def finish(self, run: Any) -> None:
        self.finished += 1
        a = run.answered_by
        key = (run.status, (a.get("provider_id") or "") if a else "", "true" if run.stream else "false")
        self.by_outcome[key] = self.by_outcome.get(key, 0) + 1
        seconds = run.total_ms / 1000.0
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        u = run.usage
        self.tokens_in += u.prompt_tokens
        self.tokens_out += u.completion_tokens
        self.tokens_cached += u.cached_tokens
        if run.cost.usd is not None:
            self.cost_usd += float(run.cost.usd)

    def flow(self, status: str) -> None:
        self.flows[status] = self.flows.get(status, 0) + 1

    def refuse(self, status: int, code: str) -> None:
        key = (status, code)
        self.refused[key] = self.refused.get(key, 0) + 1
