"""--target-speedup priced every activation at zero (right for ReLU / Clip, which onnxruntime runs inside
the conv before them), so on MobileNetV3 / EfficientNet a HardSwish or SiLU whose collapse enables no
merge looked free to keep: "0 collapsed, no predicted gain", target never reached. Activations that do
not fuse (core/activations.fuses) are now ops of their own: one pass over their output + the per-op
overhead per node, as the elementwise ops a merge creates are priced."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.algebra.cost import ELEMENT_PRICES
from collapse_passes.core.activations import fuses
from collapse_passes.onnx.analysis import model_stats
from collapse_passes.speedup import stats_cost


def _conv_act_dw(act: str) -> onnx.ModelProto:
    """conv 3x3 (3->16) -> act -> depthwise 3x3 -> act -> conv 1x1 (16->8): merging across an act would
    cost more MACs (a 5x5 conv), so the only gain from collapsing one is the act itself."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w0", (16, 3, 3, 3)), ("w1", (16, 1, 3, 3)), ("w2", (8, 16, 1, 1))]]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["a"], ["b"], name="act0"),
             helper.make_node("Conv", ["b", "w1"], ["c"], name="c1", pads=[1, 1, 1, 1], group=16),
             helper.make_node(act, ["c"], ["d"], name="act1"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_catalogue_says_which_kinds_fuse():
    assert fuses("relu") and fuses("relu6") and fuses("clip") and fuses("leaky_relu") and fuses("hardsigmoid")
    assert not any(fuses(k) for k in ("hardswish", "hard_swish", "silu", "swish", "gelu", "prelu", "no_such"))


def test_fused_activation_is_free_and_hardswish_is_one_pass_plus_overhead():
    relu, hsw = model_stats(_conv_act_dw("Relu")).as_dict(), model_stats(_conv_act_dw("HardSwish")).as_dict()
    assert relu["macs"] == hsw["macs"]
    # elements of its output at HardSwish's measured price (algebra/cost.ELEMENT_PRICES) + the per-op overhead
    per_act = 16 * 32 * 32 * ELEMENT_PRICES["hardswish"] + 20_000.0
    assert stats_cost(hsw) - stats_cost(relu) == pytest.approx(2 * per_act)


def test_target_speedup_collapses_a_hardswish_that_enables_no_merge():
    r = cp.collapse(_conv_act_dw("HardSwish"), scores={"act0": 0.1, "act1": 0.9}, target_speedup=1.001)
    assert r.report["passed"]
    assert [a["key"] for a in r.report["activations"] if a["collapsed"]] == ["act0"]
    assert [n.op_type for n in r.model.graph.node].count("HardSwish") == 1


def test_target_speedup_still_skips_a_relu_that_enables_no_merge():
    r = cp.collapse(_conv_act_dw("Relu"), scores={"act0": 0.1, "act1": 0.9}, target_speedup=1.001)
    assert r.report["collapsed"] == 0


def test_activation_on_constants_alone_stays_free():
    """A HardSwish computed from weights alone (a position-bias table) is folded when the session loads."""
    rng = np.random.default_rng(1)
    t = numpy_helper.from_array(rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["table", "w"], ["a"], name="c"),
             helper.make_node("HardSwish", ["a"], ["b"], name="hsw"),
             helper.make_node("Add", ["x", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [t, w])
    s = model_stats(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).as_dict()
    assert s["free_activation_nodes"] == 1 and s["activation_elements"] == 0
