"""--target-speedup tried a skipped activation again only with the two latest skipped ones: a MobileNetV2
block merges into one conv only when both of its ReLU6 go, and with scores that do not rank a block's two
activations side by side (random calibration data, per-layer scores) no pair was ever tried: torchvision's
MobileNetV2 at 224 got "0 collapsed, 35 skipped, predicted 1.000x". The skipped activations next to an
item's linear region are now its first companions (speedup.RegionPricer.partners)."""
from __future__ import annotations

import torch
from torch import nn

import collapse_passes as cp
from conftest import export_quiet


class _Block(nn.Module):
    def __init__(self, c=8, e=6):
        super().__init__()
        self.expand, self.act1 = nn.Conv2d(c, c * e, 1), nn.ReLU6()
        self.dw, self.act2 = nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e), nn.ReLU6()
        self.project = nn.Conv2d(c * e, c, 1)

    def forward(self, x):
        return self.project(self.act2(self.dw(self.act1(self.expand(x)))))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[_Block() for _ in range(4)]).eval()


def test_a_blocks_two_activations_are_tried_together_whatever_their_ranks(tmp_path):
    path = export_quiet(_net(), tmp_path / "m.onnx", (1, 3, 16, 16), dynamo=False)
    # every first activation ranks before every second one: a block's pair is 4 apart in the ranking
    scores = {f"{b}.act{k}": 0.1 * b + (0.0 if k == 1 else 1.0) for b in range(1, 5) for k in (1, 2)}
    r = cp.collapse(path, scores=scores, target_speedup=1.3)
    assert r.passed
    collapsed = sorted(a["key"] for a in r.report["activations"] if a["collapsed"])
    assert collapsed and len(collapsed) % 2 == 0
    assert all(f"{k.split('.')[0]}.act1" in collapsed and f"{k.split('.')[0]}.act2" in collapsed for k in collapsed)
    assert len(r.report["merges"]) >= len(collapsed) // 2
