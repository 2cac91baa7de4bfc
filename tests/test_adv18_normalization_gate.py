"""The model the passes read (local functions inlined, fused contrib ops expanded) is checked against the file
as given. The requested semantics are built from it, so a rewrite there that changed the computation passed the
gate unseen: with nothing collapsed (the gate compared the result with the inlined model) and with a collapse
alike. Here the inliner is made to inline a function that shadows a standard op (the bug H26 fixed), which
writes another model; the gate must refuse it."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import collapse_passes as cp
from collapse_passes.errors import VerificationError
from collapse_passes.onnx import contrib

C = 4


def _model():
    """conv - Relu (a local function shadowing the standard Relu, body Sigmoid) - conv - loc.Act (a local function,
    body LeakyRelu) - conv: onnxruntime runs the standard Relu for the first, the function for the second."""
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((C, C, 1, 1)) / 2).astype(np.float32) for _ in range(3)]
    shadow = h.make_function("", "Relu", ["i"], ["o"], [h.make_node("Sigmoid", ["i"], ["o"])], [h.make_opsetid("", 17)])
    act = h.make_function("loc", "Act", ["i"], ["o"], [h.make_node("LeakyRelu", ["i"], ["o"], alpha=0.1)],
                         [h.make_opsetid("", 17)])
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
             h.make_node("Relu", ["c0"], ["a0"], name="shadowed"),
             h.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1"),
             h.make_node("Act", ["c1"], ["a1"], name="act", domain="loc"),
             h.make_node("Conv", ["a1", "w2"], ["y"], name="conv2")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, C, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, C, 6, 6])],
                     [nh.from_array(w, f"w{i}") for i, w in enumerate(ws)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("loc", 1)], functions=[shadow, act])
    m.ir_version = 9
    return m


def test_right_normalization_verifies_and_is_reported():
    res = cp.collapse(_model(), collapse=[])
    norm = res.report["verification"]["normalization"]
    assert norm["passed"] and norm["max_abs"] <= 1e-5


@pytest.mark.parametrize("collapse", [False, True], ids=["nothing_collapsed", "leakyrelu_collapsed"])
def test_wrong_normalization_is_refused(monkeypatch, collapse):
    # the old rule: every local function inlined, the one shadowing Relu too (its Sigmoid body is not what runs)
    monkeypatch.setattr(contrib, "_standard_op", lambda name, domain: False)
    keys = cp.list_keys(_model())
    assert len(keys) == 1   # the LeakyRelu (the shadowed Relu became a Sigmoid)
    collapse = [keys[0]["key"]] if collapse else []
    with pytest.raises(VerificationError, match="differs from the file as given"):
        cp.collapse(_model(), collapse=collapse)


def test_wrong_normalization_written_only_with_force(monkeypatch):
    monkeypatch.setattr(contrib, "_standard_op", lambda name, domain: False)
    res = cp.collapse(_model(), collapse=[], force=True)
    assert not res.passed
    assert not res.report["verification"]["normalization"]["passed"]
