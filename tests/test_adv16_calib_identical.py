"""Calibration data whose samples are all the same input (eight zero images): EASIER saw every channel always on
or off and 28 of 49 EfficientNet activations scored as collapsible, without a word. The run now warns; varied
samples do not."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _model():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_identical_calibration_samples_are_warned():
    same = np.zeros((8, 3, 8, 8), np.float32)
    r = cp.collapse(_model(), method="easier", calib=same, threshold=0.1)
    assert any("are all the same input" in w for w in r.report["warnings"]), r.report["warnings"]
    varied = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    r = cp.collapse(_model(), method="easier", calib=varied, threshold=0.1)
    assert not any("same input" in w for w in r.report["warnings"])
