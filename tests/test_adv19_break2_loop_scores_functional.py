"""The training loop scores its sites every round through module_scores, and since module_scores also scores
activations called as functions (cd62bc3) each round traced the model and ran its batches a second time through
the traced graph, for scores of functional sites the loop never reads (its sites are activation modules,
train/sites.find_sites). module_scores(functional=False) skips the graph; the loop passes it (H45, 2026-11-29)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes.scores.torch_hooks as th
from collapse_passes.train.loop import _site_scores
from collapse_passes.train.sites import find_sites


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.c3 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.c2(self.a1(self.c1(x)))))


def test_the_loop_scores_its_module_sites_without_tracing(monkeypatch):
    torch.manual_seed(0)
    model = _Net().eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    full = th.module_scores(model, "easier", calib_batches=batches)
    assert set(full.scores) == {"a1", "relu()"}            # the functional site is scored for collapse()

    def no_trace(*a, **k):
        raise AssertionError("the loop's scoring traced the model")

    monkeypatch.setattr(th, "_trace", no_trace)
    monkeypatch.setattr(th._GraphSites, "_tapped", no_trace)
    sites = find_sites(model)
    got = _site_scores(model, "easier", batches, sites)
    assert set(got) == {"a1"} and abs(got["a1"] - full.scores["a1"]) < 1e-12
    only = th.module_scores(model, "easier", calib_batches=batches, functional=False)
    assert set(only.scores) == {"a1"}
