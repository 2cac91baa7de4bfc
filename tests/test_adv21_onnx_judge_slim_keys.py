"""Scores of a torch export fed to the same export after onnxslim (2026-11-29, H58, the ONNX CLI as an outside judge).

onnxslim drops the nodes' metadata, where the torch.export-based exporter keeps the module paths: the slimmed
ResNet-18's ReLUs are `node_relu`, `relu():0`, ... The scores saved from the raw export start with the stem's key
`relu` (a top-level module: no dot), and the refusal offered "did you mean 'relu()'" (the key of every root-level
call, all 17 ReLUs here) without a word of the lost paths, which only a key with a dot was told.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _slimmed() -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul -> Relu, node names as the torch.export exporter writes them, no metadata."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="node_linear"),
             helper.make_node("Relu", ["h0"], ["a0"], name="node_relu"),
             helper.make_node("MatMul", ["a0", "w1"], ["h1"], name="node_linear_1"),
             helper.make_node("Relu", ["h1"], ["y"], name="node_relu_1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("key", ["relu", "layer1.0.relu:0"])
def test_a_module_path_key_is_told_the_paths_are_gone(key):
    with pytest.raises(cp.CollapseError, match="carry no(ne| torch module path)") as e:
        cp.collapse(_slimmed(), scores={key: 0.0}, threshold=0.1)
    assert "onnxslim" in str(e.value)


def test_cli_says_it_in_one_line(tmp_path):
    onnx.save(_slimmed(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"relu": 0.0, "layer1.0.relu:0": 0.5}}))
    p = subprocess.run([sys.executable, "-m", "collapse_passes", str(tmp_path / "m.onnx"), "--scores",
                        str(tmp_path / "s.json"), "--remove", "1", "-o", str(tmp_path / "o.onnx")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "module path" in p.stderr and "--method" in p.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_model_with_module_paths_gets_near_matches_only():
    """A typo of a key the model has is not told about lost paths: the exporter's paths are there."""
    m = _slimmed()
    for n in m.graph.node:
        n.name = {"node_relu": "/relu/Relu", "node_relu_1": "/relu2/Relu"}.get(n.name, n.name)
    with pytest.raises(cp.CollapseError) as e:
        cp.collapse(m, scores={"rleu": 0.0}, threshold=0.1)
    assert "did you mean" in str(e.value) and "module path" not in str(e.value)
