"""The per-session running totals behind x_router.session_acc (runtime/sessions.py)."""

from __future__ import annotations

from decimal import Decimal

from unhardcoded.runtime.sessions import SessionMeter


def _call(m: SessionMeter, caller, session, cost=None, tokens_in=10):
    return m.add(caller, session, tokens_in=tokens_in, tokens_out=2, tokens_cached=1, cost_usd=cost)


def test_totals_add_up_per_caller_and_session() -> None:
    m = SessionMeter()
    assert _call(m, None, "s") == {"calls": 1, "tokens_in": 10, "tokens_out": 2, "tokens_cached": 1, "cost_usd": None}
    assert _call(m, None, "s", Decimal("0.25"))["cost_usd"] == 0.25
    assert _call(m, None, "s", None)["cost_usd"] == 0.25  # an unpriced call adds no cost
    assert _call(m, "a", "s")["calls"] == 1  # a named caller's session is its own
    assert _call(m, None, "s")["calls"] == 4


def test_a_preview_counts_nothing_and_a_seed_never_undoes_a_count() -> None:
    m = SessionMeter()
    stored = {"calls": 5, "tokens_in": 100, "tokens_out": 50, "tokens_cached": 0, "cost_usd": "0.010000"}
    m.seed(None, "s", stored)
    assert m.preview(None, "s", tokens_in=1, tokens_out=1, tokens_cached=0, cost_usd=Decimal("0.5"))["calls"] == 6
    assert _call(m, None, "s", Decimal("0.001")) == {"calls": 6, "tokens_in": 110, "tokens_out": 52,
                                                     "tokens_cached": 1, "cost_usd": 0.011}
    m.seed(None, "s", {"calls": 1})  # a second first call's late reading of the store
    assert _call(m, None, "s")["calls"] == 7
    m.seed(None, "new", None)
    assert m.known(None, "new") and _call(m, None, "new")["calls"] == 1


def test_the_least_recently_used_sessions_are_forgotten_beyond_keep() -> None:
    m = SessionMeter(keep=2)
    _call(m, None, "a")
    _call(m, None, "b")
    _call(m, None, "a")  # used again: b is now the oldest
    _call(m, None, "c")
    assert len(m) == 2 and m.known(None, "a") and m.known(None, "c") and not m.known(None, "b")
