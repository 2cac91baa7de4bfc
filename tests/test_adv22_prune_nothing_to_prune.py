"""A ratio prune of a model with no prunable channel (adversarial round 22, H68): it ran, removed nothing and wrote
the model with a warning, exit 0. It is a request that cannot be met: one line, exit 2, nothing written, on the CLI,
the library (ONNX and torch) and prune_module."""
from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch
from onnx import TensorProto as TP, helper as h, numpy_helper as nh
import numpy as np
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module


def _layernorm_model() -> onnx.ModelProto:
    """x -> Gemm -> Relu -> + x -> LayerNorm: the only channel axis is the normalised residual stream (frozen)."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             nh.from_array(np.ones(8, np.float32), "g"), nh.from_array(np.zeros(8, np.float32), "b")]
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"], name="fc"), h.make_node("Relu", ["m"], ["r"], name="act"),
             h.make_node("Add", ["x", "r"], ["s"], name="add"),
             h.make_node("LayerNormalization", ["s", "g", "b"], ["y"], name="ln", axis=-1)]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, 3, 8])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_cli_refuses_a_ratio_prune_with_nothing_to_prune(tmp_path):
    src = tmp_path / "ln.onnx"
    onnx.save(_layernorm_model(), src)
    out = tmp_path / "out.onnx"
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "-o", str(out), "--prune-ratio", "0.3",
                        "--report", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no channel of this model can be pruned" in lines[0], r.stderr
    assert "ln: normalises over the channel axis" in lines[0] and "drop --prune-ratio" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ln.onnx"]   # nothing written, no temp file left
    # ratio 0 asks for nothing: still runs
    r0 = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "-o", str(out), "--prune-ratio", "0",
                         "-q"], capture_output=True, text=True)
    assert r0.returncode == 0 and out.exists(), r0.stderr


class _OutputConv(nn.Module):
    """Every conv output is the model output or read by a shared module: no group can lose a channel."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_torch_refuses_a_ratio_prune_with_nothing_to_prune():
    torch.manual_seed(0)
    m, x = _OutputConv().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match="no channel of this model can be pruned"):
        prune_module(m, x, ratio=0.3)
    with pytest.raises(CollapseError, match="no channel of this model can be pruned"):
        cp.collapse(m, example_inputs=(x,), prune_ratio=0.3)
    _, rep = prune_module(m, x, ratio=0.0)   # ratio 0: nothing asked, nothing refused
    assert rep["ratio"]["removed_channels"] == 0
