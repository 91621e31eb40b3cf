"""Bounded memos: what is remembered is only ever a shortcut, so a full memo starts again.

* :class:`IdentityMemo`: values derived from shared immutable objects (plans, pools), keyed by
  identity. It holds the objects it is keyed on, so an id is never reused under an entry. Not
  thread-safe: give each thread its own.
* :class:`BoundedMemo`: a plain dict bounded by its entries and by the weight of what it holds
  (a reading as long as a candidate list weighs that length); when either bound would be passed
  it starts again. A lookup is the dict's own ``get`` (no lock: an entry lost to a race is
  only a shortcut lost).
* :class:`SecondSight`: a bounded memo that keeps an entry for long only from its key's second
  sight on (:class:`Doorkeeper` remembers the first sights), for values that are costly to hold
  and often never asked for again: policies built per request.
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


class Doorkeeper:
    """Remembers which keys were seen lately, by their hashes: between the last ``remember`` and
    ``2 * remember`` first sights. A collision only makes a key look seen; it is a hint."""

    __slots__ = ("remember", "_now", "_before")

    def __init__(self, remember: int = 4096) -> None:
        self.remember = remember
        self._now: set[int] = set()
        self._before: set[int] = set()

    def seen(self, key: Any) -> bool:
        """Whether ``key`` was seen lately; remembers it if not."""
        h = hash(key)
        if h in self._now or h in self._before:
            return True
        self._now.add(h)
        if len(self._now) >= self.remember:
            self._before, self._now = self._now, set()
        return False


class SecondSight:
    """A memo that keeps an entry for long only once its key has been seen twice.

    A backend that builds its policy per request sends a policy text the router never sees
    again: a memo that kept every first sight would fill with such policies (their compiled
    terms, closures, choices: ~20 MB of a 1,024-entry memo's worth under that load) and let go of
    the ones that do come back. Here a first sight goes to a small probation area
    (``probation`` entries, the oldest out first) and its key to a :class:`Doorkeeper`; a key
    found in probation, or put again while the doorkeeper remembers it, goes to the main area
    (``size`` entries; when full, it starts again, or with ``lru`` lets the least recently found
    go). ``get`` is the main area's own dict lookup (the hot path: a key that came back, its
    recency not noted); ``find`` looks in probation too. Not thread-safe."""

    __slots__ = ("size", "main", "get", "probation", "probation_size", "door", "lru")

    def __init__(self, size: int, probation: int = 64, remember: int = 4096, *, lru: bool = False) -> None:
        self.size = size
        self.lru = lru
        self.main: dict[Any, Any] = OrderedDict() if lru else {}
        self.get = self.main.get  # the dict is cleared in place, never replaced: this stays its get
        self.probation: dict[Any, Any] = {}
        self.probation_size = probation
        self.door = Doorkeeper(remember)

    def find(self, key: Any) -> Any:
        value = self.main.get(key)
        if value is not None:
            if self.lru:
                self.main.move_to_end(key)  # type: ignore[attr-defined]
            return value
        value = self.probation.pop(key, None)
        if value is not None:
            self._keep(key, value)
        return value

    def put(self, key: Any, value: Any) -> Any:
        if key in self.main or self.probation.pop(key, None) is not None or self.door.seen(key):
            self._keep(key, value)
        else:
            self.probation[key] = value
            if len(self.probation) > self.probation_size:
                del self.probation[next(iter(self.probation))]
        return value

    def _keep(self, key: Any, value: Any) -> None:
        main = self.main
        if self.lru:
            main[key] = value
            main.move_to_end(key)  # type: ignore[attr-defined]
            while len(main) > self.size:
                main.popitem(last=False)  # type: ignore[call-arg]
            return
        if key not in main and len(main) >= self.size:
            main.clear()
        main[key] = value

    def values(self) -> list[Any]:
        return [*self.main.values(), *self.probation.values()]

    def __len__(self) -> int:
        return len(self.main) + len(self.probation)

    def clear(self) -> None:
        """Forget every entry (the doorkeeper's hints stay: they hold no value)."""
        self.main.clear()
        self.probation.clear()
