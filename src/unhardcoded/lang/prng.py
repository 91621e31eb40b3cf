"""The pinned pseudo-random generator (MINSTD) and its salted substreams.

Part of the language: ``sample`` and ``jitter`` draw from it, so two hosts
given the same seed draw the same numbers. Only exact integer steps and one
correctly-rounded division are used.

Integers follow the reference's 64-bit two's-complement arithmetic; a float
seed follows IEEE-754 double arithmetic, as in the reference.
"""

from __future__ import annotations

from typing import Callable

MODULUS = 2147483647
MULTIPLIER = 16807


def _wrap64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= (1 << 63) else v


def lcg(seed: int | float | None) -> Callable[[], float]:
    """A generator of floats in (0, 1), warmed up by four steps."""
    s = (0 if seed is None else seed) % MODULUS
    if s <= 0:
        s = s + 2147483646
    for _ in range(4):
        s = (s * MULTIPLIER) % MODULUS
    state = [s]

    def draw() -> float:
        state[0] = (state[0] * MULTIPLIER) % MODULUS
        return state[0] / MODULUS
    return draw


def salt_hash(salt: str) -> int:
    h = 0
    for b in salt.encode("utf-8"):
        h = (h * 31 + b) % MODULUS
    return h


def substream(seed: int | float | None, salt: str) -> int | float:
    """A seed for a named stage, so independent stages draw independent streams."""
    base = 0 if seed is None else seed
    h = salt_hash(salt)
    total = _wrap64(base + h) if isinstance(base, int) else base + h
    return total % MODULUS
