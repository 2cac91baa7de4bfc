"""--target-speedup S with --prune-ratio R plans on the pruned model and counts the prune (H16, 2026-11-29).

The planner priced collapses on the unpruned input and the ratio prune ran after it: on a random ResNet-50 at
0.3 (half the MACs) `--target-speedup 1.5` collapsed an activation for 1.002x and said "target not reached",
although the model it wrote was predicted 1.94x. Now the prune is done first and the speed-up is measured
against the input, so a prune that meets S collapses nothing, and a larger S starts from the prune's gain.
"""
from __future__ import annotations

import torch
from torch import nn

import collapse_passes as cp
from conftest import export_quiet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.c3, self.b3, self.r3 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x)))
        x = self.r3(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def _model(tmp_path):
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        for bn in (m.b1, m.b2, m.b3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return export_quiet(m.eval(), tmp_path / "m.onnx", (1, 3, 16, 16), False)


def _note(r):
    return next(n for n in r.report["notes"] if n.startswith("--target-speedup"))


def test_prune_that_meets_the_target_collapses_nothing(tmp_path):
    path = _model(tmp_path)
    scores = {"r1": 0.1, "r2": 0.2, "r3": 0.3}
    r = cp.collapse(path, scores=scores, target_speedup=1.5, prune_ratio=0.5, check=1)
    before, after = r.report["before"]["macs"], r.report["after"]["macs"]
    assert before / after > 2.5   # the prune alone: ~ (1/2)^2 of the 3x3 convs
    assert r.report["collapsed"] == 0, _note(r)
    assert "target not reached" not in _note(r)
    predicted = float(_note(r).split("predicted speed-up ")[1].split("x")[0])
    assert predicted > 2.0, _note(r)


def test_prediction_counts_the_prune_when_collapsing(tmp_path):
    path = _model(tmp_path)
    scores = {"r1": 0.1, "r2": 0.2, "r3": 0.3}
    r = cp.collapse(path, scores=scores, target_speedup=50.0, prune_ratio=0.5, check=1)
    predicted = float(_note(r).split("predicted speed-up ")[1].split("x")[0])
    # the written model does a fraction of the input's MACs: the prediction must be at least the prune's share
    assert predicted >= 0.9 * r.report["before"]["macs"] / r.report["after"]["macs"], _note(r)
