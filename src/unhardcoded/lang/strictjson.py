"""Strict JSON decoding in front of admission.

RFC 8259 leaves room that two parsers can read differently; a policy's identity
must not depend on which parser read it. So we refuse, each with its own code
and the JSONPath of the fault:

* ``json_bom``            a byte-order mark before the value;
* ``json_encoding``       bytes that are not UTF-8;
* ``json_syntax``         anything the grammar does not allow;
* ``json_duplicate_key``  an object naming the same key twice;
* ``json_non_finite``     ``NaN``, ``Infinity`` or ``-Infinity``;
* ``json_overflow``       a number whose magnitude does not fit a double;
* ``json_lone_surrogate`` a ``\\uD800``-style escape not part of a pair;
* ``json_too_deep``       nesting deeper than the decoder will follow.

Two readers, one answer. The fast path reads bytes with orjson, which already
refuses every fault above except a duplicate key, and writes the value back;
the value is taken only when (a) both succeed, (b) the text has no ``\\u003?``
escape (so no escaped colon) and as many colons as what orjson wrote, and (c)
no integer passes 53 bits. (b) proves no key was dropped: a colon is never
escaped on output, and no number, whitespace or escape writes one, so each
member of the text gives one colon to both counts unless a duplicate dropped it
(with at least its own colon). (c) keeps the reading of wide integers below.
Anything else, including nesting deeper than orjson writes, goes to the exact
path.

The exact path is the standard library's C scanner with hooks. The hooks never
raise: a fault is replaced by a marker and a second, pure-Python walk finds the
first marker in document order to report its path. A test checks on generated
texts that both paths give the same value or the same error.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import orjson

from .errors import JSONError, PathPart

__all__ = ["loads", "MAX_ABS_FLOAT"]

MAX_ABS_FLOAT = sys.float_info.max
_INT64 = 1 << 63
_local = threading.local()  # one decoder per thread, its fault list cleared per call


class _Fault:
    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


class _DuplicateKeys:
    """Stands in for an object that named a key twice; keeps its pairs in order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def _make_decoder(faults: list[int]) -> json.JSONDecoder:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> Any:
        d = dict(pairs)
        if len(d) != len(pairs):
            faults.append(1)
            return _DuplicateKeys(pairs)
        return d

    def parse_float(text: str) -> Any:
        v = float(text)
        if v in (float("inf"), float("-inf")):
            faults.append(1)
            return _Fault("json_overflow", f"number {text[:40]} overflows a double")
        return v

    def parse_int(text: str) -> Any:
        digits = len(text) - (text[0] == "-")
        if digits > 309:  # >= 1e309: past the largest double (and CPython's int-digits limit)
            faults.append(1)
            return _Fault("json_overflow", f"integer of {digits} digits overflows a double")
        v = int(text)
        if not -_INT64 <= v < _INT64:
            if abs(v) > MAX_ABS_FLOAT:
                faults.append(1)
                return _Fault("json_overflow", f"integer of {digits} digits overflows a double")
            # Wider than 64 bits: a double, as the reference's JSON readers read it.
            return float(v)
        return v

    def parse_constant(text: str) -> Any:
        faults.append(1)
        return _Fault("json_non_finite", f"{text} is not a JSON number")

    return json.JSONDecoder(
        object_pairs_hook=pairs_hook,
        parse_float=parse_float,
        parse_int=parse_int,
        parse_constant=parse_constant,
    )


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_fault(value: Any, path: list[PathPart], check_strings: bool) -> JSONError | None:
    """Walk in document order; return the first fault with its path."""
    if isinstance(value, _Fault):
        return JSONError(value.code, value.message, path)
    if isinstance(value, str):
        if check_strings and _has_lone_surrogate(value):
            return JSONError("json_lone_surrogate", "string holds an unpaired UTF-16 surrogate escape", path)
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            err = _first_fault(item, path + [i], check_strings)
            if err is not None:
                return err
        return None
    if isinstance(value, (dict, _DuplicateKeys)):
        pairs = value.pairs if isinstance(value, _DuplicateKeys) else value.items()
        seen: set[str] = set()
        for key, item in pairs:
            if check_strings and _has_lone_surrogate(key):
                return JSONError("json_lone_surrogate", "object key holds an unpaired UTF-16 surrogate escape", path + [key])
            if key in seen:
                return JSONError("json_duplicate_key", f"key {key!r} appears more than once in this object", path + [key])
            seen.add(key)
            err = _first_fault(item, path + [key], check_strings)
            if err is not None:
                return err
        return None
    return None


_STRICT_INTEGER = orjson.OPT_STRICT_INTEGER
_ORJSON_ERRORS = (orjson.JSONDecodeError, orjson.JSONEncodeError)


def _fast(raw: bytes) -> Any:
    """The value of ``raw`` if orjson's reading is provably the strict one, else ``_SLOW``."""
    try:
        value = orjson.loads(raw)
        written = orjson.dumps(value, option=_STRICT_INTEGER)
    except _ORJSON_ERRORS:
        return _SLOW
    if b"\\u003" in raw or raw.count(b":") != written.count(b":"):  # \u003a, \u003A (and \u0030-\u003f)
        return _SLOW
    return value


_SLOW: Any = object()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one strict JSON value, or raise :class:`JSONError`."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        value = _fast(raw)
        if value is not _SLOW:
            return value
        return _exact(raw)
    return _exact(data)


def _exact(data: bytes | str) -> Any:
    """The standard library's reader with hooks: every fault found, with its path."""
    if isinstance(data, bytes):
        raw = data
        if raw.startswith(b"\xef\xbb\xbf") or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise JSONError("json_bom", "a byte-order mark precedes the JSON value")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONError("json_encoding", f"bytes are not UTF-8 (offset {exc.start})") from None
    elif isinstance(data, str):
        text = data
        if text.startswith("\ufeff"):
            raise JSONError("json_bom", "a byte-order mark precedes the JSON value")
    else:
        raise TypeError(f"strict JSON decodes bytes or str, not {type(data).__name__}")

    state = _local.__dict__.get("state")
    if state is None:
        faults: list[int] = []
        state = _local.state = (faults, _make_decoder(faults))
    faults, decoder = state
    faults.clear()
    try:
        value = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise JSONError("json_syntax", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JSONError("json_too_deep", "the value nests deeper than this decoder follows") from None
    except ValueError as exc:  # e.g. CPython's int-digits limit
        raise JSONError("json_overflow", str(exc)[:120]) from None

    # Lone surrogates come from \u escapes (raw UTF-8 cannot encode them), or
    # from a str the caller decoded leniently.
    check_strings = "\\ud" in text or "\\uD" in text or (isinstance(data, str) and _has_lone_surrogate(text))
    if faults or check_strings:
        try:
            err = _first_fault(value, [], check_strings)
        except RecursionError:
            raise JSONError("json_too_deep", "the value nests deeper than this decoder follows") from None
        if err is not None:
            raise err
    return value
