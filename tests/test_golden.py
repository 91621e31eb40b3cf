"""The reference's golden vectors and our own conformance files replay bit for bit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from unhardcoded.lang.conformance import replay, replay_vector

from .conftest import ROOT

CONFORMANCE = sorted((ROOT / "conformance").glob("*.json"))


def test_reference_golden_vectors_all_agree(golden_path: Path) -> None:
    doc = json.loads(golden_path.read_text())
    results = replay(doc)
    assert len(results) >= 15
    failed = [(r.name, r.failures) for r in results if not r.ok]
    assert failed == []


@pytest.mark.parametrize("path", CONFORMANCE, ids=lambda p: p.name)
def test_our_conformance_vectors_agree(path: Path) -> None:
    doc = json.loads(path.read_text())
    results = replay(doc)
    assert len(results) >= 10
    assert [(r.name, r.failures) for r in results if not r.ok] == []


def test_a_tampered_vector_is_reported(golden_path: Path) -> None:
    doc = json.loads(golden_path.read_text())
    by_kind = {v["kind"]: v for v in doc["vectors"]}
    for kind, mutate in [
        ("encoding", lambda v: v["expect"].__setitem__("encoding", v["expect"]["encoding"] + " ")),
        ("pred", lambda v: v["cases"][0].__setitem__("expect_ok", not v["cases"][0]["expect_ok"])),
        ("policy", lambda v: v["expect"]["scores"].__setitem__(0, v["expect"]["scores"][0] * (1 + 1e-9))),
        ("xform", lambda v: v["expect"]["request"].__setitem__("top_p", 0.5)),
        ("failplan", lambda v: v["expect"]["classified"][0].__setitem__("action", {"action": "abort"})),
    ]:
        v = copy.deepcopy(by_kind[kind])
        mutate(v)
        assert not replay_vector(v).ok, kind
