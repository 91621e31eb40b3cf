"""The normal form: one representative per class of equal terms.

The equations (docs/spec/sigma-pol.md §4), applied bottom-up:

* ``and``, ``or``, ``add`` (associative, commutative): nested same-op children
  are flattened, units dropped (``top``, ``bot``, ``zero``), an absorbing child
  collapses the whole (``bot`` in ``and``, ``top`` in ``or``), the children are
  sorted by their canonical encoding, one child stands for itself and none
  leaves the unit;
* ``seq``: flattened, ``id`` dropped, order kept;
* ``not(not p) = p``, ``not(top) = bot``, ``not(bot) = top``;
* ``scale(0, s) = scale(a, zero) = zero``, ``scale(1, s) = s``;
* ``gate(top, s) = s``, ``gate(bot, s) = gate(p, zero) = zero``;
* ``normalize(normalize(s)) = normalize(s)``;
* a FailPlan becomes ``always(base)`` under overrides sorted by reason, the
  outermost override of a reason winning and overrides equal to the base
  dropped.

No arithmetic happens here: identities compare against exactly 0 and 1.
"""

from __future__ import annotations

from typing import Any

from .encoding import encode_body, encode_param
from .signature import OPERATIONAL_SORTS, OPS, VERSION


# parameter sorts that are lists; admission lets ``{}`` stand for the empty one (as the reference does)
_LISTS = frozenset(("Recipe", "Chain"))


class _Normalizer:
    """One normalisation pass; remembers the encoding of every term it built."""

    __slots__ = ("memo",)

    def __init__(self) -> None:
        # id(term) -> (term, body). Holding the term keeps its id from being reused.
        self.memo: dict[int, tuple[list, str]] = {}

    def body(self, t: list) -> str:
        hit = self.memo.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        op = OPS[t[0]]
        if op.variadic is not None:
            parts = [self.body(k) for k in t[1:]]
        else:
            parts = [self.body(t[i]) if s in OPERATIONAL_SORTS else encode_param(t[i])
                     for i, s in enumerate(op.ins, start=1)]
        b = "(" + op.name + (" " + " ".join(parts) if parts else "") + ")"
        self.memo[id(t)] = (t, b)
        return b

    def variadic(self, t: list) -> list:
        op = OPS[t[0]]
        kids: list[list] = []
        for child in t[1:]:
            k = self.norm(child)
            head = k[0]
            if head == op.name:
                kids.extend(k[1:])
            elif head == op.unit:
                continue
            elif op.absorb is not None and head == op.absorb:
                return [op.absorb]
            else:
                kids.append(k)
        if not kids:
            return [op.unit]
        if len(kids) == 1:
            return kids[0]
        if op.commutative:
            kids.sort(key=self.body)
        return [op.name, *kids]

    def failplan(self, t: list) -> list:
        overrides: dict[str, Any] = {}
        cur = t
        while cur[0] == "override":
            reason = cur[2]
            if reason not in overrides:
                overrides[reason] = cur[3]
            cur = cur[1]
        base = cur[1]
        base_key = encode_param(base)
        out: list = ["always", base]
        for reason in sorted(overrides):
            action = overrides[reason]
            if encode_param(action) != base_key:
                out = ["override", out, reason, action]
        return out

    def norm(self, t: list) -> list:
        op = OPS[t[0]]
        if op.variadic is not None:
            return self.variadic(t)
        out: list = [op.name]
        for i, s in enumerate(op.ins, start=1):
            if s in OPERATIONAL_SORTS:
                out.append(self.norm(t[i]))
            elif s in _LISTS and type(t[i]) is dict:  # ``{}``, admitted as the empty list
                out.append([])
            else:
                out.append(t[i])
        name = op.name
        if name == "not":
            p = out[1]
            if p[0] == "not":
                return p[1]
            if p[0] == "top":
                return ["bot"]
            if p[0] == "bot":
                return ["top"]
        elif name == "scale":
            a, s = out[1], out[2]
            if a == 0 or s[0] == "zero":
                return ["zero"]
            if a == 1:
                return s
        elif name == "gate":
            p, s = out[1], out[2]
            if p[0] == "top":
                return s
            if p[0] == "bot" or s[0] == "zero":
                return ["zero"]
        elif name == "normalize":
            if out[1][0] == "normalize":
                return out[1]
        elif name in ("override", "always"):
            return self.failplan(out)
        return out


class _OverNormal(_Normalizer):
    """A pass over a term some of whose subterms are normal forms already: those stay as they are
    (normalisation is bottom-up and idempotent, so re-normalising them would rebuild them equal)."""

    __slots__ = ("normal",)

    def __init__(self, normal: list[list]) -> None:
        super().__init__()
        self.normal = {id(t): t for t in normal}

    def norm(self, t: list) -> list:
        if self.normal.get(id(t)) is t:
            return t
        return super().norm(t)


class _Memoized(_Normalizer):
    """A pass that reuses the normal forms of subterms seen before, found by their JSON text.

    ``texts`` maps ``id(subterm) -> (subterm, text)`` for the subterms admission looked up (see
    ``admission.check``; each entry holds its subterm, so the id is that subterm's); ``memo`` maps
    a text to ``[normal form, body or None, evaluated or UNSET]``. Normalisation is a function of
    the subterm alone, so a remembered normal form is the one a walk would build; it is shared,
    never changed. ``touched`` collects every entry this pass used or made, by the id of its
    normal form, for the evaluation that follows; ``made`` those without a body yet, which
    :meth:`encode` fills in from its own pass."""

    __slots__ = ("store", "texts", "touched", "made")

    def __init__(self, memo: Any, texts: dict[int, tuple[Any, bytes]]) -> None:
        super().__init__()
        self.store = memo
        self.texts = texts
        self.touched: dict[int, list] = {}
        self.made: list[list] = []

    def norm(self, t: list) -> list:
        seen = self.texts.get(id(t))
        if seen is None:
            return _Normalizer.norm(self, t)
        entry = self.store.get(seen[1])
        if entry is None:
            nf = _Normalizer.norm(self, t)
            entry = [nf, None, UNSET]
            self.store.put(seen[1], entry)
            self.made.append(entry)
        else:
            nf = entry[0]
            if entry[1] is not None:
                self.memo[id(nf)] = (nf, entry[1])
            else:
                self.made.append(entry)
        self.touched[id(nf)] = entry
        return nf

    def encode(self, nf: list) -> str:
        """The encoding of the pass's normal form; the new entries keep their bodies from it (one
        whose normal form a rewrite above it dropped gets its body the next time it is used)."""
        encoding = VERSION + ":" + self.body(nf)
        memo = self.memo
        for entry in self.made:
            done = memo.get(id(entry[0]))
            if done is not None:
                entry[1] = done[1]
        return encoding


UNSET: Any = object()
"""A memo entry's evaluated carrier before anything evaluated it."""


def normalize_and_encode_memo(t: list, memo: Any, texts: dict[int, tuple[Any, bytes]]) -> tuple[list, str, dict[int, list]]:
    """``normalize_and_encode`` with the subterm memo (see :class:`_Memoized`); also returns the
    memo entries used, by the id of their normal form."""
    n = _Memoized(memo, texts)
    nf = n.norm(t)
    return nf, n.encode(nf), n.touched


def constrained_normal_form(policy_nf: list, policy_encoding: str, envelope_nf: list,
                            bodies: dict[int, tuple[list, str]] | None = None) -> tuple[list, str] | None:
    """The normal form and encoding of a policy's filter ∧-ed with an envelope (``constrain``),
    from the policy's normal form and encoding and the envelope's normal form: only the new
    filter is normalised and encoded; the scorer, selector, transform and FailPlan, normal
    already, keep their terms and their stretch of the encoding. Equal, bit for bit, to
    ``normalize_and_encode(constrain(p, envelope))`` for any p whose normal form is
    ``policy_nf`` (a test holds it to that). None if the encoding is not the policy's. ``bodies``
    (``id(subterm) -> (subterm, its body)``) lends the bodies of subterms known already."""
    pred = policy_nf[1]
    n = _OverNormal([pred, envelope_nf])
    if bodies:
        n.memo.update(bodies)
    head = VERSION + ":(policy " + n.body(pred) + " "
    if policy_nf[0] != "policy" or not policy_encoding.startswith(head) or not policy_encoding.endswith(")"):
        return None
    filt = n.norm(["and", envelope_nf, pred])
    encoding = VERSION + ":(policy " + n.body(filt) + " " + policy_encoding[len(head):]
    return ["policy", filt, *policy_nf[2:]], encoding


def normalize(t: list) -> list:
    """The normal form of an admitted term (a new term; the input is not changed)."""
    return _Normalizer().norm(t)


def normalize_and_encode(t: list) -> tuple[list, str]:
    """Normal form and its canonical encoding, computed in one pass."""
    n = _Normalizer()
    nf = n.norm(t)
    return nf, VERSION + ":" + n.body(nf)


__all__ = ["constrained_normal_form", "normalize", "normalize_and_encode", "normalize_and_encode_memo", "encode_body"]
