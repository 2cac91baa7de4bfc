"""A torch conv that absorbed a removed constant channel through its zero padding holds that input size's
borders (H16, 2026-11-29).

prune_module / collapse(nn.Module) turned it into a `ConvWithBiasMap` that added its map whatever the input:
run at another size, a ResNet-50 pruned at 64 raised a bare "size of tensor a (24) must match ... (16)", and a
stride-2 conv pruned at 7 x 7 and run at 8 x 8 (same output size) added the wrong borders silently. It now refuses
another spatial size with one line, as the merge's PaddedConv does, and the report says a bias map was made.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.b1(self.c1(x))))


def _model():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        for c in (1, 3, 5):   # relu(beta) > 0 everywhere: constants read through c2's padding (3 x 36 weights
            m.b1.weight[c] = 0.0   # saved, a 4 x 4 x 4 bias map added at a 7 x 7 input: the removal pays)
            m.b1.bias[c] = 0.7
    return m.eval()


def _unpruned_reference(m, x):
    with torch.no_grad():
        return m(x)


def test_pruned_module_refuses_another_size():
    """Stride 2, pad 1: 7 x 7 and 8 x 8 inputs both give 4 x 4 outputs."""
    m = _model()
    pm, rep = prune_module(m, torch.randn(1, 3, 7, 7))
    assert rep["removed_channels"] == 3
    assert any("bias map" in n for n in rep["notes"])
    x = torch.randn(2, 3, 7, 7)   # another batch at the planned size: exact
    torch.testing.assert_close(pm(x), _unpruned_reference(m, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"spatial size \(7, 7\).*got \(8, 8\)"):
        pm(torch.randn(1, 3, 8, 8))   # same output size (4 x 4): was silently wrong at the borders


def test_collapse_result_refuses_another_size():
    m = _model()
    res = cp.collapse(m, example_inputs=(torch.randn(1, 3, 7, 7),), check=1)
    assert res.report["pruning"]["removed_channels"] == 3
    with pytest.raises(ValueError, match=r"spatial size \(7, 7\).*got \(12, 12\)"):
        res.model(torch.randn(1, 3, 12, 12))   # was a bare broadcast RuntimeError
