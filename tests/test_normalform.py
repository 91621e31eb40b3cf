"""The normal form, the canonical encoding and the identity (SIGMA-POL §4, §4.1).

Expected encodings are written by hand from the equations and the encoding
grammar; where an order is involved, the comment says why (AC children sort
by their canonical encoding, as strings).
"""

from __future__ import annotations

import copy
import hashlib
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unhardcoded.lang import (
    VERSION, check, compile_term, digest, encode, encode_number, lane_fingerprint, normalize, normalize_and_encode,
    short_id,
)
from unhardcoded.lang.compiler import Compiler, constrain
from unhardcoded.lang.encoding import encode_param, encode_string

from . import strategies as S
from .test_interpreter_many import plan_view

NC = {"action": "next_candidate"}
AB = {"action": "abort"}
DP = {"action": "disable_provider"}

P = ["is", "has_tee"]
Q = ["cmp", "price_in", "le", 5]
R = ["meets_req"]
F = ["field", "context"]
G = ["field", "price_in"]


def enc(t: list) -> str:
    """Encoding of the normal form."""
    nf, e = normalize_and_encode(t)
    assert e == encode(nf)
    return e


def same_class(a: list, b: list) -> None:
    assert enc(a) == enc(b)


def canonical(t: list, expected: list) -> None:
    """``t`` normalises to exactly ``expected`` (which is its own normal form)."""
    assert normalize(t) == expected
    assert enc(t) == encode(expected)
    assert normalize(expected) == expected


# --------------------------------------------------------------------------
# the encoding of a few terms, by hand
# --------------------------------------------------------------------------

def test_encoding_shape() -> None:
    assert encode(["top"]) == "sigma-pol/v2:(top)"
    assert encode(Q) == 'sigma-pol/v2:(cmp "price_in" "le" 5)'
    assert encode(["policy", Q, ["zero"], ["argmax"], ["id"], ["always", NC]]) == (
        'sigma-pol/v2:(policy (cmp "price_in" "le" 5) (zero) (argmax) (id) (always {"action":"next_candidate"}))')
    assert encode(["chain", [{"provider": "p", "model": "m"}]]) == 'sigma-pol/v2:(chain [{"model":"m","provider":"p"}])'
    assert encode(["set_param", "x", True]) == 'sigma-pol/v2:(set_param "x" true)'
    assert encode(["set_param", "x", False]) == 'sigma-pol/v2:(set_param "x" false)'
    assert VERSION == "sigma-pol/v2"


# --------------------------------------------------------------------------
# AC operations: and / or / add
# --------------------------------------------------------------------------

def test_ac_sort_by_encoding() -> None:
    # "(cmp" < "(is" < "(meets_req": c < i < m
    canonical(["and", R, P, Q], ["and", Q, P, R])
    canonical(["or", R, Q, P], ["or", Q, P, R])
    # "(field \"context\")" < "(field \"price_in\")" < "(lit 1)"
    canonical(["add", ["lit", 1], G, F], ["add", F, G, ["lit", 1]])


def test_ac_flatten() -> None:
    canonical(["and", P, ["and", Q, R]], ["and", Q, P, R])
    canonical(["and", ["and", ["and", R]], ["and", P, Q]], ["and", Q, P, R])
    canonical(["or", ["or", P, Q], R], ["or", Q, P, R])
    canonical(["add", ["add", F, ["add", G]], ["lit", 2]], ["add", F, G, ["lit", 2]])


def test_ac_flattens_only_the_same_op() -> None:
    canonical(["and", P, ["or", Q, R]], ["and", P, ["or", Q, R]])     # "(is" < "(or"


def test_ac_units() -> None:
    canonical(["and", P, ["top"]], P)
    canonical(["or", P, ["bot"]], P)
    canonical(["add", F, ["zero"]], F)
    canonical(["and", ["top"], ["top"]], ["top"])
    canonical(["or", ["bot"]], ["bot"])
    canonical(["add", ["zero"], ["zero"]], ["zero"])
    canonical(["and", P], P)                                            # one child stands for itself


def test_ac_absorbing() -> None:
    canonical(["and", P, ["bot"], Q], ["bot"])
    canonical(["or", P, ["top"]], ["top"])
    canonical(["and", P, ["and", Q, ["bot"]]], ["bot"])                 # absorbed below, then above
    canonical(["or", ["not", ["bot"]], P], ["top"])                     # not(bot) = top, then absorbs


def test_add_has_no_absorbing_element() -> None:
    canonical(["add", F, ["lit", 0]], ["add", F, ["lit", 0]])           # lit 0 is not the unit zero


def test_no_idempotence_law() -> None:
    # Only the equations of §4 apply: and(p, p) is not p.
    canonical(["and", P, P], ["and", P, P])
    canonical(["add", F, F], ["add", F, F])


def test_ac_sorting_is_by_whole_encoding_not_op_name() -> None:
    a = ["cmp", "price_in", "le", 10]
    b = ["cmp", "price_in", "le", 9]
    # '(cmp "price_in" "le" 10)' < '(cmp "price_in" "le" 9)' because '1' < '9'
    canonical(["and", b, a], ["and", a, b])


# --------------------------------------------------------------------------
# seq
# --------------------------------------------------------------------------

X = ["set_param", "max_tokens", 4096]
Y = ["filter_text", ["NFKC"]]
Z = ["inject_seed", "seed"]


def test_seq_flatten_drop_id_keep_order() -> None:
    canonical(["seq", ["seq", X, ["id"]], Y], ["seq", X, Y])
    canonical(["seq", Y, X], ["seq", Y, X])                             # not commutative
    canonical(["seq", Z, ["seq", Y, ["seq", X]]], ["seq", Z, Y, X])
    canonical(["seq", ["id"], X], X)
    canonical(["seq", ["id"], ["seq", ["id"]]], ["id"])
    assert enc(["seq", X, Y]) != enc(["seq", Y, X])


# --------------------------------------------------------------------------
# not / scale / gate / normalize
# --------------------------------------------------------------------------

def test_not() -> None:
    canonical(["not", ["not", P]], P)
    canonical(["not", ["not", ["not", P]]], ["not", P])
    canonical(["not", ["top"]], ["bot"])
    canonical(["not", ["bot"]], ["top"])
    canonical(["not", ["and", P, ["top"]]], ["not", P])
    canonical(["not", ["and", P, Q]], ["not", ["and", Q, P]])           # no De Morgan


def test_scale() -> None:
    canonical(["scale", 1, F], F)
    canonical(["scale", 1.0, F], F)
    canonical(["scale", 0, F], ["zero"])
    canonical(["scale", 0.0, F], ["zero"])
    canonical(["scale", -0.0, F], ["zero"])
    canonical(["scale", 3, ["zero"]], ["zero"])
    canonical(["scale", 3, ["scale", 0, F]], ["zero"])
    # no arithmetic: nested scales stay nested
    canonical(["scale", 2, ["scale", 3, F]], ["scale", 2, ["scale", 3, F]])
    canonical(["scale", -1, F], ["scale", -1, F])


def test_gate() -> None:
    canonical(["gate", ["top"], F], F)
    canonical(["gate", ["bot"], F], ["zero"])
    canonical(["gate", P, ["zero"]], ["zero"])
    canonical(["gate", ["not", ["top"]], F], ["zero"])
    canonical(["gate", ["and", ["top"], ["top"]], F], F)
    canonical(["gate", P, ["scale", 0, F]], ["zero"])
    canonical(["gate", ["not", ["is", "breaker_open"]], F], ["gate", ["not", ["is", "breaker_open"]], F])


def test_normalize_idempotent_and_other_scorers_untouched() -> None:
    canonical(["normalize", ["normalize", F]], ["normalize", F])
    canonical(["normalize", ["normalize", ["normalize", F]]], ["normalize", F])
    canonical(["neg", ["neg", F]], ["neg", ["neg", F]])                 # 1-(1-s) is not an equation
    canonical(["clamp", 0, 1, ["clamp", 0, 1, F]], ["clamp", 0, 1, ["clamp", 0, 1, F]])
    canonical(["normalize", ["neg", ["normalize", F]]], ["normalize", ["neg", ["normalize", F]]])


def test_rewrites_reach_every_slot() -> None:
    t = ["policy", ["and", ["top"], P], ["add", ["zero"], ["scale", 1, F]],
         ["top_k", 2, ["prefer", ["not", ["not", Q]], ["argmax"]]],
         ["when", ["or", ["bot"], R], ["seq", ["id"], X]], ["override", ["always", NC], "timeout", NC]]
    canonical(t, ["policy", P, F, ["top_k", 2, ["prefer", Q, ["argmax"]]], ["when", R, X], ["always", NC]])


# --------------------------------------------------------------------------
# FailPlan
# --------------------------------------------------------------------------

def test_failplan_reasons_sorted_innermost_first() -> None:
    t = ["override", ["override", ["always", NC], "timeout", AB], "auth_error", DP]
    canonical(t, ["override", ["override", ["always", NC], "auth_error", DP], "timeout", AB])


def test_failplan_outer_override_wins() -> None:
    t = ["override", ["override", ["override", ["always", NC], "rate_limit", AB], "auth_error", DP], "rate_limit", DP]
    canonical(t, ["override", ["override", ["always", NC], "auth_error", DP], "rate_limit", DP])


def test_failplan_entries_equal_to_the_base_are_dropped() -> None:
    canonical(["override", ["always", NC], "server_error", {"action": "next_candidate"}], ["always", NC])
    # equality is by canonical encoding: key order and 1 vs 1.0 do not matter
    base = {"action": "retry_same", "attempts": 1, "backoff_ms": [100, 200]}
    same = {"backoff_ms": [100.0, 200], "attempts": 1.0, "action": "retry_same"}
    canonical(["override", ["always", base], "timeout", same], ["always", base])


def test_failplan_outer_override_equal_to_base_erases_an_inner_one() -> None:
    t = ["override", ["override", ["always", NC], "timeout", AB], "timeout", NC]
    canonical(t, ["always", NC])


def test_failplan_unknown_is_an_ordinary_reason() -> None:
    canonical(["override", ["always", NC], "unknown", AB], ["override", ["always", NC], "unknown", AB])


# --------------------------------------------------------------------------
# numbers (§4.1)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("v, text", [
    (0, "0"), (-0.0, "0"), (0.0, "0"), (5, "5"), (5.0, "5"), (-5.0, "-5"), (-7, "-7"),
    (2 ** 53, "9007199254740992"), (-(2 ** 53), "-9007199254740992"), (float(2 ** 53), "9007199254740992"),
    (4000, "4000"), (1e15, "1000000000000000"),
    (0.5, "0.5"), (-1.5, "-1.5"), (0.1, "0.10000000000000001"), (0.25, "0.25"),
    (1e-05, "1.0000000000000001e-05"),
    (1e100, "1e+100"),
    (2.5e-10, "2.5000000000000002e-10"),
    (1e300, "1.0000000000000001e+300"),
    (5e-324, "4.9406564584124654e-324"),
    (1e22, "1e+22"),                            # integral, but beyond 2**53: %.17g
    (2.0 ** 54, "18014398509481984"),           # 17 significant digits suffice: %.17g prints it fixed
    (2 ** 53 + 1, "9007199254740992"),          # an integer beyond 2**53 is the double it denotes
    (-1e17, "-1e+17"),
    (1e-4, "0.0001"), (1.5e-5, "1.5e-05"),     # 1.5e-5 is 1.50000000000000003...e-05: trailing zeros go
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (123456.789, "123456.789"),
])
def test_number_grammar(v, text: str) -> None:
    assert encode_number(v) == text
    assert encode(["lit", v]) == f"sigma-pol/v2:(lit {text})"


def render_g17(x: float) -> str:
    """An independent rendering of the §4.1 grammar, from the exact decimal value of the double."""
    if x == 0:
        return "0"
    if x == int(x) and abs(x) <= 2 ** 53:
        return str(int(x))
    d = Decimal(x)
    sign = "-" if d < 0 else ""
    d = abs(d)
    exp = d.adjusted()
    mant = d.scaleb(-exp).quantize(Decimal(1).scaleb(-16), rounding=ROUND_HALF_EVEN)
    if mant >= 10:  # rounding carried into a new digit
        exp += 1
        mant = (mant / 10).quantize(Decimal(1).scaleb(-16), rounding=ROUND_HALF_EVEN)
    digits = mant.as_tuple().digits
    assert len(digits) == 17
    if exp < -4 or exp >= 17:
        frac = "".join(map(str, digits[1:])).rstrip("0")
        body = str(digits[0]) + ("." + frac if frac else "")
        return f"{sign}{body}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    s = "".join(map(str, digits))
    if exp >= 0:
        intpart, frac = s[:exp + 1], s[exp + 1:]
    else:
        intpart, frac = "0", "0" * (-exp - 1) + s
    frac = frac.rstrip("0")
    return sign + intpart + ("." + frac if frac else "")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_grammar_on_any_double(x: float) -> None:
    assert encode_number(x) == render_g17(x)


@given(st.integers(-(2 ** 80), 2 ** 80))
def test_number_grammar_on_integers(n: int) -> None:
    assert encode_number(n) == (str(n) if abs(n) <= 2 ** 53 else render_g17(float(n)))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exponents_have_a_sign_and_two_digits(x: float) -> None:
    text = encode_number(x)
    if "e" in text:
        exp = text.split("e")[1]
        assert exp[0] in "+-" and len(exp) >= 3 and exp[1:].isdigit()
        assert len(exp) == 3 or exp[1] != "0"
    assert "E" not in text and "inf" not in text and "nan" not in text


# --------------------------------------------------------------------------
# strings and records
# --------------------------------------------------------------------------

def test_string_escaping() -> None:
    # Only backslash, double quote, LF, CR and TAB are escaped; everything else is raw.
    raw = 'a\\b"c\nd\re\tf\x00\x01\x1f\x7f\u2028 é中😀/'
    expected = '"a\\\\b\\"c\\nd\\re\\tf\x00\x01\x1f\x7f\u2028 é中😀/"'
    assert encode_string(raw) == expected
    assert encode(["family_eq", raw]) == f"sigma-pol/v2:(family_eq {expected})"
    assert encode_string("") == '""'


def test_records() -> None:
    assert encode_param({}) == "[]"                                   # an empty record is written like a list
    assert encode_param([]) == "[]"
    assert encode(["filter_text", [{}]]) == "sigma-pol/v2:(filter_text [[]])"
    # keys in byte order: "B" (0x42) < "_" (0x5f) < "a" < "aa" < "b" < "é" (0xc3 0xa9)
    rec = {"b": 1, "é": 2, "aa": 3, "a": 4, "_": 5, "B": 6}
    assert encode_param(rec) == '{"B":6,"_":5,"a":4,"aa":3,"b":1,"é":2}'
    assert encode(["always", {"backoff_ms": 500, "action": "retry_same"}]) == (
        'sigma-pol/v2:(always {"action":"retry_same","backoff_ms":500})')
    assert encode(["always", {"action": "retry_same", "backoff_ms": [100, 0.5, 2e-10]}]) == (
        'sigma-pol/v2:(always {"action":"retry_same","backoff_ms":[100,0.5,2.0000000000000001e-10]})')
    assert encode(["filter_text", ["NFKC", {"q": 1, "p": -0.0}]]) == 'sigma-pol/v2:(filter_text ["NFKC",{"p":0,"q":1}])'


def test_five_and_five_point_oh_are_one_term() -> None:
    assert enc(["cmp", "price_in", "le", 5]) == enc(["cmp", "price_in", "le", 5.0])
    assert compile_term(["cmp", "price_in", "le", 5]).identity == compile_term(["cmp", "price_in", "le", 5.0]).identity


# --------------------------------------------------------------------------
# fingerprint and identity
# --------------------------------------------------------------------------

def lanes(s: str) -> str:
    h1, h2 = 5381, 52711
    for b in s.encode("utf-8"):
        h1 = (h1 * 31 + b) % 2147483647
        h2 = (h2 * 37 + b) % 2147483629
    return f"{h1}-{h2}"


def test_fingerprint_by_hand() -> None:
    assert lane_fingerprint("") == "5381-52711"
    # "a" is byte 97: 5381*31 + 97 = 166908; 52711*37 + 97 = 1950404
    assert lane_fingerprint("a") == "166908-1950404"
    s = 'sigma-pol/v2:(family_eq "é中")'                                # multi-byte: lanes run over UTF-8 bytes
    assert lane_fingerprint(s) == lanes(s)
    c = compile_term(["policy", Q, ["zero"], ["argmax"], ["id"], ["always", NC]])
    assert c.fingerprint == lanes(c.encoding)


@given(st.text(max_size=64), st.integers(min_value=0, max_value=140), st.text(max_size=3))
def test_the_block_wise_fingerprint_is_the_byte_by_byte_definition(part: str, times: int, tail: str) -> None:
    """The fingerprint is computed a block of bytes at a time (a table of powers); it must be
    the reference's byte-by-byte recurrence for every length, across block boundaries too."""
    s = part * times + tail  # up to ~36,000 bytes: one block, several, and lengths either side of a boundary
    assert lane_fingerprint(s) == lanes(s)


@pytest.mark.parametrize("n", [2047, 2048, 2049, 4096, 4097])
def test_the_fingerprint_at_block_boundaries(n: int) -> None:
    s = ("é" * n)[: n // 2] + "x" * (n - n // 2)
    assert lane_fingerprint(s) == lanes(s)


def test_identity_is_sha256_of_the_encoding() -> None:
    c = compile_term(["policy", ["and", ["top"], Q], ["zero"], ["argmax"], ["id"], ["always", NC]])
    assert c.encoding == ('sigma-pol/v2:(policy (cmp "price_in" "le" 5) (zero) (argmax) (id) '
                          '(always {"action":"next_candidate"}))')
    assert c.identity == hashlib.sha256(c.encoding.encode("utf-8")).hexdigest() == digest(c.encoding)
    assert len(c.identity) == 64
    assert c.short_id == "pol_" + c.identity[:6] == short_id(c.identity)
    assert c.term == normalize(["policy", ["and", ["top"], Q], ["zero"], ["argmax"], ["id"], ["always", NC]])
    d = c.describe()
    assert (d["identity"], d["encoding"], d["fingerprint"], d["version"]) == (
        c.identity, c.encoding, c.fingerprint, VERSION)


def test_normalize_does_not_touch_its_input() -> None:
    t = ["policy", ["and", R, ["and", Q, P]], ["add", G, F], ["argmax"], ["seq", X, ["id"]],
         ["override", ["always", NC], "t", AB]]
    before = copy.deepcopy(t)
    normalize(t)
    normalize_and_encode(t)
    compile_term(t)
    assert t == before


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------

@given(S.any_term())
def test_normalize_is_idempotent(t) -> None:
    nf = normalize(t)
    assert normalize(nf) == nf
    assert enc(nf) == enc(t) == encode(nf)


@given(S.any_term())
def test_normalizing_keeps_the_sort(t) -> None:
    assert check(normalize(t), S.SCHEMA) == check(t, S.SCHEMA)


AC_CHILD = {"and": S.pred(2), "or": S.pred(2), "add": S.scorer(2)}
UNITS = {"and": ["top"], "or": ["bot"], "add": ["zero"]}


def ac_case(min_size: int, max_size: int) -> st.SearchStrategy:
    return st.one_of(*(st.tuples(st.just(op), st.lists(kid, min_size=min_size, max_size=max_size))
                       for op, kid in AC_CHILD.items()))


@given(ac_case(1, 5), st.data())
def test_ac_children_order_does_not_matter(case, data) -> None:
    op, kids = case
    shuffled = data.draw(st.permutations(kids))
    assert enc([op, *kids]) == enc([op, *shuffled])


@given(ac_case(3, 6), st.data())
def test_ac_nesting_does_not_matter(case, data) -> None:
    op, kids = case
    cut = data.draw(st.integers(1, len(kids) - 1))
    flat = [op, *kids]
    assert enc(flat) == enc([op, *kids[:cut], [op, *kids[cut:]]])
    assert enc(flat) == enc([op, [op, *kids[:cut]], *kids[cut:]])
    assert enc(flat) == enc([op, kids[0], [op, kids[1], [op, *kids[2:]]]])


@given(ac_case(1, 4), st.data())
def test_units_do_not_matter(case, data) -> None:
    op, kids = case
    padded = list(kids)
    for _ in range(data.draw(st.integers(1, 3))):
        padded.insert(data.draw(st.integers(0, len(padded))), UNITS[op])
    assert enc([op, *padded]) == enc([op, *kids])


@given(st.lists(S.xform(1), min_size=1, max_size=4), st.data())
def test_seq_id_and_nesting_do_not_matter(xs, data) -> None:
    padded = list(xs)
    for _ in range(data.draw(st.integers(0, 3))):
        padded.insert(data.draw(st.integers(0, len(padded))), ["id"])
    cut = data.draw(st.integers(0, len(xs)))
    nested = ["seq", *xs[:cut], ["seq", *xs[cut:]]] if cut < len(xs) else ["seq", *xs]
    assert enc(["seq", *padded]) == enc(["seq", *xs]) == enc(nested)


@given(S.any_term())
def test_compiler_caches_agree(t) -> None:
    comp = Compiler(S.SCHEMA)
    first = comp.compile(t)
    assert comp.compile(copy.deepcopy(t)) is first           # the text cache
    assert comp.compile(normalize(t)) is first               # the identity cache (a different text)
    assert first.term == normalize(t) and first.sort == check(t, S.SCHEMA)
    fresh = Compiler(S.SCHEMA).compile(normalize(t))
    assert (fresh.encoding, fresh.identity, fresh.fingerprint) == (first.encoding, first.identity, first.fingerprint)


@given(st.lists(S.pred(2), min_size=2, max_size=4), st.data())
def test_equal_policies_share_one_compiled(preds, data) -> None:
    comp = Compiler(S.SCHEMA)
    shuffled = data.draw(st.permutations(preds))
    a = ["policy", ["and", *preds], ["zero"], ["argmax"], ["id"], ["always", NC]]
    b = ["policy", ["and", *shuffled, ["top"]], ["add", ["zero"]], ["argmax"], ["seq", ["id"]], ["always", NC]]
    assert comp.compile(a) is comp.compile(b)


@given(S.any_term(), S.any_term())
def test_different_normal_forms_have_different_encodings(a, b) -> None:
    assume(normalize(a) != normalize(b))
    assert enc(a) != enc(b)


# ---- a policy under an envelope, from the policy's own normal form ----------------------------

def _compiled_view(c):
    return (c.sort, c.term, c.encoding, c.fingerprint, c.identity)


@settings(max_examples=300)
@given(S.policy(), S.pred(), S.population(max_size=6), S.context())
def test_a_constrained_policy_compiles_as_the_general_path_does(term, envelope, pop, x) -> None:
    """Compiler.compile_constrained reuses the sent policy's normal form, encoding and evaluated
    parts: the result must be the general compile of constrain(term, envelope), bit for bit, and
    decide alike."""
    general = Compiler(S.SCHEMA).compile(constrain(term, envelope), want="Policy")
    c = Compiler(S.SCHEMA)
    reused = c.compile_constrained(c.compile(term), term, envelope)
    assert _compiled_view(reused) == _compiled_view(general)
    assert plan_view(reused.policy, pop, x) == plan_view(general.policy, pop, x)
    assert reused.policy.failplan == general.policy.failplan
    for cand in pop[:2]:
        request = {"temperature": 0.5, "max_tokens": 10}
        assert reused.policy.xform(request, cand, x) == general.policy.xform(request, cand, x)
    assert c.compile_constrained(c.compile(term), term, envelope) is reused  # remembered by its text


def test_a_constrained_policy_past_the_limits_is_refused_as_the_general_path_refuses() -> None:
    from unhardcoded.lang import AdmissionError
    from unhardcoded.lang.admission import MAX_DEPTH

    pred = ["cmp", "price_in", "le", 5]
    for _ in range(MAX_DEPTH - 2):  # admissible alone, one level too deep under the envelope's 'and'
        pred = ["not", pred]
    term = ["policy", pred, ["zero"], ["argmax"], ["id"], ["always", {"action": "next_candidate"}]]
    envelope = ["not", ["is", "disabled"]]
    c = Compiler(S.SCHEMA)
    sent = c.compile(term)
    errors = []
    for attempt in (lambda: Compiler(S.SCHEMA).compile(constrain(term, envelope), want="Policy", path=("policy_ir",)),
                    lambda: c.compile_constrained(sent, term, envelope, path=("policy_ir",))):
        with pytest.raises(AdmissionError) as e:
            attempt()
        errors.append((e.value.code, e.value.path, str(e.value)))
    assert errors[0] == errors[1] and errors[0][0] == "too_deep"
