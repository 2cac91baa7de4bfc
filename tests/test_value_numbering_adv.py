"""Adversarial cases of value numbering: each was a way verification passed a wrong result or crashed."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from collapse_passes.onnx import value_numbering as vn
from collapse_passes.verify import random_inputs, verify
from conftest import make_model, rnd, vinfo


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _verify(o, r, s):
    return verify(o, r, s, random_inputs(o, 2, 0), 1e-4, 1e-5, "t")


def _softmax(opset):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"])]
    return _model(nodes, [vinfo("x", [1, 3, 4])], [vinfo("y", [1, 3, 4])], opset=opset)


def test_same_ops_under_another_opset_are_not_proved_by_structure():
    """Softmax without axis is axis=1 over the flattened tail at opset 11, axis=-1 at 13: the same
    node under another opset is another computation, never "the same graph"."""
    table = vn.Numbering()
    a, b = (vn.number_model(_softmax(v), table).outputs for v in (13, 11))
    assert a != b
    ver = _verify(_softmax(13), _softmax(13), _softmax(11))
    assert not ver.structural
    # and the float64 second look (onnx's evaluator reads both as Softmax-13) does not excuse it
    assert not ver.against_requested.passed


def _split(parts):
    outs = [f"s{i}" for i in range(parts)]
    nodes = [helper.make_node("Split", ["x"], outs, axis=1), helper.make_node("Relu", ["s0"], ["y"])]
    return _model(nodes, [vinfo("x", [1, 6])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def test_split_into_another_number_of_parts_is_another_value():
    """Split without sizes splits into as many parts as it has outputs: its first output is not the
    same value when the node has another number of outputs."""
    ver = _verify(_split(2), _split(2), _split(3))
    assert not ver.structural and not ver.against_requested.passed


def _dropout(training):
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
             numpy_helper.from_array(np.array(training), "mode")]
    nodes = [helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"])]
    return _model(nodes, [vinfo("x", [4, 64])], [vinfo("y", [4, 64])], inits)


def test_training_dropout_is_random_and_inference_dropout_passes_through():
    table = vn.Numbering()
    a, b = (vn.number_model(_dropout(True), table).outputs for _ in range(2))
    assert a != b
    inference = vn.number_model(_dropout(False), table)
    assert inference.outputs == [inference.ids["x"]]


def _output_initializer(scale):
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"])]
    return make_model(nodes, [vinfo("x", [2])], [vinfo("y", [2]), vinfo("c", [2])],
                      {"c": np.array([1.0, 2.0], np.float32), "w": np.float32(scale)})


def test_an_output_that_is_an_initializer_is_compared_not_a_crash():
    good = _verify(_output_initializer(2.0), _output_initializer(3.0), _output_initializer(3.0))
    bad = _verify(_output_initializer(2.0), _output_initializer(2.0), _output_initializer(3.0))
    assert good.against_requested.passed and not bad.against_requested.passed


def _if_reading_outer_values(k):
    """An If whose branches read `r` and `k` from the outer graph (not as node inputs)."""
    out = [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)]
    then = helper.make_graph([helper.make_node("Mul", ["r", "k"], ["t"])], "then", [], out)
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["t"])], "else", [], out)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Tanh", ["r"], ["q"]),
             helper.make_node("If", ["cond"], ["i"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["i", "q"], ["y"])]
    return make_model(nodes, [vinfo("x", [2, 4])], [vinfo("y", [2, 4])],
                      {"w": rnd(4, 4, seed=1), "k": np.float32(k), "cond": np.array(True)})


def test_subgraph_ops_reading_outer_values_run_whole():
    """If/Loop/Scan never share a number, so they are in every changed region, but their outer-scope
    reads are not node inputs: a region cut around them cannot load. The model runs whole."""
    same = _verify(_if_reading_outer_values(2.0), _if_reading_outer_values(2.0), _if_reading_outer_values(2.0))
    bad = _verify(_if_reading_outer_values(2.0), _if_reading_outer_values(2.0), _if_reading_outer_values(3.0))
    assert same.against_requested.passed and not bad.against_requested.passed
