"""Conv auto_pad (SAME_UPPER / SAME_LOWER / VALID, as tf2onnx emits): read as the explicit pads it stands
for where the input size is static, so such convs count MACs, fold and merge like any other; left alone
where the size is unknown (and SAME with dilation > 1, which onnxruntime refuses to run)."""
import itertools

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

import collapse_passes as cp
from collapse_passes.algebra.conv import auto_pads
from collapse_passes.onnx.analysis import model_stats, node_macs
from collapse_passes.onnx.linear_ops import ConvView
from collapse_passes.onnx.shapes import with_shapes
from collapse_passes.verify import random_inputs, run
from conftest import make_model, rnd, vinfo
from test_passes import assert_same, bn, bn_inits, ops


def one_conv(hw, c=2, o=3, k=(3, 3), **attrs):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", **attrs)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, "H", "W"])
    return make_model(nodes, [vinfo("x", [1, c] + list(hw))], [y],
                      {"w": rnd(o, c, *k, seed=1), "b": rnd(o, seed=2)})


def explicit(model):
    """The model with its Conv rewritten through ConvView (params read, written back with explicit pads)."""
    g = with_shapes(model)
    node = g.nodes[0]
    v = ConvView.of(node)
    assert v is not None, node.attrs
    v.write(g, v.params)
    assert "auto_pad" not in node.attrs
    return gs.export_onnx(g, do_type_check=False)


def test_auto_pad_read_as_explicit_pads_is_exact_on_onnxruntime():
    """Odd and even sizes, strides 1 and 2, even kernels (asymmetric SAME pads): same outputs as onnxruntime's
    own auto_pad, and for SAME_UPPER vs SAME_LOWER the odd pad on opposite sides."""
    checked = 0
    for mode, hw, s, k in itertools.product(["SAME_UPPER", "SAME_LOWER", "VALID"], [(7, 8), (5, 9)], [1, 2],
                                            [(2, 2), (3, 3), (1, 4)]):
        m = one_conv(hw, k=k, auto_pad=mode, strides=[s, s])
        e = explicit(m)
        pads = [list(a.ints) for a in e.graph.node[0].attribute if a.name == "pads"][0]
        assert tuple(pads) == auto_pads(mode, hw, k, (s, s))
        feeds = random_inputs(m, 1, seed=3)
        (a,), _ = run(m, feeds)
        (b,), _ = run(e, feeds)
        assert a[0].shape == b[0].shape
        np.testing.assert_allclose(b[0], a[0], rtol=1e-6, atol=1e-6)
        checked += 1
    assert checked == 36
    # the odd total pad: at the end for SAME_UPPER, at the begin for SAME_LOWER (size 8, kernel 2: total 1)
    assert auto_pads("SAME_UPPER", (8,), (2,)) == (0, 1)
    assert auto_pads("SAME_LOWER", (8,), (2,)) == (1, 0)
    assert auto_pads("SAME_UPPER", (8,), (1,), (2,)) == (0, 0)   # a negative total clamps to 0
    assert auto_pads("NOTSET", (8,), (3,)) is None


def test_valid_with_dilation_is_a_view_and_exact():
    m = one_conv((9, 8), auto_pad="VALID", dilations=[2, 2], strides=[2, 1])
    feeds = random_inputs(m, 1, seed=4)
    (a,), _ = run(m, feeds)
    (b,), _ = run(explicit(m), feeds)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-6, atol=1e-6)


def test_same_with_dilation_left_alone_but_spec_formula_holds():
    """onnxruntime refuses SAME_* with dilation > 1, so such a conv is no view (nothing could verify a
    rewrite); the pads formula itself is the ONNX reference implementation's."""
    from onnx.reference import ReferenceEvaluator

    for mode in ("SAME_UPPER", "SAME_LOWER"):
        m = one_conv((7, 8), k=(2, 3), auto_pad=mode, dilations=[2, 2])
        g = with_shapes(m)
        assert ConvView.of(g.nodes[0]) is None
        assert node_macs(g.nodes[0]) > 0
        pads = auto_pads(mode, (7, 8), (2, 3), (1, 1), (2, 2))
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=list(pads), dilations=[2, 2])
        e = make_model([node], [vinfo("x", [1, 2, 7, 8])], [vinfo("y", [1, 3, 7, 8])],
                       {"w": rnd(3, 2, 2, 3, seed=1), "b": rnd(3, seed=2)})
        x = rnd(1, 2, 7, 8, seed=5)
        a = ReferenceEvaluator(m).run(None, {"x": x})[0]
        b = ReferenceEvaluator(e).run(None, {"x": x})[0]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_macs_count_auto_pad_convs():
    c, o = 2, 3
    m = one_conv((8, 7), c=c, o=o, k=(3, 3), auto_pad="SAME_UPPER", strides=[2, 2])
    assert model_stats(m).macs == 4 * 4 * o * c * 9          # output ceil(8/2) x ceil(7/2)
    m = one_conv((8, 7), c=c, o=o, k=(3, 2), auto_pad="SAME_LOWER")
    assert model_stats(m).macs == 8 * 7 * o * c * 6
    # unknown input size: no view, still counted (dynamic dims count as 1, as for every op)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, "H", "W"])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, "H", "W"])
    m = make_model(nodes, [x], [y], {"w": rnd(o, c, 3, 3)})
    assert ConvView.of(with_shapes(m).nodes[0]) is None
    assert model_stats(m).macs == o * c * 9


def chain(hw, a1, a2, c=3, with_bn=False, spatial=None):
    """x -> conv(a1) [-> BN] -> Relu 'act' -> conv(a2) -> y; attrs carry the kernel as 'k'."""
    a1, a2 = dict(a1), dict(a2)
    k1, k2 = a1.pop("k"), a2.pop("k")
    inits = {"w1": rnd(c, c, *k1, seed=1), "b1": rnd(c, seed=2), "w2": rnd(c, c, *k2, seed=3), "b2": rnd(c, seed=4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="c1", **a1)]
    src = "h"
    if with_bn:
        inits.update(bn_inits("bn", c, 5))
        nodes.append(bn("bn", "h", "hb", "bn"))
        src = "hb"
    nodes += [helper.make_node("Relu", [src], ["r"], name="act"),
              helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2", **a2)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c] + list(spatial or hw))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, "H", "W"])
    return make_model(nodes, [x], [y], inits)


MERGEABLE = {
    # 3x3 stride 2 on 8x7: pads (0,1)/(1,1) -- asymmetric; then a 1x1: one conv
    "same_upper_s2_then_same_lower_1x1": ([8, 7], dict(auto_pad="SAME_UPPER", strides=[2, 2], k=(3, 3)),
                                          dict(auto_pad="SAME_LOWER", k=(1, 1)), ["Conv"]),
    # 1x1 then 2x2 SAME_LOWER (pads begin only): one conv plus the first bias as a per-position map
    "same_upper_1x1_then_same_lower_2x2": ([8, 7], dict(auto_pad="SAME_UPPER", k=(1, 1)),
                                           dict(auto_pad="SAME_LOWER", k=(2, 2)), ["Conv", "Add"]),
    "same_lower_1x1_s2_then_same_upper_2x3": ([8, 7], dict(auto_pad="SAME_LOWER", strides=[2, 2], k=(1, 1)),
                                              dict(auto_pad="SAME_UPPER", k=(2, 3)), ["Conv", "Add"]),
    "valid_then_valid_s2": ([9, 6], dict(auto_pad="VALID", k=(3, 3)),
                            dict(auto_pad="VALID", strides=[2, 1], k=(3, 2)), ["Conv"]),
}


@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_auto_pad_chain_with_collapsed_relu_merges_and_verifies(name):
    hw, a1, a2, expect = MERGEABLE[name]
    # a merge that needs a map Add pays for its elements (~15 MACs each: algebra/cost.ELEMENT_PRICES) only
    # with more channels than that (test_passes.test_pointwise_then_padded_conv_merges_exactly_with_bias_map)
    m = chain(hw, a1, a2, c=16 if "Add" in expect else 3, with_bn=name.startswith("same_upper_s2"))
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == expect, ops(r.model)
    assert not any(a.name == "auto_pad" for n in r.model.graph.node for a in n.attribute)
    assert r.report["merges"] and all(g["exact"] for g in r.report["merges"])
    assert r.report["verification"]["against_requested"]["passed"]
    assert r.report["after"]["macs"] < r.report["before"]["macs"]
    assert_same(r.requested, r.model)


def test_same_3x3_pair_is_not_merged_exactly_but_still_verifies():
    """Two 'same' 3x3 convs: the merge would be wrong on the border ring, so (as with explicit pads) it is
    refused by default; the convs keep their auto_pad."""
    m = chain([8, 7], dict(auto_pad="SAME_UPPER", k=(3, 3)), dict(auto_pad="SAME_UPPER", k=(3, 3)))
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Conv", "Conv"]
    assert any("not merged" in n for n in r.report["notes"])
    assert r.report["verification"]["against_requested"]["passed"]


def test_unknown_input_size_leaves_auto_pad_convs_alone():
    m = chain([8, 7], dict(auto_pad="SAME_UPPER", k=(1, 1)), dict(auto_pad="SAME_LOWER", k=(2, 2)),
              spatial=["H", "W"])
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model) == ["Conv", "Conv"]
    assert [a.s for n in r.model.graph.node for a in n.attribute if a.name == "auto_pad"] == [b"SAME_UPPER", b"SAME_LOWER"]
    assert not r.report["merges"]
    assert r.report["verification"]["against_requested"]["passed"]
    assert r.report["before"]["macs"] > 0


def test_conv_transpose_with_auto_pad_left_as_it_is():
    c = 3
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["h"], name="up", auto_pad="SAME_UPPER",
                              strides=[2, 2]),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Conv", ["r", "w", "b"], ["y"], name="c", auto_pad="SAME_UPPER")]
    inits = {"wt": rnd(c, c, 3, 3, seed=1), "bt": rnd(c, seed=2), "w": rnd(c, c, 1, 1, seed=3), "b": rnd(c, seed=4)}
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, "H", "W"])
    m = make_model(nodes, [vinfo("x", [1, c, 5, 4])], [y], inits)
    r = cp.collapse(m, collapse=["act"])
    assert ops(r.model)[0] == "ConvTranspose"
    up = r.model.graph.node[0]
    assert [a.s for a in up.attribute if a.name == "auto_pad"] == [b"SAME_UPPER"]
    assert r.report["verification"]["against_requested"]["passed"]
    assert r.report["before"]["macs"] == 5 * 4 * c * c * 9 + 10 * 8 * c * c
    assert_same(r.requested, r.model)
