"""An ONNX file exported in training mode (TorchScript training=TrainingMode.TRAINING, or a model not in eval()) has
Dropout with training_mode=True: its outputs are random. The gate compared two random draws and passed a 2x
difference as "float32 conditioning" (onnx's float64 evaluator draws other masks), and wrote the result. Such a
file is refused in one line (exit 2), as the torch front end refuses random ops; inference Dropout still runs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _model(training: bool, ratio: float = 0.2, as_constant_node: bool = True):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(ratio, np.float32), "ratio")]
    nodes = []
    if as_constant_node:   # as the TorchScript exporter writes it with do_constant_folding=False
        nodes.append(helper.make_node("Constant", [], ["mode"], name="/drop/Constant",
                                      value=numpy_helper.from_array(np.array(training), "v")))
    else:
        inits.append(numpy_helper.from_array(np.array(training), "mode"))
    nodes += [helper.make_node("Conv", ["x", "w1"], ["c"], name="/conv1/Conv", pads=[1] * 4),
              helper.make_node("Relu", ["c"], ["r"], name="/act/Relu"),
              helper.make_node("Dropout", ["r", "ratio", "mode"], ["d"], name="/drop/Dropout"),
              helper.make_node("Conv", ["d", "w2"], ["y"], name="/conv2/Conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("as_constant_node", [True, False])
def test_training_dropout_is_refused_in_one_line(tmp_path, as_constant_node):
    p, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_model(True, as_constant_node=as_constant_node), p)
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(p), "-o", str(out), "--collapse", "act"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists(), (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "random" in lines[0] and "Dropout" in lines[0] and "eval" in lines[0]


def test_random_op_is_refused_by_the_library():
    m = _model(False)
    n = m.graph.node[-1]
    noise = helper.make_node("RandomNormalLike", ["c"], ["n"], name="noise")
    add = helper.make_node("Add", ["c", "n"], ["c2"], name="add")
    m.graph.node[2].input[0] = "c2"   # Relu reads c + noise
    m.graph.node.insert(2, noise)
    m.graph.node.insert(3, add)
    assert n.op_type == "Conv"
    with pytest.raises(CollapseError, match="random numbers"):
        cp.collapse(m, collapse=["act"])


@pytest.mark.parametrize("training,ratio", [(False, 0.2), (True, 0.0)])
def test_inference_dropout_still_collapses(training, ratio):
    res = cp.collapse(_model(training, ratio), collapse=["act"])
    assert res.passed and res.report["collapsed"] == 1
