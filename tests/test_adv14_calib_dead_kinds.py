"""--prune-calib-dead removed only ReLU channels: MobileNetV2's ReLU6 (Clip from 0) and MobileNetV3's HardSwish
channels that are 0 on every calibration sample were kept without a word (matrix run of 2026-11-29: a
MobileNetV2 with five expand channels planted dead: 0 removed). A channel of HardSwish that is only never above 0
(values in (-0.375, 0)) is not constant and stays; a run that removes nothing says so."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from collapse_passes import api
from collapse_passes.pruning.fx_adapter import prune_module
from conftest import export_quiet


class _Block(nn.Module):
    """expand 1x1 -> act -> depthwise 3x3 -> act -> project 1x1 (an inverted residual without the skip)."""

    def __init__(self, act):
        super().__init__()
        self.expand, self.a1 = nn.Conv2d(3, 8, 1), act()
        self.dw, self.a2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), act()
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.project(self.a2(self.dw(self.a1(self.expand(x)))))


def _model(act, bias):
    torch.manual_seed(0)
    m = _Block(act).eval()
    with torch.no_grad():
        m.expand.weight.mul_(0.1)
        m.expand.bias.fill_(1.0)   # the others on: positive everywhere, through the depthwise conv too
        m.expand.bias[:3] = bias   # channels 0-2 below the activation's kink on any input near N(0, 1)
        m.dw.weight.abs_()
        m.dw.bias.fill_(1.0)
    return m


def _calib(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, input=np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32))
    return str(p)


def test_relu6_and_hardswish_channels_at_zero_on_the_data_are_removed(tmp_path):
    for act, bias in ((nn.ReLU6, -20.0), (nn.Hardswish, -20.0)):
        path = export_quiet(_model(act, bias), tmp_path / f"{act.__name__}.onnx", (1, 3, 12, 12), False)
        res = api.collapse(path, calib=_calib(tmp_path), prune_calib_dead=True)
        pr = res.report["pruning"]
        assert pr["removed_channels"] == 3, act.__name__
        assert res.report["passed"]


def test_hardswish_channels_negative_but_not_zero_are_kept(tmp_path):
    # bias -1.5: HardSwish(x) in (-0.375, 0) -- never above 0, yet not a constant channel
    path = export_quiet(_model(nn.Hardswish, -1.5), tmp_path / "hs.onnx", (1, 3, 12, 12), False)
    res = api.collapse(path, calib=_calib(tmp_path), prune_calib_dead=True)
    assert not res.report["pruning"].get("data_dependent_channels")
    assert any("--prune-calib-dead removed no channel" in w for w in res.report["warnings"])


def test_torch_prune_module_removes_relu6_channels_at_zero_on_the_data():
    m = _model(nn.ReLU6, -20.0)
    x = torch.randn(1, 3, 12, 12)
    batches = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    pruned, report = prune_module(m, x, calib=batches)
    assert pruned.expand.out_channels == 5
    torch.testing.assert_close(pruned(x), m(x), rtol=1e-4, atol=1e-5)
