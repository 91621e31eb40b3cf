"""The policy section's canonical bytes by orjson are the standard library's, or are not used.

A trace's policy section is stored by the SHA-256 of its canonical JSON (docs/spec/trace.md):
sorted keys, no whitespace, UTF-8, as ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` writes it. ``canonical_admitted`` takes orjson's text where it is provably
that text; these tests hold the two equal where it does, over values of every kind a section
holds and numbers of every magnitude, so an orjson that writes anything differently fails here.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang.compiler import Compiler
from unhardcoded.traces.record import canonical, canonical_admitted

from . import strategies as S

doubles = st.floats(allow_nan=False, allow_infinity=False)
leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1), doubles,
                   st.text(), st.integers(min_value=2 ** 64, max_value=2 ** 80))
values = st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.text(max_size=4), kids, max_size=4)),
                      max_leaves=12)


@settings(max_examples=2000)
@given(values)
def test_the_same_bytes_as_the_standard_library_for_any_finite_json_value(v) -> None:
    assert canonical_admitted(v) == canonical(v)


@settings(max_examples=3000)
@given(doubles)
def test_every_double_is_written_as_the_standard_library_writes_it(x: float) -> None:
    assert canonical_admitted([x, {"x": x}]) == canonical([x, {"x": x}])


@given(S.policy(), S.pred())
def test_a_policy_section_s_bytes_are_the_standard_library_s(term, envelope) -> None:
    c = Compiler(S.SCHEMA).compile(term)
    section = {"source": "policy", "profile": None, "envelope": envelope,
               "sent": {"term": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
                        "identity": c.identity, "sort": c.sort},
               "effective": {"term": c.term, "encoding": c.encoding, "fingerprint": c.fingerprint,
                             "identity": c.identity, "sort": c.sort}}
    assert canonical_admitted(section) == canonical(section)


def test_where_orjson_writes_a_small_double_otherwise_the_standard_library_s_text_is_taken() -> None:
    # orjson writes 1e-05 as 0.00001 and 1e-07 as 1e-7: the guard must see both forms
    assert orjson.dumps(1e-05) != canonical(1e-05) and orjson.dumps(1e-07) != canonical(1e-07)
    for x in (1e-05, 7.5e-05, 1e-07, -3e-300, 5e-324):
        assert canonical_admitted({"bound": x}) == canonical({"bound": x})
