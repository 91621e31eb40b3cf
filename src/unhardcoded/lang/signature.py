"""The signature of sigma-pol/v2, as data.

Each operation has an output sort and either a fixed list of argument sorts
(``ins``) or, for the associative ones, a single ``variadic`` sort with its unit
and absorbing constants. Whether an argument position holds a subterm or a
parameter is decided here, never by looking at the value. Admission, the normal
form, the encoder and the interpreter are all driven by this table.

Operational sorts (positions that take subterms): Pred, Scorer, Selector, Xform,
FailPlan, Policy. Every other sort names a parameter carried inline.

The table is append-only within the major version (docs/spec/sigma-pol.md §2):
an operation may be added, never removed or retyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERSION = "sigma-pol/v2"

OPERATIONAL_SORTS = frozenset({"Pred", "Scorer", "Selector", "Xform", "FailPlan", "Policy"})

PARAMETER_SORTS = frozenset({
    "Num",         # a finite number
    "Count",       # a positive integer
    "Rel",         # lt | le | eq | ne | ge | gt
    "NumField",    # a declared field of sort Num
    "BoolField",   # a declared field of sort Bool
    "Tier",        # a tier of the declared tier order
    "Family",      # model family (open namespace)
    "Provider",    # provider id (open namespace)
    "ServedBy",    # executed route: marketplace peer, or the provider of a direct route
    "Capability",  # capability flag name (open namespace)
    "ParamName",   # request parameter name
    "Scalar",      # number | string | boolean
    "Sym",         # name of a host-registered transform
    "FailReason",  # error kind
    "Action",      # failure action record
    "Recipe",      # list of filter directives
    "Chain",       # list of {provider, model} records
})

RELATIONS = ("lt", "le", "eq", "ne", "ge", "gt")

# The closed verb set of a FailPlan Action.
ACTIONS = frozenset({
    "retry_same",
    "next_candidate",
    "next_provider_same_model",
    "disable_provider",
    "abort",
})


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    out: str
    ins: tuple[str, ...] = ()
    variadic: str | None = None
    commutative: bool = False  # AC: children sorted in normal form
    unit: str | None = None
    absorb: str | None = None
    doc: str = field(default="", compare=False)

    @property
    def subterm_positions(self) -> tuple[bool, ...]:
        return tuple(s in OPERATIONAL_SORTS for s in self.ins)


def _op(name: str, out: str, *ins: str, doc: str = "") -> Operation:
    return Operation(name=name, out=out, ins=tuple(ins), doc=doc)


def _var(name: str, sort: str, *, ac: bool, unit: str, absorb: str | None = None, doc: str = "") -> Operation:
    return Operation(name=name, out=sort, variadic=sort, commutative=ac, unit=unit, absorb=absorb, doc=doc)


_TABLE: tuple[Operation, ...] = (
    # Pred: boolean algebra over candidate observations
    _op("top", "Pred", doc="always true"),
    _op("bot", "Pred", doc="always false"),
    _var("and", "Pred", ac=True, unit="top", absorb="bot", doc="all hold; the first failing child names the reason"),
    _var("or", "Pred", ac=True, unit="bot", absorb="top", doc="any holds"),
    _op("not", "Pred", "Pred", doc="negation"),
    _op("meets_req", "Pred", doc="the request's requirements block holds for the candidate"),
    _op("scope_matches", "Pred", doc="the candidate is global or scoped to the request's scope"),
    _op("is", "Pred", "BoolField", doc="a boolean field is true"),
    _op("cmp", "Pred", "NumField", "Rel", "Num", doc="a numeric field compared with a constant"),
    _op("tier_eq", "Pred", "Tier", doc="the candidate's tier is exactly this one"),
    _op("min_tier", "Pred", "Tier", doc="the candidate's tier is at least this one"),
    _op("family_eq", "Pred", "Family", doc="the candidate's model family"),
    _op("provider_eq", "Pred", "Provider", doc="the candidate's provider"),
    _op("served_by_eq", "Pred", "ServedBy", doc="the route that serves the call"),
    _op("has_cap", "Pred", "Capability", doc="a capability flag of the model"),
    # Scorer: population-relative numbers
    _op("zero", "Scorer", doc="0 for everyone"),
    _var("add", "Scorer", ac=True, unit="zero", doc="pointwise sum"),
    _op("scale", "Scorer", "Num", "Scorer", doc="multiply by a constant"),
    _op("gate", "Scorer", "Pred", "Scorer", doc="0 where the predicate fails, the score elsewhere"),
    _op("neg", "Scorer", "Scorer", doc="1 - score"),
    _op("normalize", "Scorer", "Scorer", doc="min-max over the population to [0, 1]"),
    _op("clamp", "Scorer", "Num", "Num", "Scorer", doc="bound to [lo, hi]"),
    _op("field", "Scorer", "NumField", doc="a numeric field's value"),
    _op("lit", "Scorer", "Num", doc="a constant"),
    # Selector: scored population -> ordering (the failover sequence)
    _op("argmax", "Selector", doc="score descending, ties in input order"),
    _op("ordered", "Selector", doc="input order"),
    _op("sample", "Selector", "Num", doc="seeded rank-geometric draw without replacement"),
    _op("chain", "Selector", "Chain", doc="an explicit priority list of provider/model pairs"),
    _op("top_k", "Selector", "Count", "Selector", doc="the first k of the inner order"),
    _op("prefer", "Selector", "Pred", "Selector",
        doc="stable partition of the inner order: candidates satisfying the predicate first"),
    # Xform: per-attempt request transforms
    _op("id", "Xform", doc="no change"),
    _var("seq", "Xform", ac=False, unit="id", doc="apply in order"),
    _op("set_param", "Xform", "ParamName", "Scalar", doc="set a request parameter"),
    _op("inject_seed", "Xform", "ParamName", doc="set a parameter to the request seed"),
    _op("clamp_param", "Xform", "ParamName", "Num", "Num", doc="bound a numeric parameter"),
    _op("jitter", "Xform", "ParamName", "Num", doc="seeded +/- noise on a parameter"),
    _op("filter_text", "Xform", "Recipe", doc="attach a seeded text-filter directive"),
    _op("filter_image", "Xform", "Recipe", doc="attach a seeded image-filter directive"),
    _op("custom", "Xform", "Sym", doc="a transform the host registered by name"),
    _op("when", "Xform", "Pred", "Xform", doc="apply when the candidate satisfies the predicate"),
    # FailPlan: error kind -> action
    _op("always", "FailPlan", "Action", doc="the base action"),
    _op("override", "FailPlan", "FailPlan", "FailReason", "Action", doc="a different action for one error kind"),
    # Policy: the single constructor
    _op("policy", "Policy", "Pred", "Scorer", "Selector", "Xform", "FailPlan",
        doc="filter, scorer, selector, transform, failure plan"),
)

OPS: dict[str, Operation] = {op.name: op for op in _TABLE}

# Operations of the public reference interpreter (genlayerlabs/llm-policy 74512eb);
# ``prefer`` comes from the reference host's engine.
REFERENCE_CORE_OPS = frozenset(OPS) - {"prefer"}


def ops_of_sort(sort: str) -> list[str]:
    return [op.name for op in _TABLE if op.out == sort]
