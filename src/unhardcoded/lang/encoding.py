"""The canonical encoding of a term, its fingerprint and its identity.

``encode(t)`` renders a (normalised) term as a version-prefixed S-expression::

    sigma-pol/v2:(and (cmp "price_in" "le" 5) (is "has_tee") (meets_req))

Numbers follow the grammar of docs/spec/sigma-pol.md §5: ``-0`` is ``0``; an
integral value with ``|v| <= 2**53`` is written in fixed notation; any other
value is C99 ``%.17g`` with a signed exponent of at least two digits. Strings
are double-quoted with ``\\``, ``"``, newline, carriage return and tab escaped
and every other character written as its UTF-8 bytes. Records are written with
keys in byte order; an empty record is written ``[]``, like an empty list.

* identity: SHA-256 of the encoding's UTF-8 bytes, in hex; ``pol_`` plus its
  first six hex digits is the short form people read.
* fingerprint: the reference's cheap two-lane cache key ``h1-h2``; never an
  identity.
"""

from __future__ import annotations

import hashlib
from operator import mul
from typing import Any

from .signature import OPERATIONAL_SORTS, OPS, VERSION

_TWO53 = 2 ** 53


def encode_number(v: int | float) -> str:
    if v == 0:
        return "0"
    if isinstance(v, int):
        if -_TWO53 <= v <= _TWO53:
            return str(v)
        return "%.17g" % float(v)
    if v.is_integer() and -_TWO53 <= v <= _TWO53:
        return "%.0f" % v
    return "%.17g" % v


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def encode_string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def encode_param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return encode_number(v)
    if isinstance(v, str):
        return encode_string(v)
    if isinstance(v, list):
        return "[" + ",".join(encode_param(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "[]"
        return "{" + ",".join(encode_string(k) + ":" + encode_param(v[k]) for k in sorted(v)) + "}"
    raise TypeError(f"cannot encode a parameter of type {type(v).__name__}")


def encode_body(t: list) -> str:
    """The S-expression of a term, without the version prefix."""
    op = OPS[t[0]]
    if op.variadic is not None:
        parts = [encode_body(k) for k in t[1:]]
    else:
        parts = [encode_body(t[i]) if s in OPERATIONAL_SORTS else encode_param(t[i])
                 for i, s in enumerate(op.ins, start=1)]
    if not parts:
        return "(" + op.name + ")"
    return "(" + op.name + " " + " ".join(parts) + ")"


def encode(t: list) -> str:
    """Version-prefixed canonical string of a term (normalise first for identity)."""
    return VERSION + ":" + encode_body(t)


def lane_fingerprint(s: str) -> str:
    """Two independent 31-bit polynomial lanes over the UTF-8 bytes: ``"h1-h2"``.

    Each lane is ``h = (h * base + byte) mod p`` from its seed, byte by byte (the reference's
    definition). A stretch of ``k`` bytes takes ``h`` to ``h * base**k + poly(stretch)`` mod p, so
    the lanes can run over the encoding one stretch at a time: it is cut before every ``(`` (a
    stretch is one operation's head and parameters), and each stretch's ``(poly, base**k)`` pair
    is remembered. Policies built per request repeat most of their stretches (only a threshold
    or two differs), so most stretches cost a dict lookup and two multiplications."""
    data = s.encode("utf-8")
    pieces = data.split(b"(")
    head = _HEADS.get(pieces[0])  # what precedes the first "(": the version prefix, for an encoding
    if head is None:
        head = _step(5381, 52711, _stretch(pieces[0], b""))
        if len(pieces[0]) <= 64 and len(_HEADS) < 64:
            _HEADS[pieces[0]] = head
    h1, h2 = head
    memo = _STRETCHES
    for piece in pieces[1:]:
        hit = memo.get(piece)
        if hit is None:
            hit = _stretch(piece, b"(")
            if len(piece) <= _STRETCH_MAX:
                if len(memo) >= _STRETCH_COUNT:
                    memo.clear()  # a flood of new stretches: start again rather than grow
                memo[piece] = hit
        a1, a2, s1, s2 = hit
        h1 = (h1 * s1 + a1) % _P1
        h2 = (h2 * s2 + a2) % _P2
    return f"{h1}-{h2}"


_P1, _P2 = 2147483647, 2147483629
_BLOCK = 2048
_POWERS: dict[tuple[int, int], tuple[list[int], int]] = {}  # (base, p) -> (base**i mod p for i < _BLOCK, base**_BLOCK mod p)
# stretch (the bytes after a "(" up to the next) -> (lane-1 poly, lane-2 poly, 31**k mod p1, 37**k mod p2)
# of "(" + stretch; bounded (the process's policies repeat their stretches; a flood of new ones is dropped)
_STRETCHES: dict[bytes, tuple[int, int, int, int]] = {}
_HEADS: dict[bytes, tuple[int, int]] = {}  # a few short heads -> the lanes after them, from the seeds
_STRETCH_MAX = 512
_STRETCH_COUNT = 4096


def _step(h1: int, h2: int, stretch: tuple[int, int, int, int]) -> tuple[int, int]:
    a1, a2, s1, s2 = stretch
    return (h1 * s1 + a1) % _P1, (h2 * s2 + a2) % _P2


def _stretch(piece: bytes, lead: bytes) -> tuple[int, int, int, int]:
    """The lanes' polynomials of ``lead + piece`` from 0, and each lane's base to its length."""
    data = lead + piece
    k = len(data)
    if k < _BLOCK:  # one block: the reversed stretch times each lane's table of powers
        t1, t2 = _powers(31, _P1)[0], _powers(37, _P2)[0]
        back = data[::-1]
        return sum(map(mul, back, t1)) % _P1, sum(map(mul, back, t2)) % _P2, t1[k], t2[k]
    return (_lane(data, 0, 31, _P1), _lane(data, 0, 37, _P2), pow(31, k, _P1), pow(37, k, _P2))


def _powers(base: int, mod: int) -> tuple[list[int], int]:
    hit = _POWERS.get((base, mod))
    if hit is None:
        table, x = [], 1
        for _ in range(_BLOCK):
            table.append(x)
            x = x * base % mod
        hit = _POWERS[(base, mod)] = (table, x)  # built whole before it is shared
    return hit


def _lane(data: bytes, h: int, base: int, mod: int) -> int:
    """One lane over ``data`` from ``h``: a block of bytes at a time, the reversed block times a
    table of powers (``map`` and ``sum`` in C rather than a Python step per byte)."""
    table, full = _powers(base, mod)
    for start in range(0, len(data), _BLOCK):
        block = data[start:start + _BLOCK]
        step = full if len(block) == _BLOCK else table[len(block)]  # base ** len(block) mod p
        h = (h * step + sum(map(mul, block[::-1], table))) % mod
    return h


def digest(s: str) -> str:
    """SHA-256 of the encoding, hex."""
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def short_id(hex_digest: str, prefix: str = "pol_") -> str:
    return prefix + hex_digest[:6]
