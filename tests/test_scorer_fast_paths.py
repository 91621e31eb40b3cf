"""Shortcuts of the scorers, selectors and predicates against their definitions, value for value.

``argmax`` sorts by the score itself (read in C) where no score is NaN, ``field`` returns the
values it read when every one is a number, and ``meets_req`` over a list passes everyone at once
for a request that asks for nothing. Each must give what the definition
(the code before the shortcut, kept here) gives over every odd value: NaN first or elsewhere,
infinities, -0.0, integers past 64 bits, mixes of integers and doubles, empty lists, non-numbers
where a field is read, requests with and without requirements.
"""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from unhardcoded.lang.errors import EvaluationError
from unhardcoded.lang.interpreter import Ranked, _by_score, _number, _order_key, default_algebra
from unhardcoded.lang.ordering import InvalidOrder, reference_sort

from . import strategies as S

ALGEBRA = default_algebra(S.SCHEMA)

numbers = st.one_of(st.floats(), st.floats(allow_nan=False, allow_infinity=False, width=16),
                    st.integers(-3, 3), st.integers(-2 ** 70, 2 ** 70),
                    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e308]))
lists = st.lists(numbers, max_size=12) | st.lists(st.floats(-1e6, 1e6), max_size=40)


def same(a: list, b: list) -> bool:
    """The same values of the same types, NaN equal to NaN, -0.0 told from 0.0."""
    def one(x, y):
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            return (x != x and y != y) or (x == y and math.copysign(1, x) == math.copysign(1, y))
        return x == y
    return len(a) == len(b) and all(one(x, y) for x, y in zip(a, b))


def by_score_defined(scored: list) -> list:
    if [r for r in scored if r.score != r.score]:
        indexed = list(enumerate(scored))

        def less(a, b):
            if a[1].score != b[1].score:
                return a[1].score > b[1].score
            return a[0] < b[0]
        try:
            return [r for _, r in reference_sort(indexed, less)]
        except InvalidOrder:
            pass
    return sorted(scored, key=_order_key, reverse=True)


@settings(max_examples=2000, deadline=None)
@given(lists)
@example([1.0, math.nan, 1.0, 0.0])
@example([0.0, -0.0, 0.0])
@example([3, 3.0, 2 ** 70, math.inf])
def test_argmax_orders_as_its_definition(scores: list) -> None:
    scored = [Ranked({"i": i}, s) for i, s in enumerate(scores)]
    got = [r.candidate["i"] for r in _by_score(list(scored))]
    want = [r.candidate["i"] for r in by_score_defined(list(scored))]
    assert got == want, scores


field_values = st.one_of(numbers, st.none(), st.booleans(), st.just("3"), st.just([]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(field_values, max_size=10), st.sampled_from(["price_in", "context", "latency_ms"]))
def test_field_reads_what_its_observer_reads_and_refuses_what_it_refuses(values: list, name: str) -> None:
    observe = S.SCHEMA.observer(name)
    pop = [{name: v} if v is not None else {} for v in values]
    scorer = ALGEBRA["field"]([name])

    def defined():
        return [_number(observe(c, {}), name) for c in pop]

    try:
        want = ("ok", defined())
    except EvaluationError as exc:
        want = ("raised", exc.code)
    try:
        got = ("ok", scorer(pop, {}))
    except EvaluationError as exc:
        got = ("raised", exc.code)
    assert got[0] == want[0] and (got[0] == "raised" and got[1] == want[1] or same(got[1], want[1])), values



requests = st.one_of(st.just({}), st.just({"messages": [{"role": "user", "content": "hi"}]}),
                     st.fixed_dictionaries({"requirements": st.dictionaries(
                         st.sampled_from(["min_context", "model_family", "tier", "privacy", "min_quality"]),
                         st.one_of(st.integers(0, 10 ** 6), st.sampled_from(["m1", "frontier", "no_log", ""]),
                                   st.none()), max_size=3)}),
                     st.just({"tools": [{"type": "function"}]}))


@settings(max_examples=500, deadline=None)
@given(S.population(max_size=8), requests)
def test_meets_req_over_a_list_is_the_check_of_each(pop: list, request: dict) -> None:
    pred = ALGEBRA["meets_req"]([])
    ctx = {"request": request}
    try:
        want = ("ok", [pred(c, ctx) for c in pop])
    except EvaluationError as exc:
        want = ("raised", exc.code)
    try:
        got = ("ok", pred.many(pop, ctx))
    except Exception as exc:  # noqa: BLE001 - the vector form may raise where the walk does
        got = ("raised", getattr(exc, "code", type(exc).__name__))
    assert got == want or (got[0] == want[0] == "raised"), (pop, request)
    if not request.get("requirements") and "tools" not in request:
        assert got == ("ok", [None] * len(pop))  # nothing asked: everyone passes
