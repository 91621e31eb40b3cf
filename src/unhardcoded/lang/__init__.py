"""The pure core: sigma-pol/v2 policies and sigma-flow/v1 flows.

No I/O, no network, no clock. Everything here is importable and testable
without a server or an event loop.

    >>> from unhardcoded.lang import compile_policy
    >>> c = compile_policy(["policy", ["cmp", "price_in", "le", 5], ["zero"],
    ...                     ["argmax"], ["id"], ["always", {"action": "next_candidate"}]])
    >>> c.encoding
    'sigma-pol/v2:(policy (cmp "price_in" "le" 5) (zero) (argmax) (id) (always {"action":"next_candidate"}))'
"""

from .admission import MAX_DEPTH, MAX_NODES, check, check_sort
from .compiler import Compiled, Compiler, compile_policy, compile_term, constrain, default_compiler
from .encoding import digest, encode, encode_number, lane_fingerprint, short_id
from .errors import AdmissionError, EvaluationError, FlowAdmissionError, JSONError, LangError
from .fields import CORE_FIELDS, DEFAULT_TIER_ORDER, FieldDecl, Schema, default_schema
from .flow import NormalFlow, admit_flow, assemble, check_flow, guard_verdict, normalize_flow
from .interpreter import Plan, Policy, Ranked, Rejection, classify, default_algebra, evaluate, served_by
from .normalform import normalize, normalize_and_encode
from .requirements import derive_needs, meets_requirements
from .signature import ACTIONS, OPS, VERSION
from .strictjson import loads as loads_strict

FLOW_VERSION = "sigma-flow/v1"

__all__ = [
    "ACTIONS", "AdmissionError", "CORE_FIELDS", "Compiled", "Compiler", "DEFAULT_TIER_ORDER",
    "EvaluationError", "FLOW_VERSION", "FieldDecl", "FlowAdmissionError", "JSONError", "LangError",
    "MAX_DEPTH", "MAX_NODES", "NormalFlow", "OPS", "Plan", "Policy", "Ranked", "Rejection", "Schema",
    "VERSION", "admit_flow", "assemble", "check", "check_flow", "check_sort", "classify",
    "compile_policy", "compile_term", "constrain", "default_algebra", "default_compiler",
    "default_schema", "derive_needs", "digest", "encode", "encode_number", "evaluate",
    "guard_verdict", "lane_fingerprint", "loads_strict", "meets_requirements", "normalize",
    "normalize_and_encode", "normalize_flow", "served_by", "short_id",
]
