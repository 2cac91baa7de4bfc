"""One collapse() runs the input model once for the size values ONNX inference lost, not once per reader.

The report's "before" (analysis.measured_graph) and the passes' first pass (fold_shapes) fold the same run-time size
arithmetic of the same input; where shape inference loses a shape (a Pad by sizes computed at run time, as Swin's
window padding), each made its own onnxruntime session and run of the whole model: ~3.5 s each on a TorchScript
Swin-T at 224 (before 2026-11-30). Same values, same written model and report.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.onnx.passes import fold_static_shapes


def _model() -> onnx.ModelProto:
    """x (1, 4, 6, 6) -> Conv -> Relu -> Pad by (4 - W % 4) % 4 (computed from Shape) -> Reshape by the padded
    map's own Shape -> Conv: inference cannot give the Pad's output shape, the run can."""
    rng = np.random.default_rng(0)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)   # noqa: E731
    inits = [c("w1", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
             c("w2", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
             c("i3", np.int64(3)), c("four", np.int64(4)), c("zeros6", np.zeros(6, np.int64)),
             c("ax0", np.array([0], np.int64))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Shape", ["r1"], ["s"]),
        helper.make_node("Gather", ["s", "i3"], ["w"]),
        helper.make_node("Mod", ["w", "four"], ["wm"]),
        helper.make_node("Sub", ["four", "wm"], ["pr0"]),
        helper.make_node("Mod", ["pr0", "four"], ["pr"]),
        helper.make_node("Unsqueeze", ["pr", "ax0"], ["pr1"]),
        helper.make_node("Concat", ["zeros6", "pr1", "pr1"], ["pads0"], axis=0),
        helper.make_node("Slice", ["pads0", "ax0", "eight"], ["pads"]),
        helper.make_node("Pad", ["r1", "pads"], ["p"]),
        helper.make_node("Shape", ["p"], ["ps"]),
        helper.make_node("Reshape", ["p", "ps"], ["q"]),
        helper.make_node("Conv", ["q", "w2"], ["y"], name="conv2"),
    ]
    inits.append(c("eight", np.array([8], np.int64)))
    g = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_input_is_run_once_for_its_size_values(monkeypatch):
    model = _model()
    runs = []
    real = fold_static_shapes.run_values

    def counted(m, names):
        runs.append(list(names))
        return real(m, names)

    monkeypatch.setattr(fold_static_shapes, "run_values", counted)
    res = cp.collapse(model, collapse=["relu1"])
    assert res.passed
    assert len(runs) == 1, runs   # the passes' fold_shapes and the report's "before" share it
    # outside collapse() nothing is kept: a second call runs again
    cp.collapse(model, collapse=["relu1"])
    assert len(runs) == 2
