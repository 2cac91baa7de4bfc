"""Each pass on small hand-built graphs: structure changes as intended and the output equals the
requested semantics (checked by the gate with onnxruntime, and independently here)."""
import numpy as np
import onnx
import pytest
from onnx import helper

import collapse_passes as cp
from collapse_passes.verify import random_inputs, run
from conftest import make_model, rnd, vinfo


def ops(model):
    return [n.op_type for n in model.graph.node]


def conv(name, x, y, w, b=None, **attrs):
    ins = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", ins, [y], name=name, **attrs)


def bn_inits(prefix, c, seed):
    r = np.random.default_rng(seed)
    return {f"{prefix}.g": (r.random(c) + 0.5).astype(np.float32), f"{prefix}.b": (r.random(c) - 0.5).astype(np.float32),
            f"{prefix}.m": (r.random(c) - 0.5).astype(np.float32), f"{prefix}.v": (r.random(c) + 0.5).astype(np.float32)}


def bn(name, x, y, p):
    return helper.make_node("BatchNormalization", [x, f"{p}.g", f"{p}.b", f"{p}.m", f"{p}.v"], [y], name=name, epsilon=1e-5)


def assert_same(a, b, rtol=1e-4, atol=1e-5, n=2):
    feeds = random_inputs(a, n, seed=7)
    ra, names = run(a, feeds)
    rb, _ = run(b, feeds)
    for x, y in zip(ra, rb):
        for u, v in zip(x, y):
            np.testing.assert_allclose(v, u, rtol=rtol, atol=atol)


def conv_relu_conv(k1=3, p1=1, k2=1, p2=0, c=4, bias=True, stride1=1, group2=1, bn_between=True, hw=8):
    inits = {"w1": rnd(c, c, k1, k1, seed=1), "w2": rnd(c, c // group2, k2, k2, seed=2)}
    if bias:
        inits.update(b1=rnd(c, seed=3), b2=rnd(c, seed=4))
    nodes = [conv("c1", "x", "h", "w1", "b1" if bias else None, pads=[p1] * 4, strides=[stride1] * 2,
                  kernel_shape=[k1, k1])]
    src = "h"
    if bn_between:
        inits.update(bn_inits("bn", c, 5))
        nodes.append(bn("bn", "h", "hb", "bn"))
        src = "hb"
    nodes += [helper.make_node("Relu", [src], ["r"], name="act"),
              conv("c2", "r", "y", "w2", "b2" if bias else None, pads=[p2] * 4, kernel_shape=[k2, k2], group=group2)]
    out = (hw + 2 * p1 - k1) // stride1 + 1 + 2 * p2 - k2 + 1
    return make_model(nodes, [vinfo("x", [1, c, hw, hw])], [vinfo("y", [1, c, out, out])], inits)


def test_linearize_only_chosen_activation():
    m = conv_relu_conv(bn_between=False)
    r = cp.collapse(m, collapse=[], merge=False)
    assert "Relu" in ops(r.model)
    r = cp.collapse(m, collapse=["act"], merge=False)
    assert "Relu" not in ops(r.model)
    assert r.report["verification"]["against_requested"]["passed"]


def test_bn_folds_into_previous_conv_and_conv_then_1x1_merges():
    m = conv_relu_conv(k2=1, p2=0)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Conv"], ops(r.model)
    assert r.report["merges"][0]["exact"]
    assert_same(r.requested, r.model)


def test_nothing_collapsed_still_folds_bn():
    m = conv_relu_conv()
    r = cp.collapse(m)
    assert "BatchNormalization" not in ops(r.model)
    assert "Relu" in ops(r.model)
    assert any("nothing collapsed" in n for n in r.report["notes"])
    assert_same(m, r.model)


def test_padded_3x3_pair_not_merged_by_default_and_opt_in_is_measured():
    m = conv_relu_conv(k1=3, p1=1, k2=3, p2=1)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model).count("Conv") == 2
    assert any("not merged" in n for n in r.report["notes"])
    r2 = cp.collapse(m, collapse=["act"], allow_border_approx=True)
    assert ops(r2.model).count("Conv") == 1
    assert r2.report["approximate"] and r2.report["approximations"]
    err = r2.report["verification"]["against_requested"]["max_abs"]
    assert err > 1e-3, "the border error is real and must be reported"
    with pytest.raises(cp.VerificationError):
        cp.collapse(m, collapse=["act"], allow_border_approx=True, approx_max_error=err / 10)


def test_pointwise_then_padded_conv_merges_exactly_with_bias_map():
    # 16 channels: the merge saves 16 x 16 MACs a position for a map Add of 16 elements at ~15 MACs each
    # (algebra/cost.ELEMENT_PRICES); at 4 channels it saves 16 for 60 and is not planned (onnxruntime there
    # runs the merged pair 0.6 us faster: a conv's fixed cost, ~3x an Add's, is not in the model)
    m = conv_relu_conv(k1=1, p1=0, k2=3, p2=1, c=16)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Conv", "Add"], ops(r.model)   # bias map added per position
    assert r.report["merges"][0]["exact"]
    assert_same(r.requested, r.model)


def test_bn_before_unpadded_conv_folds_but_not_before_padded_conv():
    c = 4
    for pad, expect_bn in ((0, False), (1, True)):
        inits = {"w": rnd(c, c, 3, 3, seed=1), **bn_inits("bn", c, 2)}
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"), bn("bn", "r", "h", "bn"),
                 conv("c", "h", "y", "w", pads=[pad] * 4, kernel_shape=[3, 3])]
        m = make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y", [1, c, 4 + 2 * pad, 4 + 2 * pad])], inits)
        r = cp.collapse(m)
        assert ("BatchNormalization" in ops(r.model)) == expect_bn, (pad, ops(r.model))
        assert_same(m, r.model)


def test_per_channel_mul_add_fold():
    c = 3
    inits = {"w": rnd(c, c, 1, 1, seed=1), "s": rnd(1, c, 1, 1, seed=2), "t": rnd(c, 1, 1, seed=3)}
    nodes = [conv("c", "x", "h", "w", kernel_shape=[1, 1]), helper.make_node("Mul", ["h", "s"], ["hs"]),
             helper.make_node("Add", ["t", "hs"], ["y"])]
    m = make_model(nodes, [vinfo("x", [2, c, 4, 4])], [vinfo("y", [2, c, 4, 4])], inits)
    r = cp.collapse(m)
    assert ops(r.model) == ["Conv"]
    assert_same(m, r.model)


def test_identity_residual_absorbed_into_merged_kernel():
    # x -> conv1x1 -> relu -> conv3x3 (+x): collapsing the relu gives one 3x3 conv with a centre delta.
    # 16 channels: the chain merge is planned before the residual is absorbed, so its map Add is charged
    # (~15 MACs an element) without the residual Add it replaces; at 4 channels it is not planned
    c = 16
    inits = {"w1": rnd(c, c, 1, 1, seed=1), "b1": rnd(c, seed=2), "w2": rnd(c, c, 3, 3, seed=3), "b2": rnd(c, seed=4)}
    nodes = [conv("c1", "x", "h", "w1", "b1", kernel_shape=[1, 1]), helper.make_node("Relu", ["h"], ["r"], name="act"),
             conv("c2", "r", "z", "w2", "b2", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["z", "x"], ["y"], name="skip")]
    m = make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y", [1, c, 6, 6])], inits)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Conv", "Add"], ops(r.model)  # the Add left is the constant bias map
    kinds = [mg["kind"] for mg in r.report["merges"]]
    assert "residual-identity" in kinds
    assert r.report["after"]["depth_ops"] < r.report["before"]["depth_ops"]
    assert_same(r.requested, r.model)


def test_projection_shortcut_absorbed():
    c, o = 4, 6
    inits = {"w": rnd(o, c, 3, 3, seed=1), "b": rnd(o, seed=2), "wp": rnd(o, c, 1, 1, seed=3), "bp": rnd(o, seed=4)}
    nodes = [conv("c", "x", "z", "w", "b", kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]),
             conv("p", "x", "s", "wp", "bp", kernel_shape=[1, 1], strides=[2, 2]),
             helper.make_node("Add", ["z", "s"], ["y"], name="skip")]
    m = make_model(nodes, [vinfo("x", [1, c, 8, 8])], [vinfo("y", [1, o, 4, 4])], inits)
    r = cp.collapse(m)
    assert ops(r.model) == ["Conv"], ops(r.model)
    assert_same(m, r.model)


def test_gemm_chain_merges_and_cost_prefers_it():
    d = 8
    inits = {"w1": rnd(4 * d, d, seed=1), "b1": rnd(4 * d, seed=2), "w2": rnd(d, 4 * d, seed=3), "b2": rnd(d, seed=4)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    m = make_model(nodes, [vinfo("x", [2, d])], [vinfo("y", [2, d])], inits)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Gemm"]
    mg = r.report["merges"][0]
    assert mg["macs_before"] == 8 * mg["macs_after"]
    assert_same(r.requested, r.model)


def test_matmul_chain_with_layernorm_affine():
    d = 6
    inits = {"g": rnd(d, seed=1) + 1, "be": rnd(d, seed=2), "w1": rnd(d, 4 * d, seed=3), "b1": rnd(4 * d, seed=4),
             "w2": rnd(4 * d, d, seed=5), "b2": rnd(d, seed=6)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "be"], ["n"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["n", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h"]),
             helper.make_node("Gelu", ["h"], ["a"], name="gelu"),
             helper.make_node("MatMul", ["a", "w2"], ["z0"]), helper.make_node("Add", ["z0", "b2"], ["z"]),
             helper.make_node("Add", ["x", "z"], ["y"])]
    m = make_model(nodes, [vinfo("x", [1, 5, d])], [vinfo("y", [1, 5, d])], inits, opset=20)
    r = cp.collapse(m, collapse=["gelu"])
    assert ops(r.model).count("MatMul") == 1, ops(r.model)
    assert_same(r.requested, r.model)


def test_selu_and_hardsigmoid_linear_regime_folds():
    c = 3
    inits = {"w1": rnd(c, c, 1, 1, seed=1), "w2": rnd(c, c, 1, 1, seed=2)}
    for act in ("Selu", "HardSigmoid"):
        nodes = [conv("c1", "x", "h", "w1", kernel_shape=[1, 1]), helper.make_node(act, ["h"], ["r"], name="act"),
                 conv("c2", "r", "y", "w2", kernel_shape=[1, 1])]
        m = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", [1, c, 4, 4])], inits)
        r = cp.collapse(m, collapse=["act"])
        assert ops(r.model) == ["Conv"], (act, ops(r.model))
        assert_same(r.requested, r.model)


def test_graph_output_activation_keeps_output_name():
    c = 3
    nodes = [conv("c1", "x", "h", "w1", kernel_shape=[1, 1]), helper.make_node("Relu", ["h"], ["y"], name="act")]
    m = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", [1, c, 4, 4])], {"w1": rnd(c, c, 1, 1)})
    r = cp.collapse(m, collapse=["act"])
    assert [o.name for o in r.model.graph.output] == ["y"]
    assert "Relu" not in ops(r.model)


def test_depthwise_pair_stays_depthwise():
    c = 4
    inits = {"w1": rnd(c, 1, 3, 3, seed=1), "w2": rnd(c, 1, 3, 3, seed=2)}
    nodes = [conv("d1", "x", "h", "w1", kernel_shape=[3, 3], group=c), helper.make_node("Relu", ["h"], ["r"], name="act"),
             conv("d2", "r", "y", "w2", kernel_shape=[3, 3], group=c)]
    m = make_model(nodes, [vinfo("x", [1, c, 9, 9])], [vinfo("y", [1, c, 5, 5])], inits)
    r = cp.collapse(m, collapse=["act"], per_op_overhead=1e6)
    convs = [n for n in r.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1
    assert helper.get_attribute_value(next(a for a in convs[0].attribute if a.name == "group")) == c
    assert_same(r.requested, r.model)


def test_cost_model_refuses_merge_that_costs_more():
    # 3x3 (no pad) then 3x3 (no pad) on many channels: 5x5 merged costs 25/18 more MACs; with no per-op
    # overhead the planner must keep both convs.
    c = 16
    inits = {"w1": rnd(c, c, 3, 3, seed=1), "w2": rnd(c, c, 3, 3, seed=2)}
    nodes = [conv("c1", "x", "h", "w1", kernel_shape=[3, 3]), helper.make_node("Relu", ["h"], ["r"], name="act"),
             conv("c2", "r", "y", "w2", kernel_shape=[3, 3])]
    m = make_model(nodes, [vinfo("x", [1, c, 12, 12])], [vinfo("y", [1, c, 8, 8])], inits)
    r = cp.collapse(m, collapse=["act"], per_op_overhead=0.0)
    assert ops(r.model).count("Conv") == 2
    r = cp.collapse(m, collapse=["act"], per_op_overhead=1e9)
    assert ops(r.model).count("Conv") == 1
    assert_same(r.requested, r.model)


def test_weights_shared_through_identity_count_in_macs():
    # the TorchScript exporter shares equal initializers through Identity nodes
    c = 4
    nodes = [helper.make_node("Identity", ["w"], ["w_shared"]),
             conv("c1", "x", "h", "w_shared", kernel_shape=[1, 1]), helper.make_node("Relu", ["h"], ["y"], name="act")]
    m = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", [1, c, 4, 4])], {"w": rnd(c, c, 1, 1)})
    from collapse_passes.onnx.analysis import model_stats

    st = model_stats(m)
    assert st.macs == c * c * 16 and st.nodes == 2


def test_toposort_sorts_an_unsorted_graph_and_leaves_a_sorted_one_alone(monkeypatch):
    """onnx/graph.toposort skips graphsurgeon's recursive sort when the order already is topological."""
    import onnx_graphsurgeon as gs

    from collapse_passes.onnx.graph import toposort

    x = gs.Variable("x", np.float32, [1, 4])
    a, b = gs.Variable("a", np.float32, [1, 4]), gs.Variable("b", np.float32, [1, 4])
    n1, n2 = gs.Node("Relu", "n1", inputs=[x], outputs=[a]), gs.Node("Neg", "n2", inputs=[a], outputs=[b])
    g = gs.Graph(nodes=[n2, n1], inputs=[x], outputs=[b])
    assert [n.name for n in toposort(g).nodes] == ["n1", "n2"]
    calls = []
    monkeypatch.setattr(gs.Graph, "toposort", lambda self, *a, **k: calls.append(1) or self)
    assert toposort(g) is g and not calls
    g.nodes.reverse()
    toposort(g)
    assert calls == [1]
