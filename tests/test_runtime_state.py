"""The runtime state's snapshot: shared while nothing the language sees changes, new at once when
a breaker or a disable does, or expires."""

from __future__ import annotations

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
