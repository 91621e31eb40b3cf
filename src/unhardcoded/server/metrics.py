"""``GET /metrics``: the router's counts in Prometheus' text format.

Everything is read when scraped, from what the router keeps anyway (its :class:`Meter`, the
runtime state, the trace store), and formatted by ``prometheus_client``: the request path pays
for none of it. Names follow the reference host's (``llm_router_*``) where it has the metric;
the labels are bounded by the catalog (a provider id), by the code (a status, an error code) or
by the config (a named caller), never by a policy or a request.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..runtime.meter import DURATION_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        app = self.app
        router = app.router
        m = router.meter
        runs = CounterMetricFamily("llm_router_requests", "Routed calls finished (each node of a flow is one), by "
                                   "outcome, the provider that answered (empty when none did) and whether streamed",
                                   labels=["status", "provider", "stream"])
        for (status, provider, stream), n in sorted(m.by_outcome.items()):
            runs.add_metric([status, provider, stream], n)
        yield runs
        flows = CounterMetricFamily("llm_router_flows", "Flows finished, by the whole flow's status (ok, failed, "
                                    "aborted); their nodes are counted in llm_router_requests", labels=["status"])
        for status, n in sorted(m.flows.items()):
            flows.add_metric([status], n)
        yield flows
        refused = CounterMetricFamily("llm_router_rejections", "Requests refused before any routing, by HTTP "
                                      "status and error code", labels=["http_status", "code"])
        for (status, code), n in sorted(m.refused.items()):
            refused.add_metric([str(status), code], n)
        yield refused
        cumulative, buckets = 0, []
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), m.buckets):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hist = HistogramMetricFamily("llm_router_request_duration_seconds",
                                     "Whole routed calls, from the request read to the last byte of the answer "
                                     "(every attempt and wait included)")
        hist.add_metric([], buckets, m.duration_sum)
        yield hist
        yield GaugeMetricFamily("llm_router_inflight_requests", "Routed calls started and not finished",
                                value=m.inflight)
        tokens = CounterMetricFamily("llm_router_tokens", "Tokens of the answered calls, as the providers "
                                     "reported them", labels=["kind"])
        tokens.add_metric(["input"], m.tokens_in)
        tokens.add_metric(["output"], m.tokens_out)
        tokens.add_metric(["cached_input"], m.tokens_cached)
        yield tokens
        yield CounterMetricFamily("llm_router_cost_usd", "Cost of the answered calls in USD, where it is known "
                                  "(the receipt says how each was priced)", value=m.cost_usd)
        now = router.runtime.clock()
        breakers = GaugeMetricFamily("llm_router_breaker_open", "1 while a provider's circuit breaker is open",
                                     labels=["provider"])
        disabled = GaugeMetricFamily("llm_router_provider_disabled", "1 while the FailPlan has disabled a "
                                     "provider", labels=["provider"])
        for provider in sorted(router.catalog.providers):
            b = router.runtime.breakers.get(provider)
            breakers.add_metric([provider], 1 if b is not None and b.open_until_ms > now else 0)
            d = router.runtime.disabled.get(provider)
            disabled.add_metric([provider], 1 if d is not None and d.until_ms > now else 0)
        yield breakers
        yield disabled
        sink = router.sink
        if hasattr(sink, "pending"):
            yield GaugeMetricFamily("llm_router_traces_pending", "Receipts handed to the store and not yet "
                                    "committed (what a crash now would lose)", value=sink.pending)
            yield CounterMetricFamily("llm_router_traces_written", "Receipts committed", value=sink.written)
            yield CounterMetricFamily("llm_router_traces_dropped", "Receipts given up on, never stored",
                                      value=getattr(sink, "dropped", 0))
            yield CounterMetricFamily("llm_router_store_errors", "Trace store commits that failed (each retry "
                                      "counts)", value=getattr(sink, "errors", 0))
            yield GaugeMetricFamily("llm_router_traces_failing", "1 while the trace store cannot commit",
                                    value=0 if getattr(sink, "failing_since_ms", None) is None else 1)
        limits = router.limits
        if limits.callers:
            refusals = CounterMetricFamily("llm_router_caller_refusals", "Calls of a named caller refused by "
                                           "one of its limits", labels=["caller", "limit"])
            for (caller, limit), n in sorted(limits.refused.items()):
                refusals.add_metric([caller, limit], n)
            yield refusals
            spent = GaugeMetricFamily("llm_router_caller_budget_spent_usd", "A named caller's spending in its "
                                      "current budget window (calls with a known price)", labels=["caller"])
            minute = GaugeMetricFamily("llm_router_caller_tokens_last_minute", "Tokens of a named caller's calls "
                                       "that finished in the last 60 s", labels=["caller"])
            for caller in sorted(limits.callers):
                use = limits.usage(caller) or {}
                spent.add_metric([caller], float(use["budget"]["spent_usd"]))
                minute.add_metric([caller], use["tokens_per_minute"]["used"])
            yield spent
            yield minute
        yield GaugeMetricFamily("llm_router_catalog_routes", "Routes in the catalog", value=len(router.catalog))
        yield GaugeMetricFamily("llm_router_process_uptime_seconds", "Seconds since the server started",
                                value=round(time.time() - app.started, 3))


def render(app: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(app))
    return generate_latest(registry)
