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


def test_a_known_session_is_read_again_when_due_and_merged_with_what_came_since() -> None:
    m = SessionMeter()
    m.seed(None, "s", {"calls": 2, "tokens_in": 20, "tokens_out": 4, "tokens_cached": 0, "cost_usd": "0.5"}, now=100.0)
    assert not m.due(None, "s", 104.0, 5.0) and m.due(None, "s", 105.0, 5.0)
    assert not m.due(None, "s", 106.0, 5.0)  # counted as read at 105: one reading at a time
    assert not m.due(None, "other", 500.0, 5.0)  # not known: the first call seeds it instead
    _call(m, None, "s", cost=Decimal("0.25"))   # this router's call while the store is read: 3 calls, 0.75
    # the store had this router's 2 and another router's 3 when the reading began
    m.merge(None, "s", {"calls": 5, "tokens_in": 50, "tokens_out": 10, "tokens_cached": 3, "cost_usd": "1.5"})
    got = m.get(None, "s")
    assert (got["calls"], got["tokens_in"], got["tokens_cached"], got["cost_usd"]) == (6, 60, 4, 1.75)
    m.merge(None, "s", {"calls": 1, "tokens_in": 1, "tokens_out": 1, "tokens_cached": 0, "cost_usd": "0"})
    assert m.get(None, "s")["calls"] == 6  # a merge with no reading begun does nothing
    assert m.due(None, "s", 200.0, 5.0)
    m.merge(None, "s", {"calls": 1, "tokens_in": 1, "tokens_out": 1, "tokens_cached": 0, "cost_usd": "0"})
    assert m.get(None, "s") == got  # an older reading lowers nothing
    assert m.get(None, "nope") is None
