"""The bounded memos (src/unhardcoded/memo.py): what they keep, for how long, and that a lookup
never gives a value put under another key."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from unhardcoded.lang.compiler import _LRU
from unhardcoded.memo import Doorkeeper, SecondSight


def test_the_doorkeeper_remembers_between_the_last_n_and_2n_first_sights() -> None:
    door = Doorkeeper(4)
    assert not door.seen("a") and door.seen("a")
    for k in "bcd":          # "a" and these fill the current generation: it becomes the older one
        assert not door.seen(k)
    assert door.seen("a")    # still remembered, in the older generation
    for k in "efgh":         # another full generation: "a" is forgotten
        door.seen(k)
    assert not door.seen("a")


def test_a_first_sight_waits_in_probation_and_a_second_keeps_it() -> None:
    memo = SecondSight(8, probation=2, remember=100)
    memo.put("a", 1)
    assert memo.get("a") is None and memo.find("a") == 1   # probation: find, not get
    assert memo.get("a") == 1                               # found there: kept for long
    memo.put("b", 2)
    memo.put("c", 3)
    memo.put("d", 4)                                        # "b" leaves probation, unkept
    assert memo.find("b") is None and len(memo) == 3
    memo.put("b", 2)                                        # put again while remembered: kept
    assert memo.get("b") == 2
    assert sorted(memo.values()) == [1, 2, 3, 4]
    memo.clear()
    assert len(memo) == 0 and memo.find("a") is None


def test_keys_sent_once_never_push_out_one_that_comes_back() -> None:
    memo = SecondSight(4, probation=8)
    memo.put("hot", "h")
    memo.find("hot")
    for i in range(10_000):
        memo.put(("once", i), i)
        if i % 1000 == 0:
            assert memo.get("hot") == "h"
    assert list(memo.main) == ["hot"] and len(memo.probation) == 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "get", "find"]), st.integers(0, 12)), max_size=200),
       st.integers(1, 4), st.integers(1, 4), st.integers(1, 6))
def test_a_lookup_gives_the_last_value_put_under_its_key_or_nothing(ops, size, probation, remember) -> None:
    memo = SecondSight(size, probation=probation, remember=remember)
    lru = _LRU(size, probation=probation)
    last: dict[int, str] = {}
    for n, (op, key) in enumerate(ops):
        if op == "put":
            value = f"{key}:{n}"
            memo.put(key, value)
            lru.put(key, value)
            last[key] = value
        else:
            for got in (memo.get(key) if op == "get" else memo.find(key), lru.get(key)):
                assert got is None or got == last.get(key)
        assert len(memo.main) <= size and len(memo.probation) <= probation
        assert len(lru.data) <= size and len(lru.probation) <= probation


def test_an_lru_second_sight_lets_the_least_recently_found_go() -> None:
    memo = SecondSight(2, probation=4, lru=True)
    for k in "abc":
        memo.put(k, k)
        memo.find(k)        # found in probation: kept
    assert list(memo.main) == ["b", "c"]          # "a", the oldest, went when "c" came
    memo.find("b")
    memo.put("d", "d")
    memo.find("d")
    assert list(memo.main) == ["b", "d"]          # "c" was the least recently found
