"""The reference's sort, for the two places where it decides ties.

The reference sorts with Lua 5.4's ``table.sort``: a quicksort that is not
stable. Where the comparator is a total order (every selector, the AC normal
form) any correct sort agrees with it and we use Python's. Two places are not
total, and there the reference's result is whatever its quicksort does:

* the canonical relabelling of a flow, when two nodes are exact duplicates
  read in a different order downstream;
* score comparisons that meet a NaN (an infinite default minus itself).

:func:`reference_sort` reproduces ``table.sort`` step for step (median of
three, partition around ``a[up-1]``, recursion on the shorter side), so those
cases decide as the reference decides. The reference re-randomises its pivot
only after a badly unbalanced partition of more than 128 elements; we never
do, which agrees with it everywhere it is itself deterministic.
"""

from __future__ import annotations

from typing import Callable, List, TypeVar

T = TypeVar("T")


class InvalidOrder(ValueError):
    """The comparator is inconsistent where the reference would raise too."""


def reference_sort(items: List[T], less: Callable[[T, T], bool]) -> List[T]:
    """A sorted copy of ``items``, exactly as Lua 5.4's ``table.sort(t, less)`` leaves ``t``."""
    a = [None, *items]  # 1-based, like the Lua table
    n = len(items)
    if n > 1:
        _auxsort(a, 1, n, less)
    return a[1:]  # type: ignore[return-value]


def _auxsort(a: list, lo: int, up: int, less: Callable) -> None:
    while lo < up:
        if less(a[up], a[lo]):
            a[lo], a[up] = a[up], a[lo]
        if up - lo == 1:
            break
        p = (lo + up) // 2
        if less(a[p], a[lo]):
            a[p], a[lo] = a[lo], a[p]
        elif less(a[up], a[p]):
            a[p], a[up] = a[up], a[p]
        if up - lo == 2:
            break
        pivot = a[p]
        a[p], a[up - 1] = a[up - 1], pivot
        p = _partition(a, lo, up, pivot, less)
        if p - lo < up - p:
            _auxsort(a, lo, p - 1, less)
            lo = p + 1
        else:
            _auxsort(a, p + 1, up, less)
            up = p - 1


def _partition(a: list, lo: int, up: int, pivot: object, less: Callable) -> int:
    i, j = lo, up - 1
    while True:
        i += 1
        while less(a[i], pivot):
            if i == up - 1:
                raise InvalidOrder("invalid order function for sorting")
            i += 1
        j -= 1
        while less(pivot, a[j]):
            if j < i:
                raise InvalidOrder("invalid order function for sorting")
            j -= 1
        if j < i:
            a[up - 1], a[i] = a[i], pivot
            return i
        a[i], a[j] = a[j], a[i]
