"""What only the cycle collector would free: objects a block left in reference cycles.

Reference counting frees everything else as soon as it is let go; what sits in a cycle waits for
a collection (longer pauses, more memory under load). ``left_in_cycles(kind)`` turns the collector
off for the block, then collects, and yields the objects of ``kind`` it found unreachable.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def left_in_cycles(kind: type = object) -> Iterator[list]:
    found: list = []
    gc.collect()  # what was already garbage is not the block's
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(o for o in gc.garbage if isinstance(o, kind))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
