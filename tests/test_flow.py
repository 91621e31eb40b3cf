"""sigma-flow/v1: admission with paths, the canonical relabelling and identity,
and the pure pieces of execution (SIGMA-FLOW §3-§5, plus our ``guard`` key).

Canonical encodings below are written by hand from §4: the input node is n0,
then ready nodes are taken smallest by (content key, canonical inputs), the
output last.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.lang import (
    FieldDecl, FlowAdmissionError, LangError, Schema, admit_flow, assemble, check_flow, guard_verdict, normalize_flow,
)
from unhardcoded.lang.encoding import encode_string, lane_fingerprint
from unhardcoded.lang.flow import MAX_IN_DEGREE, MAX_NODES, billable_runs, topological_order

from . import strategies as S

NC = {"action": "next_candidate"}
POLICY = ["policy", ["meets_req"], ["field", "context"], ["argmax"], ["id"], ["always", NC]]
POLICY_ENC = 'sigma-pol/v2:(policy (meets_req) (field "context") (argmax) (id) (always {"action":"next_candidate"}))'


def llm(system: str, *inputs: str, **extra) -> dict:
    return {"kind": "llm", "system": system, "policy": copy.deepcopy(POLICY), "inputs": list(inputs), **extra}


def moa(u="u", a="a", b="b", f="f", out="out") -> list:
    """Mixture of agents: u -> {a, b} -> f -> out."""
    return ["flow", {
        u: {"kind": "input"},
        a: llm("Answer concisely.", u),
        b: llm("Answer rigorously, show steps.", u),
        f: llm("Synthesize the single best answer from the drafts.", a, b, template="Draft A:\n$1\n\nDraft B:\n$2"),
        out: {"kind": "output", "inputs": [f]},
    }]


def chain_flow(n_llm: int) -> list:
    nodes: dict = {"u": {"kind": "input"}}
    prev = "u"
    for i in range(n_llm):
        nodes[f"a{i}"] = llm("s", prev)
        prev = f"a{i}"
    nodes["out"] = {"kind": "output", "inputs": [prev]}
    return ["flow", nodes]


def refused(flow, schema=None, path=()) -> FlowAdmissionError:
    with pytest.raises(FlowAdmissionError) as info:
        check_flow(flow, schema, path=path)
    err = info.value
    assert isinstance(err, LangError) and err.kind == "invalid_flow"
    return err


def assert_refused(flow, code: str, path: str, schema=None) -> None:
    err = refused(flow, schema)
    assert (err.code, err.path) == (code, path), err


def with_nodes(**changes) -> list:
    """The MOA flow with some nodes replaced (None deletes)."""
    f = moa()
    for k, v in changes.items():
        if v is None:
            del f[1][k]
        else:
            f[1][k] = v
    return f


# --------------------------------------------------------------------------
# admission
# --------------------------------------------------------------------------

def test_a_fusion_is_admitted() -> None:
    nodes = check_flow(moa())
    assert sorted(nodes) == ["a", "b", "f", "out", "u"]


def test_the_smallest_flow() -> None:
    f = ["flow", {"u": {"kind": "input", "inputs": []}, "out": {"kind": "output", "inputs": ["u"]}}]
    assert check_flow(f)
    assert admit_flow(f).encoding == "sigma-flow/v1:((input n0) (output n1 inputs=[n0]))"


@pytest.mark.parametrize("flow, path", [
    ("flow", "$"), (None, "$"), ([], "$"), (["flow"], "$"), (["flw", {}], "$"), (["flow", {}, {}], "$"),
    ({"node": {}}, "$"), ({"nodes": {}, "extra": 1}, "$"),
    (["flow", []], "$[1]"), (["flow", None], "$[1]"), ({"nodes": ["u"]}, "$.nodes"),
])
def test_flow_shape(flow, path: str) -> None:
    assert_refused(flow, "flow_shape", path)


def test_flow_version() -> None:
    assert check_flow({"version": "sigma-flow/v1", "nodes": moa()[1]})
    assert_refused({"version": "sigma-flow/v2", "nodes": moa()[1]}, "flow_version", "$.version")


def test_flow_empty() -> None:
    assert_refused(["flow", {}], "flow_empty", "$[1]")
    assert_refused({"nodes": {}}, "flow_empty", "$.nodes")


def test_flow_too_large() -> None:
    assert len(chain_flow(MAX_NODES - 2)[1]) == 256
    assert check_flow(chain_flow(MAX_NODES - 2))
    assert admit_flow(chain_flow(MAX_NODES - 2)).encoding.endswith("(output n255 inputs=[n254]))")
    assert len(chain_flow(MAX_NODES - 1)[1]) == 257
    assert_refused(chain_flow(MAX_NODES - 1), "flow_too_large", "$[1]")


@pytest.mark.parametrize("node", ["llm", None, ["kind", "llm"], 5])
def test_node_shape(node) -> None:
    f = moa()
    f[1]["b"] = node
    assert_refused(f, "node_shape", "$[1].b")


@pytest.mark.parametrize("kind", ["tool", "LLM", None, 1])
def test_unknown_kind(kind) -> None:
    assert_refused(with_nodes(b={"kind": kind, "inputs": ["u"]}), "unknown_kind", "$[1].b.kind")
    assert_refused(with_nodes(b={"inputs": ["u"]}), "unknown_kind", "$[1].b.kind")


@pytest.mark.parametrize("node_id, node, key", [
    ("u", {"kind": "input", "system": "x"}, "system"),
    ("out", {"kind": "output", "inputs": ["f"], "policy": POLICY}, "policy"),
    ("out", {"kind": "output", "inputs": ["f"], "template": "$1"}, "template"),
    ("a", llm("x", "u", model="gpt"), "model"),
    ("a", llm("x", "u", Guard={}), "Guard"),
    ("u", {"kind": "input", "guard": {}}, "guard"),                    # guard belongs to llm nodes only
])
def test_unknown_node_key(node_id, node, key) -> None:
    assert_refused(with_nodes(**{node_id: node}), "unknown_node_key", f"$[1].{node_id}.{key}")


@pytest.mark.parametrize("inputs", ["u", None, {"u": 1}, [1], ["u", None], [["u"]]])
def test_bad_inputs(inputs) -> None:
    node = llm("Answer concisely.")
    node["inputs"] = inputs
    assert_refused(with_nodes(a=node), "bad_inputs", "$[1].a.inputs")


def test_input_has_inputs() -> None:
    assert_refused(with_nodes(u={"kind": "input", "inputs": ["a"]}), "input_has_inputs", "$[1].u.inputs")


@pytest.mark.parametrize("node", [{"kind": "output"}, {"kind": "output", "inputs": []},
                                  {"kind": "output", "inputs": ["f", "a"]}])
def test_output_arity(node) -> None:
    assert_refused(with_nodes(out=node), "output_arity", "$[1].out.inputs")


def test_llm_needs_input() -> None:
    assert_refused(with_nodes(a=llm("x")), "llm_needs_input", "$[1].a.inputs")
    node = llm("x")
    del node["inputs"]
    assert_refused(with_nodes(a=node), "llm_needs_input", "$[1].a.inputs")


def test_in_degree() -> None:
    def fan(n: int) -> list:
        nodes: dict = {"u": {"kind": "input"}}
        for i in range(n):
            nodes[f"d{i:02}"] = llm(f"draft {i}", "u")
        nodes["f"] = llm("fuse", *[f"d{i:02}" for i in range(n)])
        nodes["out"] = {"kind": "output", "inputs": ["f"]}
        return ["flow", nodes]
    assert MAX_IN_DEGREE == 32
    assert check_flow(fan(32))
    assert_refused(fan(33), "in_degree", "$[1].f.inputs")
    # repeated inputs count too
    assert check_flow(with_nodes(a=llm("x", *["u"] * 32)))
    assert_refused(with_nodes(a=llm("x", *["u"] * 33)), "in_degree", "$[1].a.inputs")


@pytest.mark.parametrize("system", [None, 5, ["x"], {"text": "x"}])
def test_bad_system(system) -> None:
    node = llm("x", "u")
    node["system"] = system
    assert_refused(with_nodes(a=node), "bad_system", "$[1].a.system")
    del node["system"]
    assert_refused(with_nodes(a=node), "bad_system", "$[1].a.system")


@pytest.mark.parametrize("template", [None, 1, ["$1"], False])
def test_bad_template(template) -> None:
    assert_refused(with_nodes(a=llm("x", "u", template=template)), "bad_template", "$[1].a.template")


def test_missing_policy() -> None:
    node = llm("x", "u")
    del node["policy"]
    assert_refused(with_nodes(a=node), "missing_policy", "$[1].a")


@pytest.mark.parametrize("policy, code, path", [
    (["policy", ["frob"], ["zero"], ["argmax"], ["id"], ["always", NC]], "unknown_op", "$[1].a.policy[1][0]"),
    (["policy", ["top"], ["scale", "x", ["zero"]], ["argmax"], ["id"], ["always", NC]], "bad_number",
     "$[1].a.policy[2][1]"),
    (["policy", ["top"], ["zero"], ["argmax"], ["id"], ["always", {"action": "explode"}]], "bad_action",
     "$[1].a.policy[5][1].action"),
    (["policy", ["cmp", "bench_x", "le", 1], ["zero"], ["argmax"], ["id"], ["always", NC]], "undeclared_field",
     "$[1].a.policy[1][1]"),
    (None, "term_shape", "$[1].a.policy"),
    ("policy", "term_shape", "$[1].a.policy"),
    (["top"], "sort_mismatch", "$[1].a.policy"),                       # a Pred is not a Policy
    (["policy"], "arity", "$[1].a.policy"),
])
def test_policy_refusals_carry_the_nested_path(policy, code, path) -> None:
    err = refused(with_nodes(a=llm("x", "u", policy=policy)))
    assert (err.code, err.path) == (code, path)
    assert err.message.startswith("policy") or code == "sort_mismatch"


def test_policy_refusal_under_the_object_form_and_a_prefix() -> None:
    f = {"nodes": moa()[1]}
    f["nodes"]["a"]["policy"] = ["policy", ["top"], ["zero"], ["nope"], ["id"], ["always", NC]]
    err = refused(f, path=("flow_ir",))
    assert (err.code, err.path) == ("unknown_op", "$.flow_ir.nodes.a.policy[3][0]")


def test_node_policies_see_the_host_schema() -> None:
    f = with_nodes(a=llm("x", "u", policy=["policy", ["cmp", "bench_x", "le", 1], ["zero"], ["argmax"], ["id"],
                                           ["always", NC]]))
    assert_refused(f, "undeclared_field", "$[1].a.policy[1][1]")
    assert check_flow(f, Schema([FieldDecl("bench_x", "Num", 0)]))
    g = with_nodes(a=llm("x", "u", policy=["policy", ["top"], ["zero"], ["argmax"], ["custom", "c"], ["always", NC]]))
    assert refused(g).code == "unknown_custom"
    assert check_flow(g, customs={"c"})


def test_unknown_input() -> None:
    assert_refused(with_nodes(f=llm("fuse", "a", "zz")), "unknown_input", "$[1].f.inputs[1]")
    assert_refused(with_nodes(out={"kind": "output", "inputs": ["nope"]}), "unknown_input", "$[1].out.inputs[0]")


@pytest.mark.parametrize("changes", [
    {"u2": {"kind": "input"}},                                                   # two inputs
    {"out2": {"kind": "output", "inputs": ["f"]}},                               # two outputs
    {"u": None, "a": llm("x", "b"), "b": llm("y", "a")},                         # no input (a 2-cycle instead)
    {"out": None},                                                                # no output
])
def test_flow_endpoints(changes) -> None:
    assert_refused(with_nodes(**changes), "flow_endpoints", "$[1]")


def test_output_referenced() -> None:
    f = with_nodes(g=llm("after", "out"))
    assert_refused(f, "output_referenced", "$[1].g.inputs")


@pytest.mark.parametrize("changes", [
    {"a": llm("x", "u", "f")},                           # f feeds back into a
    {"a": llm("x", "a")},                                # a self-loop
    {"a": llm("x", "u", "b"), "b": llm("y", "a")},
])
def test_flow_cycle(changes) -> None:
    assert_refused(with_nodes(**changes), "flow_cycle", "$[1]")


def test_flow_orphan_dead_end() -> None:
    assert_refused(with_nodes(z=llm("orphan", "u")), "flow_orphan", "$[1].z")
    # a dead-end chain is reported at its first node in id order
    assert_refused(with_nodes(y=llm("p", "u"), x=llm("q", "y")), "flow_orphan", "$[1].x")
    # the input itself can be the dead end's only neighbour; the output may read the input directly
    f = ["flow", {"u": {"kind": "input"}, "a": llm("x", "u"), "out": {"kind": "output", "inputs": ["u"]}}]
    assert_refused(f, "flow_orphan", "$[1].a")


def test_flow_orphan_unreachable() -> None:
    # Every llm node reads at least one existing node, so a node no path from the input
    # reaches must sit on a cycle: that is refused first, as a cycle.
    f = with_nodes(x=llm("p", "y"), y=llm("q", "x"))
    assert_refused(f, "flow_cycle", "$[1]")
    # Reading a node that is not on an input -> output path does not put one on it.
    f = with_nodes(x=llm("p", "u"), y=llm("q", "x"))
    assert_refused(f, "flow_orphan", "$[1].x")


@pytest.mark.parametrize("guard, path", [
    ("ABORT", "$[1].a.guard"), (None, "$[1].a.guard"), (["ABORT"], "$[1].a.guard"),
    ({"marker": "X"}, "$[1].a.guard.marker"),
    ({"abort_marker": ""}, "$[1].a.guard.abort_marker"),
    ({"abort_marker": "   "}, "$[1].a.guard.abort_marker"),
    ({"abort_marker": 5}, "$[1].a.guard.abort_marker"),
    ({"abort_marker": None}, "$[1].a.guard.abort_marker"),
])
def test_bad_guard(guard, path: str) -> None:
    assert_refused(with_nodes(a=llm("x", "u", guard=guard)), "bad_guard", path)


def test_first_fault_in_sorted_id_order() -> None:
    f = with_nodes(b={"kind": "tool"}, a=llm(5, "u"))     # "a" sorts before "b"
    assert_refused(f, "bad_system", "$[1].a.system")


def test_ids_that_need_quoting() -> None:
    f = moa(a="draft one")
    f[1]["draft one"]["template"] = 3
    assert_refused(f, "bad_template", '$[1]["draft one"].template')


def test_object_form() -> None:
    obj = {"nodes": moa()[1]}
    assert check_flow(obj) == moa()[1]
    assert admit_flow(obj).encoding == admit_flow(moa()).encoding == normalize_flow(obj).encoding
    broken = {"nodes": {**moa()[1], "z": llm("orphan", "u")}}
    assert_refused(broken, "flow_orphan", "$.nodes.z")
    assert_refused({"nodes": {**moa()[1], "b": {"kind": "x"}}}, "unknown_kind", "$.nodes.b.kind")


def test_admission_does_not_touch_the_flow() -> None:
    f = moa()
    before = copy.deepcopy(f)
    admit_flow(f)
    assert f == before


# --------------------------------------------------------------------------
# normal form and identity
# --------------------------------------------------------------------------

MOA_ENCODING = (
    "sigma-flow/v1:("
    "(input n0) "
    '(llm n1 system="Answer concisely." policy=' + POLICY_ENC + " inputs=[n0]) "
    '(llm n2 system="Answer rigorously, show steps." policy=' + POLICY_ENC + " inputs=[n0]) "
    '(llm n3 system="Synthesize the single best answer from the drafts." policy=' + POLICY_ENC
    + ' template="Draft A:\\n$1\\n\\nDraft B:\\n$2" inputs=[n1,n2]) '
    "(output n4 inputs=[n3]))"
)


def test_moa_canonical_encoding_by_hand() -> None:
    # a and b are both ready after n0; "Answer c" < "Answer r", so a is n1.
    nf = admit_flow(moa())
    assert nf.encoding == MOA_ENCODING
    assert nf.relabel == {"u": "n0", "a": "n1", "b": "n2", "f": "n3", "out": "n4"}
    assert nf.order == ["n0", "n1", "n2", "n3", "n4"]
    assert nf.identity == hashlib.sha256(MOA_ENCODING.encode("utf-8")).hexdigest()
    assert nf.short_id == "flow_" + nf.identity[:6]
    assert nf.fingerprint == lane_fingerprint(MOA_ENCODING)
    assert nf.nodes["n3"] == {"kind": "llm", "inputs": ["n1", "n2"], "system": moa()[1]["f"]["system"],
                              "policy": POLICY, "template": "Draft A:\n$1\n\nDraft B:\n$2"}
    assert nf.nodes["n0"] == {"kind": "input"}
    d = nf.describe()
    assert (d["version"], d["encoding"], d["identity"]) == ("sigma-flow/v1", MOA_ENCODING, nf.identity)


def test_labels_do_not_matter() -> None:
    a = admit_flow(moa())
    b = admit_flow(moa(u="start", a="left", b="right", f="join", out="end"))
    c = admit_flow(moa(u="n4", a="n2", b="n1", f="n0", out="n3"))        # labels that look canonical
    assert a.encoding == b.encoding == c.encoding and a.identity == b.identity == c.identity
    assert c.relabel == {"n4": "n0", "n2": "n1", "n1": "n2", "n0": "n3", "n3": "n4"}


def test_swapping_the_drafters_prompts_changes_identity() -> None:
    f = moa()
    f[1]["a"]["system"], f[1]["b"]["system"] = f[1]["b"]["system"], f[1]["a"]["system"]
    assert admit_flow(f).identity != admit_flow(moa()).identity


def test_node_policies_are_normalized() -> None:
    f = moa()
    f[1]["a"]["policy"] = ["policy", ["and", ["meets_req"], ["top"]], ["add", ["field", "context"], ["zero"]],
                           ["argmax"], ["seq", ["id"]], ["override", ["always", NC], "timeout", NC]]
    nf = admit_flow(f)
    assert nf.encoding == MOA_ENCODING
    assert nf.nodes["n1"]["policy"] == POLICY


def test_input_order_is_semantic() -> None:
    f = moa()
    f[1]["f"]["inputs"] = ["b", "a"]
    assert admit_flow(f).identity != admit_flow(moa()).identity
    assert "inputs=[n2,n1]" in admit_flow(f).encoding
    # swapping two equal entries is no change at all
    g = with_nodes(f=llm("fuse", "a", "a", "b"))
    h = copy.deepcopy(g)
    ins = h[1]["f"]["inputs"]
    ins[0], ins[1] = ins[1], ins[0]
    assert admit_flow(g).identity == admit_flow(h).identity
    assert "inputs=[n1,n1,n2]" in admit_flow(g).encoding


def test_template_and_guard_are_encoded_only_when_present() -> None:
    plain = admit_flow(with_nodes(f=llm("fuse", "a", "b")))
    assert "template=" not in plain.encoding and "guard=" not in plain.encoding
    empty = admit_flow(with_nodes(f=llm("fuse", "a", "b", template="")))
    assert 'template="" inputs=[n1,n2]' in empty.encoding
    assert empty.identity != plain.identity
    assert "guard=" not in admit_flow(moa()).encoding
    guarded = admit_flow(with_nodes(a=llm("Answer concisely.", "u", guard={})))
    explicit = admit_flow(with_nodes(a=llm("Answer concisely.", "u", guard={"abort_marker": "ABORT"})))
    stop = admit_flow(with_nodes(a=llm("Answer concisely.", "u", guard={"abort_marker": "STOP"})))
    assert guarded.encoding == explicit.encoding                        # the default marker is written out
    assert ' guard={"abort_marker":"ABORT"} inputs=[n0])' in guarded.encoding
    assert len({guarded.identity, stop.identity, admit_flow(moa()).identity}) == 3
    assert guarded.nodes[guarded.relabel["a"]]["guard"] == {"abort_marker": "ABORT"}


def test_strings_use_the_policy_escaping() -> None:
    f = with_nodes(a=llm('Say "hi"\n\tand \\ go é', "u"))
    assert "system=" + encode_string('Say "hi"\n\tand \\ go é') in admit_flow(f).encoding
    assert 'system="Say \\"hi\\"\\n\\tand \\\\ go é"' in admit_flow(f).encoding


def test_ties_are_broken_by_submitted_id_order() -> None:
    # KNOWN SPEC DEFECT (reported; the reference behaves the same, so it is kept for
    # conformance): the content key writes an absent template as "", so a node without a
    # template and one with template "" tie, and the tie goes to the smaller submitted id.
    # A pure renaming (x <-> y) therefore changes the identity.
    def f(plain: str, empty: str) -> list:
        return ["flow", {"u": {"kind": "input"}, plain: llm("s", "u"), empty: llm("s", "u", template=""),
                         "g": llm("syn", plain, empty), "out": {"kind": "output", "inputs": ["g"]}}]
    one, two = admit_flow(f("x", "y")), admit_flow(f("y", "x"))
    assert one.relabel["x"] == two.relabel["x"] == "n1"
    assert one.identity != two.identity
    # Exact duplicates read in a different order downstream: the same tie-break.
    def g(first: str, second: str) -> list:
        return ["flow", {"u": {"kind": "input"}, "x": llm("s", "u"), "y": llm("s", "u"),
                         "g": llm("syn", first, second), "out": {"kind": "output", "inputs": ["g"]}}]
    one, two = admit_flow(g("x", "y")), admit_flow(g("y", "x"))
    assert one.relabel["x"] == two.relabel["x"] == "n1"
    assert one.identity != two.identity


def test_renormalizing_a_large_flow_with_ties_is_not_idempotent() -> None:
    # KNOWN SPEC DEFECT (reported; the reference behaves the same, so it is kept for
    # conformance): ready nodes are listed in *string* order of their ids, so once canonical
    # ids reach n10 ("n10" < "n2"), tied duplicates are taken in a different order when the
    # normal form is normalized again, and the identity of a re-submitted normal form moves.
    nodes: dict = {"u": {"kind": "input"}}
    drafts = [f"d{i}" for i in range(11)]
    for d in drafts:
        nodes[d] = llm("s", "u")
    nodes["z"] = llm("syn", *drafts)
    nodes["out"] = {"kind": "output", "inputs": ["z"]}
    once = admit_flow(["flow", nodes])
    # ties go by submitted id in string order: d0 d1 d10 d2 ... d9 become n1 n2 n3 n4 ... n11
    assert [once.relabel[d] for d in drafts] == ["n1", "n2"] + [f"n{i}" for i in range(4, 12)] + ["n3"]
    twice = admit_flow(once.term)
    assert twice.encoding != once.encoding


# --------------------------------------------------------------------------
# properties of the normal form
# --------------------------------------------------------------------------

def rename(flow: list, mapping: dict) -> list:
    out = {}
    for nid, node in flow[1].items():
        n = copy.deepcopy(node)
        if "inputs" in n:
            n["inputs"] = [mapping[i] for i in n["inputs"]]
        out[mapping[nid]] = n
    return ["flow", out]


new_ids = st.text(alphabet=st.sampled_from(list("abnz019é_- ")), min_size=1, max_size=4)


@settings(max_examples=150)
@given(S.flow(guards=True, distinct=True), st.data())
def test_renaming_keeps_the_identity(flow, data) -> None:
    ids = list(flow[1])
    names = data.draw(st.lists(new_ids, min_size=len(ids), max_size=len(ids), unique=True))
    renamed = rename(flow, dict(zip(ids, names)))
    # the insertion order of the node map does not matter either
    shuffled = ["flow", dict(data.draw(st.permutations(list(renamed[1].items()))))]
    a, b = admit_flow(flow, S.SCHEMA), admit_flow(shuffled, S.SCHEMA)
    assert (a.encoding, a.identity, a.fingerprint) == (b.encoding, b.identity, b.fingerprint)


@settings(max_examples=150)
@given(S.flow(guards=True))
def test_normalizing_is_idempotent(flow) -> None:
    nf = admit_flow(flow, S.SCHEMA)
    again = admit_flow(nf.term, S.SCHEMA)
    assert again.encoding == nf.encoding and again.term == nf.term
    assert again.relabel == {k: k for k in nf.nodes}


@settings(max_examples=40)
@given(S.flow(max_llm=len(S.NODE_IDS), guards=True, distinct=True), st.data())
def test_large_flows_without_ties_are_label_free_and_idempotent(flow, data) -> None:
    # canonical ids beyond n9 sort differently as strings than as numbers
    nf = admit_flow(flow, S.SCHEMA)
    assert admit_flow(nf.term, S.SCHEMA).encoding == nf.encoding
    ids = list(flow[1])
    names = data.draw(st.lists(new_ids, min_size=len(ids), max_size=len(ids), unique=True))
    assert admit_flow(rename(flow, dict(zip(ids, names))), S.SCHEMA).identity == nf.identity


@settings(max_examples=150)
@given(S.flow(guards=True))
def test_input_is_n0_and_output_is_last(flow) -> None:
    nf = admit_flow(flow, S.SCHEMA)
    n = len(flow[1])
    assert sorted(nf.nodes, key=lambda i: int(i[1:])) == [f"n{i}" for i in range(n)] == nf.order
    assert nf.nodes["n0"] == {"kind": "input"}
    assert nf.nodes[f"n{n - 1}"]["kind"] == "output"
    assert nf.encoding.startswith("sigma-flow/v1:((input n0)")
    assert nf.encoding.endswith(f"(output n{n - 1} inputs=[n{n - 2}]))")
    # every node's inputs were named before it
    for cid, node in nf.nodes.items():
        assert all(int(p[1:]) < int(cid[1:]) for p in node.get("inputs", []))
    src = next(k for k, v in flow[1].items() if v["kind"] == "input")
    assert nf.relabel[src] == "n0"


@settings(max_examples=150)
@given(S.flow(distinct=True), st.data())
def test_swapping_two_inputs_changes_identity_unless_equal(flow, data) -> None:
    multi = sorted(k for k, v in flow[1].items() if len(v.get("inputs", [])) >= 2)
    if not multi:
        return
    nid = data.draw(st.sampled_from(multi))
    ins = flow[1][nid]["inputs"]
    i, j = data.draw(st.lists(st.integers(0, len(ins) - 1), min_size=2, max_size=2, unique=True))
    swapped = copy.deepcopy(flow)
    s = swapped[1][nid]["inputs"]
    s[i], s[j] = s[j], s[i]
    same = admit_flow(flow, S.SCHEMA).identity == admit_flow(swapped, S.SCHEMA).identity
    assert same == (ins[i] == ins[j])


@settings(max_examples=100)
@given(S.flow(guards=True))
def test_generated_flows_are_admitted_and_object_form_agrees(flow) -> None:
    assert check_flow(flow, S.SCHEMA) is flow[1]
    assert admit_flow({"nodes": flow[1]}, S.SCHEMA).identity == admit_flow(flow, S.SCHEMA).identity


# --------------------------------------------------------------------------
# assemble, guard_verdict, topological_order, billable_runs
# --------------------------------------------------------------------------

def test_assemble_one_input_passes_through() -> None:
    assert assemble({"kind": "llm"}, ["What is 17 * 23?"]) == "What is 17 * 23?"
    assert assemble({"kind": "llm"}, [""]) == ""


def test_assemble_several_inputs_become_sections() -> None:
    assert assemble({"kind": "llm"}, ["A", "B"]) == "[input 1]\nA\n\n[input 2]\nB"
    assert assemble({"kind": "llm"}, ["x\n", "", "z"]) == "[input 1]\nx\n\n\n[input 2]\n\n\n[input 3]\nz"


@pytest.mark.parametrize("template, texts, want", [
    ("Draft A:\n$1\n\nDraft B:\n$2", ["391", "17*23 = 391"], "Draft A:\n391\n\nDraft B:\n17*23 = 391"),
    ("$2 then $1 then $2", ["a", "b"], "b then a then b"),
    ("$3 and $1", ["a", "b"], " and a"),                    # a missing index becomes empty
    ("[$0]", ["a"], "[]"),                                  # indexes start at 1
    ("$10", ["a", "b"], ""),                                 # digits are read greedily: $10, not $1 + "0"
    ("$01", ["a"], "a"),
    ("cost: $ 5 and $$1", ["a"], "cost: $ 5 and $a"),
    ("$1", ["has $2 inside"], "has $2 inside"),             # substituted text is not rescanned
    ("", ["a", "b"], ""),                                    # an empty template still overrides
    ("no placeholders", ["a"], "no placeholders"),
    ("\\1 $1", ["x"], "\\1 x"),                              # replacement text is literal
])
def test_assemble_template(template, texts, want) -> None:
    assert assemble({"kind": "llm", "template": template}, texts) == want


@pytest.mark.parametrize("guard, answer, want", [
    ({}, "ABORT: off-topic request", "off-topic request"),
    ({}, "abort - spam", "spam"),
    ({}, "  \n\n Abort:reason one\nline two  ", "reason one\nline two"),
    ({}, "ABORT", "aborted by guard"),
    ({}, "ABORT:   ", "aborted by guard"),
    ({}, "All good, continue.", None),
    ({}, "I would not ABORT this.", None),
    ({}, "", None),
    ({"abort_marker": "STOP"}, "stop: unsafe", "unsafe"),
    ({"abort_marker": "STOP"}, "ABORT: unsafe", None),
])
def test_guard_verdict(guard, answer, want) -> None:
    assert guard_verdict({"kind": "llm", "guard": guard}, answer) == want


def test_guard_verdict_without_a_guard() -> None:
    assert guard_verdict({"kind": "llm"}, "ABORT: x") is None


def test_topological_order_is_deterministic() -> None:
    nodes = moa()[1]
    assert topological_order(nodes) == ["u", "a", "b", "f", "out"]
    reordered = dict(reversed(list(nodes.items())))
    assert topological_order(reordered) == ["u", "a", "b", "f", "out"]
    # ready nodes are taken in sorted id order, not discovery order
    f = ["flow", {"u": {"kind": "input"}, "z": llm("1", "u"), "m": llm("2", "z"), "b": llm("3", "u"),
                  "c": llm("4", "b", "m"), "out": {"kind": "output", "inputs": ["c"]}}]
    assert topological_order(f[1]) == ["u", "b", "z", "m", "c", "out"]


@settings(max_examples=100)
@given(S.flow(guards=True), st.randoms(use_true_random=False))
def test_topological_order_property(flow, rnd) -> None:
    nodes = flow[1]
    order = topological_order(nodes)
    assert sorted(order) == sorted(nodes)
    pos = {nid: i for i, nid in enumerate(order)}
    for nid, node in nodes.items():
        assert all(pos[p] < pos[nid] for p in node.get("inputs", []))
    items = list(nodes.items())
    rnd.shuffle(items)
    assert topological_order(dict(items)) == order


@pytest.mark.parametrize("n, runs", [(0, 0), (1, 1), (2, 1), (5, 1), (6, 2), (10, 2), (11, 3), (15, 3), (16, 4)])
def test_billable_runs(n, runs) -> None:
    f = chain_flow(n)
    assert check_flow(f)
    assert billable_runs(f[1]) == runs
