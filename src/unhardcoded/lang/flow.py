"""sigma-flow/v1: a bounded DAG of routed LLM steps, as data.

A flow is ``["flow", {id: node}]`` with exactly one ``input`` node, exactly one
``output`` node and any number of ``llm`` nodes. Edges are pull-style: a node
lists the ids it reads in ``inputs``. Every ``llm`` node carries a ``system``
prompt and a full sigma-pol/v2 ``policy``; ``template`` (with ``$1``, ``$2``...)
optionally overrides how its inputs are joined.

This module admits a flow (:func:`check_flow`), relabels it canonically
(:func:`normalize_flow`), encodes and identifies it, and provides the pure
pieces an executor needs (:func:`assemble`, :func:`schedule`). It performs no
call; running nodes is the host's business.

Our extension, ``guard`` (docs/spec/sigma-flow.md §6): an ``llm`` node may
carry ``"guard": {"abort_marker": "ABORT"}``. Flows without it encode exactly
as the reference encodes them; a host that predates the key refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from .admission import _text_ok, check
from .encoding import digest, encode_string, lane_fingerprint, short_id
from .errors import AdmissionError, FlowAdmissionError, PathPart
from .fields import Schema, default_schema
from .normalform import normalize_and_encode
from .ordering import reference_sort

VERSION = "sigma-flow/v1"
MAX_NODES = 256
MAX_IN_DEGREE = 32
KINDS = ("input", "llm", "output")
DEFAULT_ABORT_MARKER = "ABORT"

_KEYS_BY_KIND = {
    "input": frozenset({"kind", "inputs"}),
    "output": frozenset({"kind", "inputs"}),
    "llm": frozenset({"kind", "inputs", "system", "policy", "template", "guard"}),
}
_GUARD_KEYS = frozenset({"abort_marker"})


def _fail(code: str, message: str, path: list[PathPart]) -> FlowAdmissionError:
    return FlowAdmissionError(code, message, path)


def flow_nodes(flow: Any, path: tuple[PathPart, ...] = ()) -> dict[str, dict]:
    """The node map of a flow in either accepted shape, or a typed refusal."""
    p = list(path)
    if isinstance(flow, dict):
        extra = set(flow) - {"nodes", "version"}
        if extra or "nodes" not in flow:
            raise _fail("flow_shape", 'a flow is ["flow", {id: node}] or {"nodes": {id: node}}', p)
        if "version" in flow and flow["version"] != VERSION:
            raise _fail("flow_version", f"this host speaks {VERSION}", p + ["version"])
        nodes, p = flow["nodes"], p + ["nodes"]
    elif isinstance(flow, list) and len(flow) == 2 and flow[0] == "flow":
        nodes, p = flow[1], p + [1]
    else:
        raise _fail("flow_shape", 'a flow is ["flow", {id: node}]', p)
    if not isinstance(nodes, dict):
        raise _fail("flow_shape", "the node map is an object of id -> node", p)
    return nodes


def _nodes_path(flow: Any, path: tuple[PathPart, ...]) -> list[PathPart]:
    return list(path) + (["nodes"] if isinstance(flow, dict) else [1])


def check_flow(flow: Any, schema: Schema | None = None, *, customs: Collection[str] = (),
               path: tuple[PathPart, ...] = ()) -> dict[str, dict]:
    """Admit a flow; return its node map. Raise FlowAdmissionError on the first fault."""
    schema = schema or default_schema()
    nodes = flow_nodes(flow, path)
    base = _nodes_path(flow, path)
    ids = sorted(nodes)
    if not ids:
        raise _fail("flow_empty", "a flow has nodes", base)
    if len(ids) > MAX_NODES:
        raise _fail("flow_too_large", f"a flow has at most {MAX_NODES} nodes", base)

    n_input = n_output = 0
    for nid in ids:
        node = nodes[nid]
        np_ = base + [nid]
        if not _text_ok(nid):
            raise _fail("bad_node_id", "a node id is valid Unicode text", np_)
        if not isinstance(node, dict):
            raise _fail("node_shape", "a node is an object with a kind", np_)
        kind = node.get("kind")
        if kind not in KINDS:
            raise _fail("unknown_kind", f"unknown node kind {kind!r} (input, llm, output)", np_ + ["kind"])
        for key in node:
            if key not in _KEYS_BY_KIND[kind]:
                raise _fail("unknown_node_key", f"an {kind} node takes no key {key!r}", np_ + [key])
        inputs = node.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise _fail("bad_inputs", "inputs is a list of node ids", np_ + ["inputs"])
        if kind == "input":
            n_input += 1
            if inputs:
                raise _fail("input_has_inputs", "the input node takes no inputs", np_ + ["inputs"])
        elif kind == "output":
            n_output += 1
            if len(inputs) != 1:
                raise _fail("output_arity", "the output node takes exactly one input", np_ + ["inputs"])
        else:
            if not inputs:
                raise _fail("llm_needs_input", "an llm node reads at least one input", np_ + ["inputs"])
            if len(inputs) > MAX_IN_DEGREE:
                raise _fail("in_degree", f"an llm node reads at most {MAX_IN_DEGREE} inputs", np_ + ["inputs"])
            if not isinstance(node.get("system"), str) or not _text_ok(node["system"]):
                raise _fail("bad_system", "an llm node needs a string system prompt", np_ + ["system"])
            if "template" in node and (not isinstance(node["template"], str) or not _text_ok(node["template"])):
                raise _fail("bad_template", "template is a string", np_ + ["template"])
            if "policy" not in node:
                raise _fail("missing_policy", "an llm node carries a policy", np_)
            try:
                sort = check(node["policy"], schema, customs=customs, path=tuple(np_ + ["policy"]))
            except AdmissionError as exc:
                raise FlowAdmissionError(exc.code, "policy: " + exc.message, exc.parts) from None
            if sort != "Policy":
                raise _fail("sort_mismatch", f"a node policy is a full Policy term, not a {sort}", np_ + ["policy"])
            if "guard" in node:
                _check_guard(node["guard"], np_ + ["guard"])
        for i, pre in enumerate(inputs):
            if pre not in nodes:
                raise _fail("unknown_input", f"node {nid!r} reads unknown node {pre!r}", np_ + ["inputs", i])
    if n_input != 1:
        raise _fail("flow_endpoints", f"a flow has exactly one input node, found {n_input}", base)
    if n_output != 1:
        raise _fail("flow_endpoints", f"a flow has exactly one output node, found {n_output}", base)

    source = next(i for i in ids if nodes[i]["kind"] == "input")
    sink = next(i for i in ids if nodes[i]["kind"] == "output")
    for nid in ids:
        if sink in nodes[nid].get("inputs", []):
            raise _fail("output_referenced", f"the output node {sink!r} feeds nothing", base + [nid, "inputs"])

    succ: dict[str, list[str]] = {i: [] for i in ids}
    indeg = {i: 0 for i in ids}
    for nid in ids:
        for pre in nodes[nid].get("inputs", []):
            indeg[nid] += 1
            succ[pre].append(nid)
    queue = [i for i in ids if indeg[i] == 0]
    seen = 0
    while queue:
        nid = queue.pop()
        seen += 1
        for b in succ[nid]:
            indeg[b] -= 1
            if indeg[b] == 0:
                queue.append(b)
    if seen != len(ids):
        raise _fail("flow_cycle", "the flow has a cycle", base)

    preds = {i: nodes[i].get("inputs", []) for i in ids}
    from_in = _reach(source, succ)
    to_out = _reach(sink, preds)
    for nid in ids:
        if nid not in from_in or nid not in to_out:
            raise _fail("flow_orphan", f"node {nid!r} is not on a path from input to output", base + [nid])
    return nodes


def _check_guard(guard: Any, path: list[PathPart]) -> None:
    if not isinstance(guard, dict):
        raise _fail("bad_guard", 'guard is an object such as {"abort_marker": "ABORT"}', path)
    for key, v in guard.items():
        if key not in _GUARD_KEYS:
            raise _fail("bad_guard", f"unknown guard key {key!r}", path + [key])
        if not isinstance(v, str) or not v.strip() or not _text_ok(v):
            raise _fail("bad_guard", "abort_marker is a non-empty string", path + [key])


def _reach(start: str, edges: Mapping[str, list[str]]) -> set[str]:
    hit, stack = {start}, [start]
    while stack:
        for nb in edges.get(stack.pop(), []):
            if nb not in hit:
                hit.add(nb)
                stack.append(nb)
    return hit


# --------------------------------------------------------------------------
# normal form, encoding, identity
# --------------------------------------------------------------------------

def _guard_text(guard: Mapping[str, Any]) -> str:
    return "{" + encode_string("abort_marker") + ":" + encode_string(guard["abort_marker"]) + "}"


@dataclass(frozen=True, slots=True)
class NormalFlow:
    """A flow in canonical form, with its identity."""

    term: list           # ["flow", {"n0": {...}, ...}]
    encoding: str
    fingerprint: str
    identity: str
    relabel: dict[str, str]  # submitted id -> canonical id

    @property
    def short_id(self) -> str:
        return short_id(self.identity, "flow_")

    @property
    def nodes(self) -> dict[str, dict]:
        return self.term[1]

    @property
    def order(self) -> list[str]:
        return sorted(self.term[1], key=lambda i: int(i[1:]))

    def describe(self) -> dict[str, Any]:
        return {"version": VERSION, "flow_ir": self.term, "encoding": self.encoding,
                "fingerprint": self.fingerprint, "identity": self.identity, "short_id": self.short_id}


def normalize_flow(flow: Any, path: tuple[PathPart, ...] = ()) -> NormalFlow:
    """Canonical relabelling of an admitted flow (ids become n0, n1, ...)."""
    nodes = flow_nodes(flow, path)
    ids = sorted(nodes)
    policy_of: dict[str, tuple[list, str]] = {}
    content: dict[str, str] = {}
    for nid in ids:
        node = nodes[nid]
        kind = node["kind"]
        if kind == "llm":
            nf, enc = normalize_and_encode(node["policy"])
            policy_of[nid] = (nf, enc)
            key = "\0".join(("llm", node["system"], enc, node.get("template", "")))
            if "guard" in node:
                key += "\0guard=" + _guard_text(_guard_defaults(node["guard"]))
            content[nid] = key
        else:
            content[nid] = kind

    newid: dict[str, str] = {}

    def keyof(nid: str) -> str:
        return content[nid] + "\x01" + ",".join(newid[p] for p in nodes[nid].get("inputs", []))

    def less(x: str, y: str) -> bool:
        return keyof(x) < keyof(y)

    remaining = list(ids)
    count = 0
    while remaining:
        ready = [i for i in remaining if all(p in newid for p in nodes[i].get("inputs", []))]
        # Exact duplicates tie; the reference's quicksort decides which comes first.
        pick = reference_sort(ready, less)[0]
        newid[pick] = f"n{count}"
        count += 1
        remaining.remove(pick)

    out: dict[str, dict] = {}
    for nid in ids:
        node = nodes[nid]
        nn: dict[str, Any] = {"kind": node["kind"]}
        if node["kind"] != "input":
            nn["inputs"] = [newid[p] for p in node["inputs"]]
        if node["kind"] == "llm":
            nn["system"] = node["system"]
            nn["policy"] = policy_of[nid][0]
            if "template" in node:
                nn["template"] = node["template"]
            if "guard" in node:
                nn["guard"] = _guard_defaults(node["guard"])
        out[newid[nid]] = nn

    segs = []
    for cid in sorted(out, key=lambda i: int(i[1:])):
        node = out[cid]
        parts = [node["kind"], cid]
        if node["kind"] == "llm":
            src = next(k for k, v in newid.items() if v == cid)
            parts.append("system=" + encode_string(node["system"]))
            parts.append("policy=" + policy_of[src][1])
            if "template" in node:
                parts.append("template=" + encode_string(node["template"]))
            if "guard" in node:
                parts.append("guard=" + _guard_text(node["guard"]))
        if "inputs" in node:
            parts.append("inputs=[" + ",".join(node["inputs"]) + "]")
        segs.append("(" + " ".join(parts) + ")")
    encoding = VERSION + ":(" + " ".join(segs) + ")"
    return NormalFlow(["flow", out], encoding, lane_fingerprint(encoding), digest(encoding), newid)


def _guard_defaults(guard: Mapping[str, Any]) -> dict[str, str]:
    return {"abort_marker": guard.get("abort_marker", DEFAULT_ABORT_MARKER)}


def admit_flow(flow: Any, schema: Schema | None = None, *, customs: Collection[str] = (),
               path: tuple[PathPart, ...] = ()) -> NormalFlow:
    """check + normalise + identify, in one call."""
    check_flow(flow, schema, customs=customs, path=path)
    return normalize_flow(flow, path)


# --------------------------------------------------------------------------
# pure pieces of execution
# --------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$(\d+)")


def assemble(node: Mapping[str, Any], texts: list[str]) -> str:
    """A node's user message from its inputs' outputs, in input order.

    A template (even an empty one) substitutes ``$n`` with the n-th input's text
    (empty when there is none); otherwise one input passes through and several
    become ``[input i]`` sections separated by a blank line.
    """
    template = node.get("template")
    if template is not None:
        def sub(m: re.Match[str]) -> str:
            n = int(m.group(1))
            return texts[n - 1] if 1 <= n <= len(texts) else ""
        return _PLACEHOLDER.sub(sub, template)
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"[input {i}]\n{t}" for i, t in enumerate(texts, start=1))


def guard_verdict(node: Mapping[str, Any], answer: str) -> str | None:
    """For a guard node: the abort reason if its answer aborts the flow, else None.

    The answer aborts when it starts with the marker as a word
    (case-insensitive, followed by the end, a space or punctuation); the
    reason is what follows, stripped of a leading ``:`` or ``-``.
    """
    guard = node.get("guard")
    if guard is None:
        return None
    marker = guard.get("abort_marker", DEFAULT_ABORT_MARKER)
    text = answer.strip()
    if not text.lower().startswith(marker.lower()):
        return None
    rest = text[len(marker):]
    if rest and not (rest[0].isspace() or rest[0] in ":-.,;!"):
        return None  # "Abortion..." is not "ABORT"
    reason = rest.strip().lstrip(":-").strip()
    return reason or "aborted by guard"


def schedule(nodes: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, dict[str, list[str]]]:
    """(input id, output id, successors) of an admitted node map."""
    source = next(i for i, n in nodes.items() if n["kind"] == "input")
    sink = next(i for i, n in nodes.items() if n["kind"] == "output")
    succ: dict[str, list[str]] = {i: [] for i in nodes}
    for nid, node in nodes.items():
        for pre in node.get("inputs", []):
            succ[pre].append(nid)
    return source, sink, succ


def topological_order(nodes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Kahn's order, ready ids taken in sorted order (deterministic)."""
    indeg = {i: len(n.get("inputs", [])) for i, n in nodes.items()}
    _, _, succ = schedule(nodes)
    ready = sorted(i for i, d in indeg.items() if d == 0)
    order: list[str] = []
    while ready:
        nid = ready.pop(0)
        order.append(nid)
        for b in succ[nid]:
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
        ready.sort()
    return order


def billable_runs(nodes: Mapping[str, Mapping[str, Any]]) -> int:
    """One run per started block of five llm nodes."""
    n = sum(1 for node in nodes.values() if node["kind"] == "llm")
    return -(-n // 5)
