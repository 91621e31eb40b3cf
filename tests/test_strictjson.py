"""Strict JSON in front of admission: every refusal code, with the JSONPath of the fault.

Expected values come from RFC 8259 and the module's contract (one code per
kind of fault, the path of the first fault in document order).
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import JSONError, LangError
from unhardcoded.lang.strictjson import loads


def refusal(data: bytes | str) -> JSONError:
    with pytest.raises(JSONError) as info:
        loads(data)
    err = info.value
    assert isinstance(err, LangError) and err.kind == "invalid_json"
    return err


def assert_refused(data: bytes | str, code: str, path: str = "$") -> JSONError:
    err = refusal(data)
    assert (err.code, err.path) == (code, path), err
    return err


# --------------------------------------------------------------------------
# accepted values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("null", None), ("true", True), ("false", False), ("0", 0), ("-0", 0), ("5", 5),
    ("-12.5e-1", -1.25), ('"x"', "x"), ("[]", []), ("{}", {}),
    (' \t\r\n[1, {"a": [true, null]}] \n', [1, {"a": [True, None]}]),
    ('"\\u0000\\n\\"\\\\\\/"', '\x00\n"\\/'),
    ('"\\ud83d\\ude00"', "\U0001F600"),          # a surrogate *pair* is one code point
    ('"\\uDBFF\\uDFFF"', "\U0010FFFF"),
    ('"é中"', "é中"),
    ("1.7976931348623157e308", 1.7976931348623157e308),  # the largest double is fine
    ("1e-400", 0.0),                                  # underflow rounds to zero: not an overflow
    ("1" * 308, float(int("1" * 308))),              # wider than 64 bits: read as the nearest double
    ("9223372036854775807", 9223372036854775807),    # int64 stays an integer
])
def test_accepts_strict_json(text: str, value: object) -> None:
    assert loads(text) == value
    assert loads(text.encode("utf-8")) == value
    assert loads(bytearray(text.encode("utf-8"))) == value
    assert loads(memoryview(text.encode("utf-8"))) == value


def test_duplicate_keys_in_different_objects_are_fine() -> None:
    assert loads('[{"a": 1}, {"a": 2}, {"b": {"a": 3}, "a": 4}]') == [{"a": 1}, {"a": 2}, {"b": {"a": 3}, "a": 4}]


def test_rejects_other_python_types() -> None:
    with pytest.raises(TypeError):
        loads(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# json_bom / json_encoding
# --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbf{}",            # UTF-8 BOM
    b"\xff\xfe[\x00]\x00",       # UTF-16 LE BOM
    b"\xfe\xff\x00[\x00]",       # UTF-16 BE BOM
    "\ufeff[]",                  # a BOM already decoded into the text
])
def test_bom(data: bytes | str) -> None:
    assert_refused(data, "json_bom", "$")


def test_bom_inside_the_value_is_only_a_syntax_error() -> None:
    # RFC 8259 whitespace is space, tab, LF, CR; U+FEFF after it is not whitespace.
    assert_refused(" \ufeff[]", "json_syntax")


@pytest.mark.parametrize("data", [
    b'"\xff"',                   # never valid in UTF-8
    b'["ok", "\xc3"]',           # truncated two-byte sequence
    b'"\xc0\xaf"',               # overlong encoding of "/"
    b'"\xed\xa0\x80"',           # a UTF-16 surrogate encoded as UTF-8 (CESU-8)
    b'"\xf4\x90\x80\x80"',       # above U+10FFFF
    b"\x00[\x00]",               # UTF-16 without BOM is not UTF-8 JSON: NULs are syntax,
])
def test_not_utf8(data: bytes) -> None:
    err = refusal(data)
    if data.startswith(b"\x00"):
        assert err.code == "json_syntax"
    else:
        assert (err.code, err.path) == ("json_encoding", "$")


# --------------------------------------------------------------------------
# json_syntax
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "", " ", "[1,]", '{"a":1,}', "[1 2]", "{'a': 1}", '{a: 1}', "01", "-01", ".5", "1.", "1.e3",
    "+1", "0x10", "[1] [2]", '{"a":1}x', "tru", "nul", "[", "]", '"abc', '"\t"', '"a\nb"',
    "// c\n1", "/* c */ 1", "infinity", "+Infinity", "nan", '"\\x41"', '"\\u12"', "[,1]", '{"a"}',
    '{"a" 1}', "\x0c1",  # form feed is not JSON whitespace
])
def test_syntax(text: str) -> None:
    assert_refused(text, "json_syntax", "$")


# --------------------------------------------------------------------------
# json_duplicate_key
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, path", [
    ('{"a": 1, "a": 1}', "$.a"),                                # even with the same value
    ('{"a": [0, {"b": 1, "c": 2, "b": 2}]}', "$.a[1].b"),
    ('[{"x": {"y z": 0, "y z": 0}}]', '$[0].x["y z"]'),
    ('{"nodes": {"n-1": {}, "n-1": {}}}', '$.nodes["n-1"]'),
    ('{"": 1, "": 2}', '$[""]'),
    ('{"a": 1, "b": {"c": 1}, "b": 2}', "$.b"),
])
def test_duplicate_key(text: str, path: str) -> None:
    assert_refused(text, "json_duplicate_key", path)


def test_duplicate_key_names_the_innermost_object_first_in_document_order() -> None:
    # The inner object closes (and is judged) before the outer one, and it comes first in the text.
    assert_refused('{"a": {"k": 1, "k": 2}, "a": 3}', "json_duplicate_key", "$.a.k")


# --------------------------------------------------------------------------
# json_non_finite / json_overflow
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, path", [
    ("NaN", "$"), ("Infinity", "$"), ("-Infinity", "$"),
    ('{"x": [1, NaN]}', "$.x[1]"), ('[{"a": -Infinity}]', "$[0].a"),
    ('["policy", ["cmp", "price_in", "le", Infinity]]', "$[1][3]"),
])
def test_non_finite(text: str, path: str) -> None:
    assert_refused(text, "json_non_finite", path)


@pytest.mark.parametrize("text, path", [
    ("1e309", "$"), ("-1e309", "$"), ("1.8e308", "$"), ("1E400", "$"),
    ('{"a": [0, 1e999]}', "$.a[1]"),
    ("[" + "2" * 309 + "]", "$[0]"),                  # 2.2e308: an integer literal beyond the double range
    ('{"k": -' + "9" * 400 + "}", "$.k"),
])
def test_overflow(text: str, path: str) -> None:
    assert_refused(text, "json_overflow", path)


def test_a_very_long_integer_is_an_overflow() -> None:
    assert_refused("1" * 5000, "json_overflow", "$")


def test_a_very_long_integer_nested_is_reported_at_its_path() -> None:
    # CORE BUG (reported): integers longer than CPython's int-digit limit (4300)
    # escape the scanner hook as a ValueError and are reported at "$", not
    # where they sit.
    assert_refused('[1, {"a": ' + "1" * 5000 + "}]", "json_overflow", "$[1].a")


def test_a_very_long_integer_after_an_earlier_fault_does_not_hide_it() -> None:
    # CORE BUG (reported): same cause; the first fault in document order is the NaN.
    assert_refused("[NaN, " + "1" * 5000 + "]", "json_non_finite", "$[0]")


# --------------------------------------------------------------------------
# json_lone_surrogate
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, path", [
    ('"\\ud800"', "$"),
    ('"\\uDC00"', "$"),
    ('["ok", "a\\uD83Db"]', "$[1]"),                   # high surrogate followed by a non-escape
    ('["\\ude00\\ud83d"]', "$[0]"),                   # a pair in the wrong order
    ('"\\uD800\\u0041"', "$"),                         # high surrogate followed by a BMP escape
    ('{"a": {"b": ["x", "\\udfff"]}}', "$.a.b[1]"),
])
def test_lone_surrogate_in_a_string(text: str, path: str) -> None:
    assert_refused(text, "json_lone_surrogate", path)


def test_lone_surrogate_in_a_key() -> None:
    err = refusal('{"ok": {"\\udc00": 1}}')
    assert err.code == "json_lone_surrogate"
    assert err.parts == ("ok", "\udc00")


def test_the_path_of_a_lone_surrogate_key_can_be_reported() -> None:
    # CORE BUG (reported, minor): the rendered path embeds the raw lone
    # surrogate, so the refusal itself cannot be written as UTF-8 (an HTTP
    # body, a log line, the CLI's stderr).
    err = refusal('{"ok": {"\\udc00": 1}}')
    err.path.encode("utf-8")
    json.dumps(err.to_dict(), ensure_ascii=False).encode("utf-8")


def test_an_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    assert loads('"\\\\ud800"') == "\\ud800"


def test_a_raw_lone_surrogate_in_text_input_is_refused() -> None:
    # CORE BUG (reported): the surrogate scan only runs when the text holds a
    # "\\ud" escape, so a str argument carrying a raw lone surrogate (e.g. a
    # command-line argument decoded with surrogateescape) is accepted, and the
    # value later breaks UTF-8 encoding (identity = sha256 of UTF-8 bytes).
    err = refusal('["family_eq", "\udcff"]')
    assert err.code in ("json_lone_surrogate", "json_encoding")


# --------------------------------------------------------------------------
# json_too_deep
# --------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_too_deep(depth: int) -> None:
    assert_refused("[" * depth + "]" * depth, "json_too_deep", "$")
    assert_refused('{"a":' * depth + "1" + "}" * depth, "json_too_deep", "$")


def test_moderate_nesting_is_fine() -> None:
    v = loads("[" * 200 + "]" * 200)
    for _ in range(199):
        assert isinstance(v, list) and len(v) == 1
        v = v[0]
    assert v == []


# --------------------------------------------------------------------------
# document order of the first fault
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text, code, path", [
    ('[NaN, 1e999]', "json_non_finite", "$[0]"),
    ('[1e999, NaN]', "json_overflow", "$[0]"),
    ('["\\ud800", 1e400]', "json_lone_surrogate", "$[0]"),
    ('[1e400, "\\ud800"]', "json_overflow", "$[0]"),
    ('{"a": [NaN], "a": 1}', "json_non_finite", "$.a[0]"),      # the NaN is before the second "a"
    ('{"a": 1, "a": [NaN]}', "json_duplicate_key", "$.a"),      # the second "a" is before its NaN
    ('{"b": {"x": 1, "x": 2}, "a": NaN}', "json_duplicate_key", "$.b.x"),
    ('{"b": NaN, "a": {"x": 1, "x": 2}}', "json_non_finite", "$.b"),  # document order, not key order
    ('[[[], [Infinity]], {"k": NaN}]', "json_non_finite", "$[0][1][0]"),
])
def test_first_fault_in_document_order(text: str, code: str, path: str) -> None:
    err = refusal(text)
    assert (err.code, err.path) == (code, path)


def test_a_key_is_judged_before_its_value() -> None:
    err = refusal('[{"\\ud800": NaN}]')
    assert (err.code, err.parts) == ("json_lone_surrogate", (0, "\ud800"))


def test_errors_serialize() -> None:
    err = refusal('{"a": NaN}')
    assert err.to_dict() == {"code": "json_non_finite", "path": "$.a", "message": err.message}
    assert err.message and "[json_non_finite]" in str(err)


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2 ** 63), 2 ** 63 - 1),  # wider integers are read as doubles (tested apart)
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # hypothesis' default text has no lone surrogates
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=25,
)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    return a == b


@given(json_values, st.booleans(), st.sampled_from([None, 1]))
def test_roundtrip_of_json_dumps(value: object, ascii_only: bool, indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert same(loads(text), value)
    assert same(loads(text.encode("utf-8")), value)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_json_errors(data: bytes) -> None:
    try:
        loads(data)
    except JSONError:
        pass


@given(st.text(max_size=64))
def test_arbitrary_text_only_raises_json_errors(text: str) -> None:
    try:
        loads(text)
    except JSONError:
        pass


json_ish = st.lists(st.sampled_from(
    list('[]{}",:0123456789eE.-+ \\u') + ["NaN", "Infinity", "true", "null", "d800", "dc00", "1e999", '"a"', '"a":']),
    max_size=30).map("".join)


@settings(max_examples=300)
@given(json_ish)
def test_json_looking_text_only_raises_json_errors(text: str) -> None:
    try:
        value = loads(text)
    except JSONError as err:
        assert err.code.startswith("json_") and err.path.startswith("$")
        return
    # Whatever is accepted is plain, finite JSON data that re-encodes as UTF-8.
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


@given(st.integers(2 ** 63, 2 ** 200) | st.integers(-(2 ** 200), -(2 ** 63) - 1))
def test_integers_wider_than_64_bits_are_read_as_doubles(v: int) -> None:
    got = loads(str(v))
    assert isinstance(got, float) and got == float(v)


# -- the fast reader (orjson) against the exact one ---------------------------------------------------
# ``loads`` of bytes takes orjson's value only when it can prove it is the exact reader's value. These
# texts are built to hit every way the two could differ: duplicate keys (keys drawn from a tiny set),
# colons inside keys and strings, colons and quotes written as \u escapes, whitespace around the colon,
# integers past 53 and 64 bits, long fractions, exponents past a double, lone surrogates, deep nesting.

_number_text = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
_raw_text = st.text(alphabet=st.sampled_from(list('ab:"\\é\x01 \U0001f600')), max_size=6)


@st.composite
def _string_text(draw: st.DrawFn, pool: st.SearchStrategy[str] = _raw_text) -> str:
    s = json.dumps(draw(pool), ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        s = s.replace(":", draw(st.sampled_from(["\\u003a", "\\u003A"])))
    if draw(st.booleans()):
        s = s[:-1] + draw(st.sampled_from(["\\u0022", "\\ud800", "\\udc00", "\\\\", "\\/"])) + '"'
    return s


_ws = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
_keys = _string_text(st.sampled_from(["a", "b", ":", "a:", ""]))


def _member(kv: tuple[str, str, str, str]) -> str:
    key, before, after, value = kv
    return f"{key}{before}:{after}{value}"


_texts = st.recursive(
    _number_text | st.integers(-(2 ** 70), 2 ** 70).map(str) | st.integers(2 ** 63 - 2, 2 ** 64 + 1).map(str)
    | _string_text() | st.sampled_from(["true", "false", "null", "NaN", "-Infinity", "1e999"]),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(_keys, _ws, _ws, inner).map(_member), max_size=4).map(lambda ms: "{" + ", ".join(ms) + "}"),
    ),
    max_leaves=20,
)


def _outcome(read, raw: bytes) -> tuple[str, object]:
    try:
        return "value", read(raw)
    except JSONError as err:
        return "error", (err.code, err.path)


@settings(max_examples=600)
@given(_texts, _ws)
def test_the_fast_reader_agrees_with_the_exact_one(text: str, pad: str) -> None:
    from unhardcoded.lang.strictjson import _exact

    raw = (pad + text + pad).encode("utf-8", "surrogatepass")
    fast, exact = _outcome(loads, raw), _outcome(_exact, raw)
    assert fast[0] == exact[0], (fast, exact)
    if fast[0] == "value":
        assert same(fast[1], exact[1])
    else:
        assert fast[1] == exact[1]


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}', b'{"a" :1,"a": 2}', b'{"a":"x:y","a":"z"}', b'{"a\\u003a":1,"a:":2}',
    b'{"k":"\\u0022:","k":1}', b'{"a":1,"a":"\\u003a"}', b'{"a":1,"a":"\\u003A"}', b'[{"a":[]},{"b":{"c":1,"c":{}}}]',
])
def test_duplicate_keys_in_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(JSONError) as err:
        loads(raw)
    assert err.value.code == "json_duplicate_key"


@given(st.integers(2 ** 53, 2 ** 200) | st.integers(-(2 ** 200), -(2 ** 53)))
def test_wide_integers_in_bytes_read_as_the_exact_reader_reads_them(v: int) -> None:
    got = loads(f'{{"seed":{v}}}'.encode())["seed"]
    if -(2 ** 63) <= v < 2 ** 63:
        assert got == v and isinstance(got, int)
    else:
        assert isinstance(got, float) and got == float(v)


def test_deep_nesting_in_bytes_reads_as_the_exact_reader_reads_it() -> None:
    from unhardcoded.lang.strictjson import _exact

    for depth in (200, 300, 900, 5000):
        raw = b"[" * depth + b"]" * depth
        assert _outcome(loads, raw) == _outcome(_exact, raw)
