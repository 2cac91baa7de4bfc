"""Channel pruning on ops whose meaning the channel graph read wrong or not at all (H30, 2026-11-29).

* torch.add(x, c, alpha=a) / torch.div(x, c, rounding_mode=...) were read as x + c and x / c: a constant channel
  through them was folded into the next conv with the wrong value (prune_module 0.57 off, collapse() refused).
* A module whose parameter the graph also reads directly (F.linear(w, self.fc.weight)) was sliced under that reader:
  collapse() died in a ShapeProp traceback.
* nn.AvgPool2d without padding (ONNX AveragePool, how both exporters write AdaptiveAvgPool2d(4)) stopped a constant
  channel on ONNX while torch read AdaptiveAvgPool2d through: the two front ends removed different channels.
* x.reshape(x.shape[0], -1) froze the group (any read of x.shape did), while x.size(0) and the ONNX export
  (Shape -> Gather 0) did not; a read of the channel count (x.shape[1]) still freezes it.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module
from models.export import export_onnx


class _ConstThrough(nn.Module):
    """c1's filter 2 is zero (a constant 0.5 channel), passed through `op` and a ReLU into c2."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.c1.weight[2] = 0
            self.c1.bias[2] = 2.5

    def forward(self, x):
        y = self.c1(x)
        y = torch.add(y, 1.0, alpha=3.0) if self.op == "alpha" else torch.div(y, 2.0, rounding_mode="floor")
        return self.c2(F.relu(y))


@pytest.mark.parametrize("op", ["alpha", "floor"])
def test_binary_keyword_arguments_are_not_ignored(op):
    torch.manual_seed(0)
    m = _ConstThrough(op).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        ref = m(x)
        pruned, _ = prune_module(m, x)
        assert torch.allclose(pruned(x), ref, atol=1e-5), (pruned(x) - ref).abs().max()
    res = cp.collapse(m, example_inputs=(x,))   # raised VerificationError (0.57 off)
    assert res.passed


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c3 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)
        with torch.no_grad():
            self.c1.weight[2] = 0
            self.c1.bias[2] = 0.5

    def forward(self, x):
        y = self.c1(x).mean((2, 3))
        w = self.c3(x).mean((2, 3))
        return self.fc2(F.relu(self.fc(y)) + F.linear(w, self.fc.weight))


def test_parameter_read_elsewhere_freezes_its_module():
    torch.manual_seed(0)
    m = _Tied().eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        ref = m(x)
    pruned, rep = prune_module(m, x)
    with torch.no_grad():
        assert torch.allclose(pruned(x), ref, atol=1e-5)
    assert any("fc.weight" in f["reason"] for f in rep["frozen_ops"]), rep["frozen_ops"]
    res = cp.collapse(m, example_inputs=(x,))   # a ShapeProp RuntimeError traceback
    assert res.passed


class _PoolHead(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.pool = pool
        self.fc = nn.Linear(8 * 4 * 4, 5)
        with torch.no_grad():
            self.c1.weight[1] = 0
            self.c1.bias[1] = 0.7   # a nonzero constant: a pool that counts padding would scale it at the border

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(self.pool(F.relu(self.c1(x)))), 1))


@pytest.mark.parametrize("pool,removed", [(nn.AdaptiveAvgPool2d(4), 1), (nn.AvgPool2d(4), 1),
                                          (nn.AvgPool2d(3, 4, padding=1, count_include_pad=False), 1),
                                          (nn.AvgPool2d(3, 4, padding=1), 0)])
@pytest.mark.parametrize("dynamo", [False, True])
def test_average_pool_passes_constants_on_both_front_ends(tmp_path, pool, removed, dynamo):
    torch.manual_seed(0)
    m = _PoolHead(pool).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(m, tmp_path / "m.onnx", (1, 3, 16, 16), dynamo=dynamo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = cp.collapse(m, example_inputs=(x,))
        ro = cp.collapse(path)
    assert rt.passed and ro.passed
    counts = (rt.report["pruning"]["removed_channels"], ro.report["pruning"]["removed_channels"])
    assert counts == (removed, removed), counts


class _ShapeRead(nn.Module):
    def __init__(self, channels_read):
        super().__init__()
        self.channels_read = channels_read
        self.c = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 16, 4)
        with torch.no_grad():
            self.c[1].running_var.fill_(2.0)
            self.c[1].weight[[1, 5]] = 0.0
            self.c[1].bias[[1, 5]] = -1.0

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.c(x), 4)
        return self.fc(y.reshape(y.shape[0], y.shape[1] * 16 if self.channels_read else -1))


@pytest.mark.parametrize("channels_read,removed", [(False, 2), (True, 0)])
def test_shape_read_of_the_batch_only(channels_read, removed):
    m = _ShapeRead(channels_read).eval()
    x = torch.randn(2, 3, 16, 16)
    pruned, rep = prune_module(m, x)
    assert rep["removed_channels"] == removed, rep
    with torch.no_grad():
        assert torch.allclose(pruned(x), m(x), atol=1e-5)
