"""Replay language-neutral conformance vectors (the reference's golden format).

A vector names a term and what a conforming host must reproduce: its sort,
canonical encoding and fingerprint, and by ``kind`` the Pred verdicts with
reasons, a policy's order, scores (within 1e-12) and rejections, a transformed
request, or FailPlan classifications. Our own vector files add two kinds:
``flow`` (encoding, fingerprint, identity of a flow) and ``reject`` (the
admission error code and path of a refused term).

Pure: takes the decoded document, returns results; the CLI reads the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .admission import check
from .encoding import digest, lane_fingerprint
from .errors import LangError
from .fields import Schema
from .flow import admit_flow
from .interpreter import classify, default_algebra, evaluate
from .normalform import normalize_and_encode
from .signature import VERSION

TOLERANCE = 1e-12


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def score_value(v: Any) -> Any:
    """Scores may be written "nan", "inf", "-inf" in vector files (JSON has no such numbers)."""
    return _NON_FINITE.get(v, v) if isinstance(v, str) else v


def near(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))
    return False


def deep_equal(a: Any, b: Any, path: str = "$") -> str | None:
    """None when equal (numbers within tolerance; an empty list equals an empty object)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return None if near(a, b) else f"{path}: {a!r} != {b!r}"
    empty = ([], {})
    if a in empty and b in empty and type(a) in (list, dict) and type(b) in (list, dict):
        return None
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: present on one side only"
            err = deep_equal(a[k], b[k], f"{path}.{k}")
            if err:
                return err
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            err = deep_equal(x, y, f"{path}[{i}]")
            if err:
                return err
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


@dataclass
class VectorResult:
    name: str
    kind: str
    ok: bool
    failures: list[str] = field(default_factory=list)


def _expect(failures: list[str], what: str, got: Any, want: Any) -> None:
    err = deep_equal(got, want)
    if err is not None:
        failures.append(f"{what}: got {got!r}, want {want!r}")


def replay_vector(v: Mapping[str, Any], schema: Schema | None = None) -> VectorResult:
    name, kind = str(v.get("name", "?")), str(v.get("kind", "?"))
    failures: list[str] = []
    expect = v.get("expect", {})
    try:
        if kind == "flow":
            nf = admit_flow(v["flow"], schema)
            _expect(failures, "encoding", nf.encoding, expect["encoding"])
            _expect(failures, "fingerprint", nf.fingerprint, expect["fingerprint"])
            if "identity" in expect:
                _expect(failures, "identity", nf.identity, expect["identity"])
            return VectorResult(name, kind, not failures, failures)
        if kind == "reject":
            try:
                if "flow" in v:
                    admit_flow(v["flow"], schema)
                else:
                    check(v["term"], schema)
            except LangError as exc:
                _expect(failures, "code", exc.code, expect["code"])
                if "path" in expect:
                    _expect(failures, "path", exc.path, expect["path"])
            else:
                failures.append(f"admitted; want refusal {expect.get('code')}")
            return VectorResult(name, kind, not failures, failures)

        term = v["term"]
        sort = check(term, schema)
        _expect(failures, "sort", sort, expect.get("sort"))
        nf, encoding = normalize_and_encode(term)
        _expect(failures, "encoding", encoding, expect.get("encoding"))
        _expect(failures, "fingerprint", lane_fingerprint(encoding), expect.get("fingerprint"))
        if "identity" in expect:
            _expect(failures, "identity", digest(encoding), expect["identity"])
        algebra = default_algebra(schema)
        if kind == "pred":
            pred = evaluate(nf, algebra)
            for i, case in enumerate(v.get("cases", []), start=1):
                why = pred(case["candidate"], case["ctx"])
                _expect(failures, f"case {i} verdict", why is None, case["expect_ok"])
                if case.get("expect_ok") is False:
                    _expect(failures, f"case {i} reason", why, case.get("expect_reason"))
        elif kind == "policy":
            plan = evaluate(nf, algebra).plan(v["candidates"], v["ctx"])
            _expect(failures, "order", [r.candidate.get("provider_id") for r in plan.ordered], expect["ordered"])
            _expect(failures, "scores", [r.score for r in plan.ordered], [score_value(x) for x in expect["scores"]])
            _expect(failures, "rejected", [{"provider": r.provider, "reason": r.reason} for r in plan.rejected],
                    expect["rejected"])
        elif kind == "xform":
            x = evaluate(nf, algebra)
            _expect(failures, "request", x(v["request"], v["candidate"], v["ctx"]), expect["request"])
        elif kind == "failplan":
            plan = evaluate(nf, algebra)
            for case in expect.get("classified", []):
                _expect(failures, f"classify({case['kind']})", classify(plan, case["kind"]), case["action"])
        elif kind != "encoding":
            failures.append(f"unknown vector kind {kind!r}")
    except LangError as exc:
        failures.append(f"refused: {exc}")
    except (KeyError, TypeError) as exc:
        failures.append(f"malformed vector: {exc!r}")
    return VectorResult(name, kind, not failures, failures)


def replay(document: Mapping[str, Any], schema: Schema | None = None) -> list[VectorResult]:
    """Replay every vector of a document ``{"version", "vectors": [...]}``."""
    version = document.get("version")
    results = []
    if version not in (VERSION, "sigma-flow/v1", None):
        results.append(VectorResult("version", "header", False, [f"file is {version}, we speak {VERSION}"]))
    for v in document.get("vectors", []):
        results.append(replay_vector(v, schema))
    return results

