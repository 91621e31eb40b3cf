"""The runtime state's snapshot: shared while nothing the language sees changes, new at once when
a breaker or a disable does, or expires."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.runtime.state import RuntimeConfig, RuntimeState


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_one_snapshot_is_shared_until_something_it_shows_changes() -> None:
    clock = Clock()
    rt = RuntimeState(clock=clock)
    s1, k1 = rt.snapshot_keyed(clock.now)
    rt.record_success("a", "m", 12.0)  # an observation: not part of the snapshot
    s2, k2 = rt.snapshot_keyed(clock.now + 5)
    assert s2 is s1 and k2 == k1
    assert s1 == {"breakers": {}, "disabled": {}, "credits": {}, "ema": {}}


def test_a_breaker_shows_at_once_and_goes_when_it_closes_or_expires() -> None:
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(breaker_threshold=1), clock=clock)
    empty, k0 = rt.snapshot_keyed(clock.now)
    rt.record_failure("a", "m", "server_error", 5.0, open_breaker_ms=1000)
    opened, k1 = rt.snapshot_keyed(clock.now)
    assert opened["breakers"] == {"a": True} and k1 != k0
    assert rt.snapshot_keyed(clock.now + 999)[0] is opened
    after, k2 = rt.snapshot_keyed(clock.now + 1000)  # expired: no event, the clock alone
    assert after["breakers"] == {} and k2 == k0
    rt.record_failure("a", "m", "server_error", 5.0, open_breaker_ms=1000)
    assert rt.snapshot_keyed(clock.now)[0]["breakers"] == {"a": True}
    rt.record_success("a", "m", 5.0)  # a success closes it
    assert rt.snapshot_keyed(clock.now)[0]["breakers"] == {}


def test_a_disable_shows_until_it_ends_and_a_reset_clears_it() -> None:
    clock = Clock()
    rt = RuntimeState(clock=clock)
    rt.disable("b", "auth_error", 500)
    s, _ = rt.snapshot_keyed(clock.now)
    assert s["disabled"] == {"b": {"kind": "auth_error", "at_ms": clock.now}}
    assert rt.snapshot_keyed(clock.now + 500)[0]["disabled"] == {}
    rt.disable("b", "auth_error", 500)
    rt.reset()
    assert rt.snapshot_keyed(clock.now)[0]["disabled"] == {}


def test_a_clock_that_goes_back_takes_a_new_snapshot() -> None:
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(breaker_threshold=1), clock=clock)
    rt.record_failure("a", "m", "server_error", 5.0, open_breaker_ms=1000)
    rt.snapshot_keyed(clock.now + 2000)  # taken after the expiry
    assert rt.snapshot_keyed(clock.now + 10)[0]["breakers"] == {"a": True}


def _cands() -> list[dict]:
    return [{"provider_id": p, "model_family": f, "price_in": 1.0} for p in ("a", "b", "c") for f in ("m", "n")]


def test_a_restamp_keeps_every_candidate_whose_observations_read_the_same() -> None:
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(stamp_refresh_ms=100), clock=clock)
    base = _cands()
    rt.record_success("a", "m", 100.0, 40.0)
    rt.record_success("b", "n", 50.0)
    p1 = rt.stamp(base, clock.now)
    assert p1[0]["latency_ms"] == 100.0 and p1[0]["tok_s"] == 40.0 and p1[3]["latency_ms"] == 50.0
    assert [p1[i] is base[i] for i in range(6)] == [False, True, True, False, True, True]

    clock.now += 150  # expired, nothing new observed: the same pool, the same object
    assert rt.stamp(base, clock.now) is p1

    rt.record_success("b", "n", 70.0)  # one route's mean moves: only its candidate is new
    clock.now += 150
    p2 = rt.stamp(base, clock.now)
    assert p2 is not p1 and p2[3] is not p1[3] and p2[3]["latency_ms"] == 60.0
    assert [p2[i] is p1[i] for i in (0, 1, 2, 4, 5)] == [True] * 5
    assert p2[3] is not base[3] and "latency_ms" not in base[3]  # the catalog's own is never written


def test_a_restamp_returns_a_route_to_the_catalog_once_its_window_has_passed() -> None:
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(stamp_refresh_ms=100, window_ms=60_000, buckets=1), clock=clock)
    base = _cands()
    rt.record_success("c", "m", 10.0)
    assert rt.stamp(base, clock.now)[4]["latency_ms"] == 10.0
    clock.now += 120_001
    later = rt.stamp(base, clock.now)
    assert later[4] is base[4] and later == base


def test_a_catalog_value_of_an_observed_field_is_kept_where_nothing_was_measured() -> None:
    # the catalog states a success_rate; the runtime measured only latency: the stamp keeps the
    # catalog's, and a second stamp finds nothing changed (it compares with what it would write)
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(stamp_refresh_ms=100), clock=clock)
    base = _cands()
    base[0]["tok_s"] = 33
    rt.record_success("a", "m", 80.0)
    p1 = rt.stamp(base, clock.now)
    assert p1[0]["tok_s"] == 33 and p1[0]["latency_ms"] == 80.0 and p1[0]["success_rate"] == 1.0
    clock.now += 150
    assert rt.stamp(base, clock.now) is p1


def test_another_list_of_candidates_is_stamped_afresh() -> None:
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(stamp_refresh_ms=100), clock=clock)
    rt.record_success("a", "m", 80.0)
    one, two = _cands(), _cands()
    p1 = rt.stamp(one, clock.now)
    p2 = rt.stamp(two, clock.now)
    assert p2[1] is two[1] and p2[0] is not p1[0] and p2[0] == p1[0]


def _delta_by_definition(pool: list) -> dict:
    stamps: dict = {}
    for c in pool:
        s = {k: c[k] for k in ("success_rate", "latency_ms", "tok_s") if k in c}
        if s:
            stamps[f"{c['provider_id']}|{c['model_family']}"] = s
    return stamps


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 11), st.booleans(), st.floats(1, 900)), max_size=30),
       st.integers(1, 4))
def test_the_trace_reads_a_restamped_pool_as_it_reads_a_new_one(served, every) -> None:
    # the record's pool delta (traces.record.pool_delta) reads a re-stamped pool only where it
    # changed; it must give what reading every candidate gives, keys in the pool's order too
    from unhardcoded.traces.record import pool_delta
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(stamp_refresh_ms=100, window_ms=60_000, buckets=2), clock=clock)
    base = [{"provider_id": f"p{i % 6}", "model_family": f"m{i // 6}", "tok_s": 5} if i == 3 else
            {"provider_id": f"p{i % 6}", "model_family": f"m{i // 6}"} for i in range(12)]
    for step, (i, ok, ms) in enumerate(served):
        c = base[i]
        if ok:
            rt.record_success(c["provider_id"], c["model_family"], ms)
        else:
            rt.record_failure(c["provider_id"], c["model_family"], "server_error", ms)
        clock.now += 101 if step % every else 40_000  # now and then a window passes
        pool = rt.stamp(base, clock.now)
        got = pool_delta(pool, base, [])["stamps"]
        want = _delta_by_definition(pool)
        assert got == want and list(got) == list(want)


def _observed_by_definition(rt: RuntimeState, now: int) -> dict:
    out = {}
    for key, buckets in rt.routes.items():
        live = [b for b in buckets if b.start_ms >= now - rt.config.window_ms]
        n, ok = sum(b.n for b in live), sum(b.ok for b in live)
        if not n:
            continue
        stats = {"success_rate": ok / n, "attempts": float(n)}
        if ok:
            stats["latency_ms"] = sum(b.latency_sum for b in live) / ok
        tn = sum(b.tok_s_n for b in live)
        if tn:
            stats["tok_s"] = sum(b.tok_s_sum for b in live) / tn
        out[key] = stats
    return out


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["a|m", "b|m", "c|n"]), st.sampled_from(["ok", "fail", "none"]),
                          st.floats(0, 900), st.integers(0, 50_000)), max_size=40))
def test_observed_figures_are_remembered_only_while_they_hold(steps) -> None:
    # observed() sums a route again only when it was observed since or a slice it counted left
    # the window: at every step it must read as summing every route afresh does
    clock = Clock()
    rt = RuntimeState(RuntimeConfig(window_ms=120_000, buckets=4), clock=clock)
    for key, what, ms, later in steps:
        provider, family = key.split("|")
        if what == "ok":
            rt.record_success(provider, family, ms, ms / 10 or None)
        elif what == "fail":
            rt.record_failure(provider, family, "server_error", ms)
        clock.now += later
        assert rt.observed(clock.now) == _observed_by_definition(rt, clock.now)
