"""Activation spellings and key naming of hand-built / converted ONNX files (H54, from H52's foreign-file sweep).

- ReLU6 as Min(Max(x, 0), 6) or Max(Min(x, 6), 0) (tf2onnx): only the Max was a (clip) site, and collapsing it
  left the Min in the graph; now the pair is one site, one key, and both ops go.
- LeakyReLU as Max(x, a*x) (TFLite, tf2onnx): not recognised; now one leaky_relu site when the Mul reads the same
  tensor by a scalar 0 < a < 1, and nothing else.
- One node named "/..." made every other activation of a hand-built model keyed relu():i first instead of by its
  own name.
Each result is checked with onnxruntime against a reference built here: the original with the activation's nodes
replaced by its linear regime (the identity).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp

C = 4


def _w(rng, *s):
    return (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)


def _model(nodes, inits, opset=13):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, C, 5, 5])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, C, 5, 5])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def _run(m, x):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _linear_reference(m, names, x_in, y_out):
    """The original with nodes `names` removed and y_out = Identity(x_in): the activation in its linear regime."""
    r = onnx.ModelProto()
    r.CopyFrom(m)
    kept = [n for n in r.graph.node if n.name not in names]
    kept.append(h.make_node("Identity", [x_in], [y_out], name=f"ref_identity_{y_out}"))
    del r.graph.node[:]
    r.graph.node.extend(kept)
    return onnx.shape_inference.infer_shapes(_toposorted(r))


def _toposorted(m):
    done = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer} | {""}
    left, out = list(m.graph.node), []
    while left:
        for n in left:
            if all(i in done for i in n.input):
                out.append(n)
                done.update(n.output)
                left.remove(n)
                break
        else:
            raise AssertionError("cycle")
    del m.graph.node[:]
    m.graph.node.extend(out)
    return m


def _const(name, value, how):
    """(nodes, inits) that make `name` hold `value`: an initializer or a Constant node."""
    arr = np.asarray(value, np.float32)
    if how == "init":
        return [], [nh.from_array(arr, name)]
    return [h.make_node("Constant", [], [name], name=f"{name}_const", value=nh.from_array(arr, name))], []


def _clamp_model(order, how, lo=0.0, hi=6.0, rng=None):
    """conv -> Min(Max(c, lo), hi) (order 'maxmin') or Max(Min(c, hi), lo) ('minmax') -> conv."""
    rng = rng or np.random.default_rng(0)
    inits = [nh.from_array(_w(rng, C, C, 1, 1) * 8, "w0"), nh.from_array(_w(rng, C) * 2, "b0"),
             nh.from_array(_w(rng, C, C, 1, 1), "w1")]
    nodes = [h.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0")]
    for nm, v in (("lo", lo), ("hi", hi)):
        n, i = _const(nm, v, how)
        nodes += n
        inits += i
    if order == "maxmin":
        nodes += [h.make_node("Max", ["c0", "lo"], ["m0"], name="clamp_lo"),
                  h.make_node("Min", ["m0", "hi"], ["r0"], name="clamp_hi")]
    else:
        nodes += [h.make_node("Min", ["hi", "c0"], ["m0"], name="clamp_hi"),
                  h.make_node("Max", ["m0", "lo"], ["r0"], name="clamp_lo")]
    nodes.append(h.make_node("Conv", ["r0", "w1"], ["y"], name="conv1"))
    return _model(nodes, inits)


@pytest.mark.parametrize("order", ["maxmin", "minmax"])
@pytest.mark.parametrize("how", ["init", "constant_node"])
@pytest.mark.parametrize("shape", [(), (1,)])
def test_relu6_as_min_max_is_one_site_and_collapses_both_ops(order, how, shape):
    m = _clamp_model(order, how, lo=np.zeros(shape), hi=np.full(shape, 6.0))
    keys = cp.list_keys(m)
    assert [(k["key"], k["kind"]) for k in keys] == [("clamp_lo" if order == "maxmin" else "clamp_hi", "relu6")], keys
    assert set(keys[0]["keys"]) >= {"clamp_lo", "clamp_hi"}   # either op's name names the one site
    res = cp.collapse(m, collapse=["clamp_hi"], merge=False)
    ops = [n.op_type for n in res.model.graph.node]
    assert "Min" not in ops and "Max" not in ops, ops   # was: the Min stayed after collapsing the Max
    x = (np.random.default_rng(1).standard_normal((1, C, 5, 5)) * 3).astype(np.float32)
    ref = _linear_reference(m, {"clamp_lo", "clamp_hi"}, "c0", "r0")
    assert np.abs(_run(m, x) - _run(ref, x)).max() > 1e-2   # the clamp is active on this input
    np.testing.assert_allclose(_run(res.model, x), _run(ref, x), rtol=1e-4, atol=1e-5)
    merged = cp.collapse(m, collapse=["clamp_lo"])   # and the two convs then merge into one
    assert [n.op_type for n in merged.model.graph.node] == ["Conv"]
    np.testing.assert_allclose(_run(merged.model, x), _run(ref, x), rtol=1e-4, atol=1e-4)


def test_general_scalar_clamp_pair_is_a_clip_with_both_bounds():
    m = _clamp_model("maxmin", "init", lo=-1.0, hi=2.5)
    (k,) = cp.list_keys(m)
    assert k["kind"] == "clip"
    res = cp.collapse(m, collapse=[k["key"]], merge=False)
    assert not {"Min", "Max"} & {n.op_type for n in res.model.graph.node}


def test_per_channel_upper_bound_is_not_a_relu6():
    """Min(Max(x, 0), hi[c]) with per-channel hi (C, 1, 1) is no ReLU6: the Max alone is the (clip min 0) site, and
    collapsing it keeps the per-channel Min, exactly."""
    hi = np.array([6.0, 1.0, 3.0, 0.5], np.float32).reshape(C, 1, 1)
    m = _clamp_model("maxmin", "init", lo=0.0, hi=hi)
    (k,) = cp.list_keys(m)
    assert (k["key"], k["kind"]) == ("clamp_lo", "clip")
    res = cp.collapse(m, collapse=["clamp_lo"], merge=False)
    assert [n.op_type for n in res.model.graph.node].count("Min") == 1
    x = (np.random.default_rng(2).standard_normal((1, C, 5, 5)) * 3).astype(np.float32)
    ref = _linear_reference(m, {"clamp_lo"}, "c0", "m0")
    np.testing.assert_allclose(_run(res.model, x), _run(ref, x), rtol=1e-4, atol=1e-5)


def _leaky_model(alpha, same=True, how="init"):
    rng = np.random.default_rng(3)
    inits = [nh.from_array(_w(rng, C, C, 1, 1), "w0"), nh.from_array(_w(rng, C, C, 1, 1), "w1"),
             nh.from_array(_w(rng, C, C, 1, 1), "w2")]
    n, i = _const("al", alpha, how)
    inits += i
    nodes = n + [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
                 h.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
                 h.make_node("Mul", ["al", "c0" if same else "c2"], ["ax"], name="lk_mul"),
                 h.make_node("Max", ["ax", "c0"], ["lk"], name="lk_max"),
                 h.make_node("Conv", ["lk", "w1"], ["y"], name="conv1")]
    return _model(nodes, inits)


@pytest.mark.parametrize("how", ["init", "constant_node"])
def test_leaky_relu_as_max_of_x_and_ax_is_one_site(how):
    m = _leaky_model(0.2, how=how)
    (k,) = cp.list_keys(m)
    assert k["kind"] == "leaky_relu" and set(k["keys"]) >= {"lk_mul", "lk_max"}, k   # was: no activation at all
    res = cp.collapse(m, collapse=["lk_max"], merge=False)
    assert not {"Max", "Mul"} & {n.op_type for n in res.model.graph.node}
    x = np.random.default_rng(4).standard_normal((1, C, 5, 5)).astype(np.float32)
    ref = _linear_reference(m, {"lk_mul", "lk_max"}, "c0", "lk")
    assert np.abs(_run(m, x) - _run(ref, x)).max() > 1e-2
    np.testing.assert_allclose(_run(res.model, x), _run(ref, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha, same", [(0.2, False), (1.5, True), (0.0, True), (-0.1, True),
                                         (np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(C, 1, 1), True)])
def test_max_of_other_products_is_no_leaky_relu(alpha, same):
    """No false positives: Max(y, a*x) of another tensor, a outside (0, 1), a per-channel a."""
    assert cp.list_keys(_leaky_model(alpha, same=same)) == []


def _relu_chain(names):
    """conv -> Relu -> conv -> ... with the Relus named `names` (a hand-built / converted model)."""
    rng = np.random.default_rng(5)
    nodes, inits, cur = [], [], "x"
    for i in range(len(names) + 1):
        inits.append(nh.from_array(_w(rng, C, C, 1, 1), f"w{i}"))
        out = "y" if i == len(names) else f"c{i}"
        nodes.append(h.make_node("Conv", [cur, f"w{i}"], [out], name=f"conv{i}"))
        if i < len(names):
            nodes.append(h.make_node("Relu", [out], [f"a{i}"], name=names[i]))
            cur = f"a{i}"
    return _model(nodes, inits)


def test_one_slash_name_does_not_rekey_the_other_nodes(tmp_path):
    """Every activation of a model no torch exporter named keeps its own node name as its key; one node named like a
    TorchScript scope ("/abs/Relu") made all the others relu():i (the node names only second)."""
    m = _relu_chain(["model/re_lu/Relu", "re_lu:0", "/abs/Relu", "act_last"])
    assert [k["key"] for k in cp.list_keys(m)] == ["model/re_lu/Relu", "re_lu:0", "abs", "act_last"]
    # and on the written model (second run) the remaining ones keep them too (was: relu():i from the stored key)
    out = str(cp.collapse(m, collapse=["re_lu:0"]).save(tmp_path / "once.onnx"))
    assert [k["key"] for k in cp.list_keys(out)] == ["model/re_lu/Relu", "abs", "act_last"]
    res = cp.collapse(out, collapse=["act_last"])
    x = np.random.default_rng(6).standard_normal((1, C, 5, 5)).astype(np.float32)
    ref = _linear_reference(_linear_reference(m, {"re_lu:0"}, "c1", "a1"), {"act_last"}, "c3", "a3")
    np.testing.assert_allclose(_run(res.model, x), _run(ref, x), rtol=1e-4, atol=1e-5)


def test_torchscript_root_activations_keep_their_root_keys(tmp_path):
    """The per-activation rule keeps the torch exports' keys: a TorchScript root-level ReLU ("/Relu") is relu():i
    first, before and after a run, and so are the ReLUs written out of a local function's body."""
    m = _relu_chain(["/Relu", "/Relu_1", "/blk/act/Relu"])
    assert [k["key"] for k in cp.list_keys(m)] == ["relu():0", "relu():1", "blk.act"]
    out = str(cp.collapse(m, collapse=["relu():0"]).save(tmp_path / "once.onnx"))
    assert [k["key"] for k in cp.list_keys(out)] == ["relu():1", "blk.act"]


def test_a_comma_name_is_offered_as_a_key_collapse_can_take():
    """--collapse K1,K2 splits at commas, so a node named "relu,1" cannot be given there: "did you mean" offered that
    name as is (the user's retry failed the same way); it offers the site's own comma-free key, which works."""
    from collapse_passes.errors import CollapseError

    m = _relu_chain(["act0", "relu,1"])
    with pytest.raises(CollapseError) as e:
        cp.collapse(m, collapse="relu,1")   # the string form splits as the CLI does: 'relu' and '1'
    msg = str(e.value)
    assert "'relu():1' (node 'relu,1'" in msg and "did you mean 'relu,1'" not in msg, msg
    assert cp.collapse(m, collapse="relu():1").report["collapsed"]


def test_a_comma_key_without_a_comma_free_twin_names_the_routes_that_take_it():
    from collapse_passes.core.selection import lookup
    from collapse_passes.errors import CollapseError

    class Site:
        keys, name = ["a,b"], "a,b"

    with pytest.raises(CollapseError, match=r"'a,b' \(--collapse splits keys at commas: give it in a --scores file"):
        lookup({"a,b": [Site()]}, "a,c", "collapse (--collapse)")


def _fused_matmul_model(a_shape, b_shape, attrs, a_rank_known=True):
    """y = Relu(FusedMatMul(a, b)) with b a weight: what onnxruntime's MatmulTransposeFusion saves. Without
    a_rank_known, `a` goes through another FusedMatMul (by an identity) first: onnx's shape inference knows no
    com.microsoft op, so the rank of its output is unknown."""
    rng = np.random.default_rng(7)
    b = nh.from_array(rng.standard_normal(b_shape).astype(np.float32), "b")
    inits, a_in = [b], "a"
    nodes = []
    if not a_rank_known:
        inits.append(nh.from_array(np.eye(a_shape[-1], dtype=np.float32), "eye"))
        nodes.append(h.make_node("FusedMatMul", ["a", "eye"], ["a1"], name="fmm0", domain="com.microsoft"))
        a_in = "a1"
    nodes += [h.make_node("FusedMatMul", [a_in, "b"], ["f"], name="fmm", domain="com.microsoft", **attrs),
              h.make_node("Relu", ["f"], ["y"], name="act")]
    a = h.make_tensor_value_info("a", TP.FLOAT, a_shape)
    rank = max(len(a_shape), len(b_shape))
    g = h.make_graph(nodes, "g", [a], [h.make_tensor_value_info("y", TP.FLOAT, [f"d{i}" for i in range(rank)])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def _run_a(m, a):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"a": a})[0]


@pytest.mark.parametrize("attrs, a_shape, b_shape", [
    ({"transA": 1, "alpha": 0.5}, [6, 5], [6, 7]),
    ({"transB": 1}, [2, 5, 6], [7, 6]),
    ({"transA": 1, "transB": 1, "alpha": 0.25}, [2, 3, 6, 5], [2, 3, 7, 6]),
    ({"transBatchA": 1}, [5, 2, 3, 6], [2, 3, 6, 7]),
    ({"transBatchA": 1, "transA": 1, "alpha": 2.0}, [6, 2, 3, 5], [2, 3, 6, 7]),
    ({"transBatchB": 1}, [2, 3, 5, 6], [6, 2, 3, 7]),
    ({"transBatchB": 1, "transB": 1}, [2, 3, 5, 6], [7, 2, 3, 6]),
    ({"transBatchA": 1}, [5, 2, 6], [2, 6, 7]),
])
def test_transposed_fused_matmul_is_written_as_standard_ops(attrs, a_shape, b_shape):
    """A FusedMatMul with transA/transB/transBatchA/transBatchB was kept as a com.microsoft op in the model written,
    where the README says the written model is standard ONNX (TVM cannot import it): now Transpose + MatMul (+ Mul)."""
    m = _fused_matmul_model(a_shape, b_shape, attrs)
    a = np.random.default_rng(8).standard_normal(a_shape).astype(np.float32)
    res = cp.collapse(m, collapse=["act"])
    assert res.passed
    assert all(n.domain in ("", "ai.onnx") for n in res.model.graph.node), [n.op_type for n in res.model.graph.node]
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    ref.graph.node[-1].op_type = "Identity"   # the Relu in its linear regime
    np.testing.assert_allclose(_run_a(res.model, a), _run_a(ref, a), rtol=1e-4, atol=1e-5)


def test_transposed_fused_matmul_of_unknown_rank_is_kept_and_verified():
    m = _fused_matmul_model([2, 6, 5], [6, 7], {"transA": 1}, a_rank_known=False)
    res = cp.collapse(m, collapse=["act"])
    assert res.passed and [n.op_type for n in res.model.graph.node] == ["MatMul", "FusedMatMul"]
