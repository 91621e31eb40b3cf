"""An identity-keyed memo for values derived from shared immutable objects (plans, pools).

It holds the objects it is keyed on, so an id is never reused under an entry.
Not thread-safe: give each thread its own.
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
