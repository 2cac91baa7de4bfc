"""Report statistics on both front ends for a BatchNorm no exporter can fold (adversarial round 17):
BatchNorm1d after a Linear on 3-D input normalizes axis 1 (the sequence), not the Linear's features, so it
stays a BatchNormalization in every ONNX file; graph_stats counted it as folded (export_free_nodes took any
BN on a linear op's only output) and the torch report's depth was one op short of the file's (3 vs 4) and
its params 20 short. The fold pass itself refused it: the stats now use the fold pass's rule."""
from __future__ import annotations

import torch
import torch.nn as nn

import collapse_passes as cp
from models.export import export_onnx

KEYS = ("params", "depth_ops", "depth_nonlinear", "activations")


class LinBN3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.act, self.fc2 = nn.Linear(8, 8), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(8, 8)

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(x))))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.act, self.c2 = nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.bn(self.c(x))))


def _eval(m):
    torch.manual_seed(0)
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


def test_bn_over_linear_sequence_axis_counts_in_torch_stats(tmp_path):
    m = _eval(LinBN3D())
    shape = (2, 5, 8)
    torch_stats = cp.collapse(m, collapse=[], example_inputs=(torch.randn(*shape),)).report["before"]
    export_onnx(m, tmp_path / "m.onnx", shape, dynamo=False)
    onnx_stats = cp.collapse(str(tmp_path / "m.onnx"), collapse=[]).report["before"]
    assert torch_stats["depth_ops"] == 4   # fc1, bn, relu, fc2 (was 3)
    assert {k: torch_stats[k] for k in KEYS} == {k: onnx_stats[k] for k in KEYS}


def test_bn_after_conv_still_free():
    stats = cp.collapse(_eval(ConvBN()), collapse=[], example_inputs=(torch.randn(1, 4, 6, 6),)).report["before"]
    assert stats["depth_ops"] == 3   # conv (+bn folded), relu, conv
