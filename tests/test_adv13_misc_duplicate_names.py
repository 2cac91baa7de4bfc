"""Nodes sharing a name (onnx.checker accepts it; ONNX's IR and onnxruntime do not): the run ended in
graph-surgeon's multi-line node dumps and "onnxruntime cannot load the model". Names carry no
semantics, so a repeated name gets a suffix at load (as a nameless node gets one) and the run works."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.cli import main


def _dup_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{i}")
         for i, s in enumerate([(8, 3, 3, 3), (8, 8, 3, 3), (4, 8, 1, 1)])]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["d"], name="relu"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="conv_1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], w)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)   # valid for the checker: only the names repeat
    return m


def test_cli_renames_repeated_node_names(tmp_path, capsys):
    src, out = tmp_path / "dup.onnx", tmp_path / "out.onnx"
    onnx.save(_dup_model(), src)
    assert main([str(src), "--list-keys"]) == 0
    keys = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert keys == ["relu", "relu_1"]
    assert main([str(src), "--collapse", "relu_1", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "share the same name" not in err and "cannot load" not in err
    result = onnx.load(out)
    names = [n.name for n in result.graph.node]
    assert len(names) == len(set(names))
    assert [n.op_type for n in result.graph.node].count("Relu") == 1
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_library_proto_with_repeated_names_is_not_modified():
    m = _dup_model()
    before = m.SerializeToString()
    res = cp.collapse(m, collapse=["relu"])
    assert m.SerializeToString() == before
    names = [n.name for n in res.model.graph.node]
    assert len(names) == len(set(names))
