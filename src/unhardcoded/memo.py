"""Bounded memos: what is remembered is only ever a shortcut, so a full memo starts again.

* :class:`IdentityMemo`: values derived from shared immutable objects (plans, pools), keyed by
  identity. It holds the objects it is keyed on, so an id is never reused under an entry. Not
  thread-safe: give each thread its own.
* :class:`BoundedMemo`: a plain dict bounded by its entries and by the weight of what it holds
  (a reading as long as a candidate list weighs that length); when either bound would be passed
  it starts again. A lookup is the dict's own ``get`` (no lock: an entry lost to a race is
  only a shortcut lost).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable


class IdentityMemo:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.data: "OrderedDict[Any, tuple[Any, Any]]" = OrderedDict()

    def get(self, obj: Any, make: Callable[[Any], Any], key: Any = None) -> Any:
        """``make(obj)``, made once per object (and per ``key``, a hashable refinement)."""
        k = id(obj) if key is None else (id(obj), key)
        hit = self.data.get(k)
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = make(obj)
        self.data[k] = (obj, value)
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


class BoundedMemo:
    __slots__ = ("entries", "budget", "data", "weight", "get")

    def __init__(self, entries: int, budget: int | None = None) -> None:
        self.entries = entries
        self.budget = entries if budget is None else budget
        self.data: dict[Any, Any] = {}
        self.weight = 0
        self.get = self.data.get  # the dict is cleared in place, never replaced: this stays its get

    def put(self, key: Any, value: Any, weight: int = 1) -> Any:
        if self.weight + weight > self.budget or len(self.data) >= self.entries:
            self.clear()
        self.data[key] = value
        self.weight += weight
        return value

    def clear(self) -> None:
        self.data.clear()
        self.weight = 0
