"""--eval's latency on a model exported at a static batch > 1.

The latency fed every input's first row: a model with a fixed batch of 2 refused it (an onnxruntime
INVALID_ARGUMENT traceback, exit 3, `python -m collapse_passes m.onnx --collapse K --eval d.npz`).
Before 2026-11-30.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _model(batch) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w2"], ["z"], name="fc2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])]
    nodes[-1].output[0] = "y"
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                          [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _data(n):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "labels": rng.integers(0, 3, n)}


def test_eval_latency_runs_a_static_batch_model_at_its_batch():
    res = cp.collapse(_model(2), collapse=["act"], eval_data=_data(5))
    lat = res.report["latency"]
    assert lat["batch"] == 2 and "batch 2" in lat["how"]
    assert lat["original_ms"] > 0 and lat["result_ms"] > 0
    assert res.report["accuracy"]["samples"] == 4   # whole batches of 2 only

