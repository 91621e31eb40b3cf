"""The admission pipeline: check, normalise, encode, identify, evaluate; cached.

``compile_policy(term)`` is what a host calls with a policy that arrived as
data. The result carries the normal form, its canonical encoding, the
fingerprint, the identity (SHA-256 of the encoding) and the evaluated
:class:`~unhardcoded.lang.interpreter.Policy`.

Two caches sit in front, both bounded LRUs that keep a term for long only from
its second sight on (a policy built per request is seldom sent twice):

* by identity: two differently written but equal policies share one
  evaluated policy;
* by the submitted text: the same JSON term seen again skips admission and
  normalisation entirely (the common case: a backend sends the same policy
  with every call).

Behind them, a term the compiler has not seen reuses what it did for the
subterms it has (the next common case: a backend that builds its policy per
request changes a threshold or two and repeats the rest). Subterms down to
``admission.MEMO_DEPTH`` are remembered by their exact JSON text: admission
takes their sort, height and node count, normalisation their normal form and
encoding, evaluation their carrier. Each is a function of the subterm alone
(and of this compiler's schema and customs), so the result is the one the
whole walk makes, bit for bit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from ..memo import BoundedMemo, SecondSight
from .admission import check
from .encoding import digest, lane_fingerprint, short_id
from .errors import AdmissionError, EvaluationError, PathPart
from .fields import Schema, default_schema
from .interpreter import Custom, Policy, default_algebra, evaluate_known
from .normalform import UNSET, constrained_normal_form, normalize_and_encode_memo
from .signature import VERSION

try:  # the core needs no dependency; with orjson the cache key is ~15x cheaper to build
    from orjson import JSONEncodeError as _KeyError, dumps as _text_key
except ImportError:  # pragma: no cover
    _KeyError, _text_key = ValueError, repr


@dataclass(frozen=True, slots=True)
class Compiled:
    """An admitted term of any sort, with its identity and evaluated carrier."""

    sort: str
    term: list           # the normal form
    encoding: str        # canonical, version-prefixed
    fingerprint: str     # the reference's cache key "h1-h2"
    identity: str        # sha256 hex of the encoding
    carrier: Any         # Policy for a Policy term; the sort's carrier otherwise

    @property
    def short_id(self) -> str:
        return short_id(self.identity)

    @property
    def version(self) -> str:
        return VERSION

    @property
    def policy(self) -> Policy:
        if not isinstance(self.carrier, Policy):
            raise TypeError(f"a {self.sort} term is not a policy")
        return self.carrier

    def describe(self) -> dict[str, Any]:
        return {"version": VERSION, "sort": self.sort, "policy_ir": self.term, "encoding": self.encoding,
                "fingerprint": self.fingerprint, "identity": self.identity, "short_id": self.short_id}


class _LRU:
    """A thread-safe LRU that keeps an entry for long only from its key's second sight on
    (``memo.SecondSight`` with ``lru``): the terms of policies built per request, never sent
    again, do not push out the ones that repeat, nor hold memory for ``size`` of them."""

    def __init__(self, size: int, probation: int = 64) -> None:
        self.memo = SecondSight(size, probation, lru=True)
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            return self.memo.find(key)

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.memo.put(key, value)

    def clear(self) -> None:
        with self.lock:
            self.memo.clear()

    @property
    def data(self) -> Any:
        """The entries kept for long (least recently found first)."""
        return self.memo.main

    @property
    def probation(self) -> Any:
        return self.memo.probation

    @property
    def probation_size(self) -> int:
        return self.memo.probation_size


class Compiler:
    """Compiles terms against one schema and one custom-transform registry."""

    def __init__(self, schema: Schema | None = None, customs: Mapping[str, Custom] | None = None,
                 cache_size: int = 2048, subterm_cache_size: int = 1024) -> None:
        self.schema = schema or default_schema()
        self.customs = dict(customs or {})
        self._algebra = default_algebra(self.schema, self.customs)
        self._by_identity = _LRU(cache_size)
        self._by_text = _LRU(cache_size)
        # the subterm memos: JSON text -> (sort, height, nodes); JSON text -> [normal form, body, carrier]
        self._admitted = BoundedMemo(subterm_cache_size)
        self._normal = BoundedMemo(subterm_cache_size)

    def compile(self, term: Any, *, want: str | None = None, path: tuple[PathPart, ...] = ()) -> Compiled:
        """Admit, normalise, identify and evaluate ``term``; raise AdmissionError on refusal."""
        text, hit = self._seen(term, want, path)
        if hit is not None:
            return hit
        texts: dict[int, tuple[Any, bytes]] = {}
        sort = self._admit(term, want, path, texts)
        nf, encoding, known = normalize_and_encode_memo(term, self._normal, texts)
        return self._identified(text, sort, nf, encoding, lambda: evaluate_known(nf, self._algebra, known, UNSET), path)

    def compile_constrained(self, sent: Compiled, term: list, envelope: list, *,
                            path: tuple[PathPart, ...] = ()) -> Compiled:
        """``compile(constrain(term, envelope), want="Policy")``, for a Policy ``term`` compiled
        already as ``sent``: the same Compiled, bit for bit, with the sent policy's normal form,
        encoding and evaluated scorer, selector, transform and FailPlan reused; only the new
        filter is normalised, encoded and evaluated (what a policy sent once per request pays
        twice otherwise). The effective term is admitted whole, as ``compile`` would."""
        eff_term = constrain(term, envelope)
        text, hit = self._seen(eff_term, "Policy", path)
        if hit is not None:
            return hit
        sort = self._admit(eff_term, "Policy", path, {})
        env = self.compile(envelope, want="Pred")
        # the new filter's children are the envelope's and the sent filter's normal forms (or
        # their children): each one's memo entry, found by its JSON text (a normal form is its
        # own normal form) or made now, lends its body and keeps its carrier, so every policy
        # under this envelope shares the same carriers for the same children
        known: dict[int, list] = {}
        bodies: dict[int, tuple[list, str]] = {}
        parts = None
        if sent.sort == "Policy":
            for src in (env.term, sent.term[1]):
                for kid in src[1:] if src[0] == "and" else (src,):
                    try:
                        key = _text_key(kid)
                    except (TypeError, ValueError, _KeyError, RecursionError):
                        continue  # not JSON orjson writes (an integer past 64 bits): no memo for it
                    entry = self._normal.get(key)
                    if entry is None:
                        entry = [kid, None, UNSET]
                        self._normal.put(key, entry)
                    known[id(kid)] = entry
                    if entry[1] is not None:
                        bodies[id(kid)] = (kid, entry[1])
            parts = constrained_normal_form(sent.term, sent.encoding, env.term, bodies)
        if parts is None:  # pragma: no cover - a sent Policy's encoding always has the policy's shape
            return self.compile(eff_term, want="Policy", path=path)
        nf, encoding = parts
        base = sent.policy

        def carrier() -> Policy:
            return Policy(evaluate_known(nf[1], self._algebra, known, UNSET), base.scorer, base.selector, base.xform,
                          base.failplan)
        return self._identified(text, sort, nf, encoding, carrier, path)

    def _seen(self, term: Any, want: str | None, path: tuple[PathPart, ...]) -> tuple[Any, Compiled | None]:
        """The term's cache key, and what it compiled to when this text was seen before."""
        try:
            # JSON text tells 1 from 1.0 from true: equal keys, equal JSON terms. (A term built in
            # Python with tuples inside a list reads as its JSON twin; terms from the wire are JSON.)
            text = _text_key(term) if type(term) is list else None
        except (TypeError, ValueError, _KeyError, RecursionError):
            text = None  # not JSON data, or nested too deep to be a term: admission will say why
        if text is None:
            return None, None
        hit = self._by_text.get(text)
        if hit is not None and want is not None and hit.sort != want:
            raise AdmissionError("sort_mismatch", f"expected a {want} term, got a {hit.sort}", list(path))
        return text, hit

    def _admit(self, term: Any, want: str | None, path: tuple[PathPart, ...],
               texts: dict[int, tuple[Any, bytes]]) -> str:
        sort = check(term, self.schema, customs=self.customs.keys(), path=path, memo=self._admitted, texts=texts)
        if want is not None and sort != want:
            raise AdmissionError("sort_mismatch", f"expected a {want} term, got a {sort}", list(path))
        return sort

    def _identified(self, text: Any, sort: str, nf: list, encoding: str, carrier: Any,
                    path: tuple[PathPart, ...]) -> Compiled:
        """The Compiled of a normal form: one per identity (``carrier()`` evaluates it the first
        time), remembered under the submitted text too."""
        identity = digest(encoding)
        compiled = self._by_identity.get(identity)
        if compiled is None:
            try:
                value = carrier()
            except EvaluationError as exc:
                raise AdmissionError(exc.code, exc.message, list(path)) from None
            compiled = Compiled(sort, nf, encoding, lane_fingerprint(encoding), identity, value)
            self._by_identity.put(identity, compiled)
        if text is not None:
            self._by_text.put(text, compiled)
        return compiled

    def compile_policy(self, term: Any, *, path: tuple[PathPart, ...] = ()) -> Compiled:
        return self.compile(term, want="Policy", path=path)

    def clear(self) -> None:
        for cache in (self._by_identity, self._by_text, self._admitted, self._normal):
            cache.clear()


_default: Compiler | None = None


def default_compiler() -> Compiler:
    global _default
    if _default is None:
        _default = Compiler()
    return _default


def compile_term(term: Any, schema: Schema | None = None, customs: Mapping[str, Custom] | None = None,
                 *, want: str | None = None) -> Compiled:
    """One-off compile (cached when using the default schema and no customs)."""
    if schema is None and not customs:
        return default_compiler().compile(term, want=want)
    return Compiler(schema, customs).compile(term, want=want)


def compile_policy(term: Any, schema: Schema | None = None, customs: Mapping[str, Custom] | None = None) -> Compiled:
    return compile_term(term, schema, customs, want="Policy")


def constrain(policy_term: list, envelope: list) -> list:
    """The host envelope's meet: the same policy with its filter ∧-ed with ``envelope``."""
    if not isinstance(policy_term, list) or not policy_term or policy_term[0] != "policy":
        raise TypeError("constrain expects a policy term")
    out = list(policy_term)
    out[1] = ["and", envelope, policy_term[1]]
    return out


__all__ = ["Compiled", "Compiler", "compile_term", "compile_policy", "constrain", "default_compiler"]
