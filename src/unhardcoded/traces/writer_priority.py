"""The trace writer's share of the core: out of the calls' way, unless it falls behind.

A store's writer thread commits in the background; a call never waits for it. On a core it
shares with the event loop it still can delay calls: the loop and the server's thread run under
SCHED_BATCH by default (``server.cpu_scheduling``), and a SCHED_BATCH thread that wakes up (an
upstream's answer has arrived) does not preempt the thread running, so an answer waited while the
writer finished its slice. Measured on one core at concurrency 1 (``bench/ablation.py --conns 1``):
p99 0.73 ms without the writer's commits, 1.9 ms with them (docs/performance.md).

So the writer runs under Linux's SCHED_IDLE: any other thread of the router that wakes up takes
the core from it at once, and it commits in the time the router leaves. Under load that leaves
too little, so when the writer falls a whole batch behind (``boost``, called where a batch
fills), or other processes on the core have kept a batch from being committed for ten flush
intervals (the store's overdue timer), it runs under the policy the server gave its threads
until it has caught up (``rest``).
Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE of 20: without either, a writer that
could not be raised again would fall behind until ``max_pending`` stopped the calls, so it keeps
the server's policy from the start and reports ``normal (unprivileged)``.

The cost: SCHED_IDLE gives way to every other process on the core too, and an idle writer that
holds the interpreter lock when one takes the core keeps the event loop waiting until it gets
the core back. ``bench/starved_writer.py`` provokes it (the store alone, a loop that mostly
sleeps, two busy processes on the core): the loop woke up to 321 ms late, against 17 ms with the
writer ``normal``. Served, with the same two processes on the router's core, it did not show
(c=1 to c=64: the idle writer's tail as low or lower, docs/performance.md). Where other busy
work shares the router's core, ``normal`` rules it out.
"""

from __future__ import annotations

import logging
import os
import threading

from ..config import WRITER_SCHEDULING as MODES  # one list: what the config accepts is what runs

log = logging.getLogger("unhardcoded.traces")

_IDLE = getattr(os, "SCHED_IDLE", None)
_CAP_SYS_NICE = 23


def can_leave_idle() -> bool:
    """Whether a thread of this process may go back from SCHED_IDLE to a normal policy."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) >> _CAP_SYS_NICE & 1:
                        return True
                    break
    except (OSError, ValueError):
        pass
    try:
        import resource
        soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
        # the kernel allows a nice value n when 20 - n <= RLIMIT_NICE
        return soft == resource.RLIM_INFINITY or 20 - os.getpriority(os.PRIO_PROCESS, 0) <= soft
    except (ImportError, AttributeError, OSError, ValueError):
        return False


class WriterPriority:
    """The scheduling of one writer thread. ``start`` runs in the writer; ``boost`` and ``rest``
    under the store's build lock (so the two never race)."""

    def __init__(self, mode: str = "idle") -> None:
        if mode not in MODES:
            raise ValueError(f"writer scheduling is one of {', '.join(MODES)}")
        self.mode = mode
        self.policy = "not started"  # what the writer runs under: idle, boosted, normal, ...
        self.boosts = 0
        self._tid: int | None = None
        self._home: tuple[int, os.sched_param] | None = None

    def start(self) -> str:
        """In the writer thread, before its first commit."""
        if self.mode != "idle":
            self.policy = "normal"
        elif _IDLE is None or not hasattr(os, "sched_setscheduler"):
            self.policy = "normal (unsupported)"
        elif not can_leave_idle():
            self.policy = "normal (unprivileged)"
        else:
            try:
                self._home = (os.sched_getscheduler(0), os.sched_getparam(0))
                os.sched_setscheduler(0, _IDLE, os.sched_param(0))
            except OSError:
                self._home = None
                self.policy = "normal (unsupported)"
            else:
                self._tid = threading.get_native_id()
                self.policy = "idle"
        if self.mode == "idle" and self.policy != "idle":
            log.info("trace writer: SCHED_IDLE not used, %s", self.policy)
        return self.policy

    @property
    def may_idle(self) -> bool:
        """Whether the writer runs, or is about to run, under SCHED_IDLE (so boosts may matter)."""
        return self.mode == "idle" and not self.policy.startswith("normal")

    def boost(self) -> None:
        """The writer is a batch behind: give it the server's policy until it catches up."""
        if self.policy != "idle" or self._tid is None or self._home is None:
            return
        try:
            os.sched_setscheduler(self._tid, self._home[0], self._home[1])
        except OSError as exc:  # the thread is gone, or the privilege was dropped since start
            self.policy = f"idle (cannot boost: {exc.strerror})"
            return
        self.policy = "boosted"
        self.boosts += 1

    def rest(self) -> None:
        """In the writer thread, once it has caught up: back to SCHED_IDLE."""
        if self.policy != "boosted" or _IDLE is None:
            return
        try:
            os.sched_setscheduler(0, _IDLE, os.sched_param(0))
        except OSError:
            self.policy = "normal (cannot rest)"
            return
        self.policy = "idle"
