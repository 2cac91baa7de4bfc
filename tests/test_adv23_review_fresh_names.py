"""The tensors and nodes a rewrite adds get names the model does not hold (core/names.fresh_name; adversarial
round 23, H71). Round 22 unified five copies of the base, base_1, ... loop but left rewrites that name their new
tensor `<y>__lin_scale`, `<y>__mm`, `<y>__merged` and their Add `<node>_bias_add` whatever the model holds:

* linearize: a model with a tensor `h__lin_scale` (a HardSigmoid's output `h` + the suffix) had the collapsed
  activation's consumer read that tensor instead of the scaled input, in the result and in the requested-semantics
  reference the check compares it with, so the wrong result passed the check (max error 4 against the requested
  semantics, "passed": True);
* DenseView.write (a MatMul that gains a bias): a duplicate tensor `y__mm` failed onnxruntime's check run (a raw
  onnxruntime traceback), a node already named `fc1_bias_add` too ("two nodes with same node name");
* merge_chains (a conv chain with a bias map): a tensor `y__merged` lost the merge (the check fell back to the
  unmerged chain)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp


def _vi(name, shape):
    return h.make_tensor_value_info(name, TP.FLOAT, shape)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_linearize_names_its_scale_apart_from_a_tensor_of_the_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [h.make_node("HardSigmoid", ["x"], ["h"], name="act"), h.make_node("MatMul", ["h", "W"], ["y"], name="fc"),
             h.make_node("Neg", ["x"], ["h__lin_scale"], name="neg")]
    m = _model(nodes, [_vi("x", [2, 8])], [_vi("y", [2, 4]), _vi("h__lin_scale", [2, 8])], [nh.from_array(w, "W")])
    r = cp.collapse(m, collapse=["act"])
    x = rng.standard_normal((2, 8)).astype(np.float32)
    y, side = _run(r.model, x)
    np.testing.assert_allclose(y, (0.2 * x + 0.5) @ w, rtol=1e-5, atol=1e-5)   # HardSigmoid's linear regime
    np.testing.assert_array_equal(side, -x)


@pytest.mark.parametrize("side, side_node", [("y__mm", "neg"), ("other", "fc1_bias_add")])
def test_a_matmul_that_gains_a_bias_names_its_add_apart(side, side_node):
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"),
             h.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             h.make_node("Relu", ["a1"], ["r"], name="act"), h.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
             h.make_node("Neg", ["x"], [side], name=side_node)]
    m = _model(nodes, [_vi("x", [2, 8])], [_vi("y", [2, 4]), _vi(side, [2, 8])],
               [nh.from_array(w1, "W1"), nh.from_array(b1, "b1"), nh.from_array(w2, "W2")])
    r = cp.collapse(m, collapse=["act"])
    g = r.model.graph
    assert [n.op_type for n in g.node].count("MatMul") == 1   # merged into one MatMul + Add
    assert len({n.name for n in g.node}) == len(g.node)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    y, out = _run(r.model, x)
    np.testing.assert_allclose(y, (x @ w1 + b1) @ w2, rtol=1e-4, atol=1e-4)   # the ReLU's identity regime
    np.testing.assert_array_equal(out, -x)


def test_a_merged_conv_chain_names_its_bias_map_input_apart():
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "W1"),
             nh.from_array(rng.standard_normal(4).astype(np.float32), "B1"),
             nh.from_array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), "W2")]
    nodes = [h.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1"),
             h.make_node("Relu", ["c1"], ["r"], name="act"),
             h.make_node("Conv", ["r", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Neg", ["x"], ["y__merged"], name="neg")]
    m = _model(nodes, [_vi("x", [1, 2, 6, 6])], [_vi("y", [1, 2, 6, 6]), _vi("y__merged", [1, 2, 6, 6])], inits)
    r = cp.collapse(m, collapse=["act"])
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Conv") == 1 and "Add" in ops, ops   # one conv and its border bias map
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(r.model, x)[1], -x)
