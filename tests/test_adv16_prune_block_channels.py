"""A ratio prune that leaves channel counts off multiples of 8 says so (H16, 2026-11-29).

onnxruntime's CPU convs run in their blocked layout (NCHWc) only with counts that are multiples of 8; the
others fall back to a slower path. MobileNetV3-Large at 224 pruned to 0.3 with the default round_to 1 did
2.6x fewer MACs (the cost model predicted 2.27x) and ran at 0.86x the unpruned speed (onnxruntime, one thread);
with --round-to 8 it ran 1.83x faster. The report now warns and names --round-to 8 (both front ends).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module
from conftest import export_quiet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.dw, self.b2 = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.c3(torch.relu(self.b2(self.dw(x))))


def _net():
    torch.manual_seed(0)
    return Net().eval()


def _block_warnings(ws):
    return [w for w in ws if "not multiples of 8" in w]


def test_onnx_warns_off_block_counts_and_round_to_8_is_quiet(tmp_path):
    path = export_quiet(_net(), tmp_path / "m.onnx", (1, 3, 8, 8), False)
    r = cp.collapse(path, prune_ratio=0.3, check=1)
    (w,) = _block_warnings(r.report["warnings"])
    assert "--round-to 8" in w and "32 -> " in w
    r8 = cp.collapse(path, prune_ratio=0.3, round_to=8, check=1)
    assert r8.report["pruning"]["ratio"]["removed_channels"] > 0
    assert not _block_warnings(r8.report["warnings"])


def test_torch_front_ends_warn_too():
    m, x = _net(), torch.randn(1, 3, 8, 8)
    r = cp.collapse(m, prune_ratio=0.3, example_inputs=(x,), check=1)
    assert _block_warnings(r.report["warnings"])
    assert not _block_warnings(cp.collapse(m, prune_ratio=0.3, round_to=8, example_inputs=(x,),
                                           check=1).report["warnings"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune_module(m, x, ratio=0.3)
    assert _block_warnings([str(c.message) for c in caught])
