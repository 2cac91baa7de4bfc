"""Round-15 (H9): a layer the passes rebuild (conv + BatchNorm folded, convs merged, a residual absorbed) from
parameters that are all frozen (requires_grad=False: a frozen backbone) is frozen too. The new modules' parameters
were all trainable, so fine-tuning the collapsed model trained the backbone the user had frozen."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()
        self.c3, self.b3, self.r3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x)))
        x = self.r3(self.b3(self.c3(x)) + x)
        # a max pool: a global average pool would go before the frozen 1x1 convs (fx/passes/hoist_global_pool.py)
        # and merge them with the trainable fc, a layer rightly trainable (the test below)
        return self.fc(x.amax((2, 3)))


def _net(frozen):
    torch.manual_seed(0)
    m = Net().eval()
    for name in frozen:
        for p in m.get_submodule(name).parameters():
            p.requires_grad_(False)
    return m


def _flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("as_program", [False, True])
def test_folded_and_merged_layers_of_a_frozen_backbone_stay_frozen(as_program):
    m, x = _net(["c1", "b1", "c2", "b2", "c3", "b3"]), torch.randn(1, 3, 8, 8)
    res = cp.collapse(torch.export.export(m, (x,)) if as_program else m, collapse=["r2", "r3"],
                      example_inputs=None if as_program else (x,))
    out = res.model.module() if as_program else res.model
    flags = _flags(out)
    assert res.report["folds"] and res.report["merges"]   # the layers were rebuilt
    frozen = [n for n, v in flags.items() if not v]
    trainable = [n for n, v in flags.items() if v]
    assert frozen and all(n.startswith("fc") for n in trainable), flags
    with torch.no_grad():
        torch.testing.assert_close(out(x), res.requested(x), rtol=1e-4, atol=1e-5)


def test_a_merge_of_a_frozen_and_a_trainable_layer_is_trainable():
    m, x = _net(["c1", "b1"]), torch.randn(1, 3, 8, 8)
    res = cp.collapse(m, collapse=["r1", "r2", "r3"], example_inputs=(x,))
    assert res.report["merges"]
    assert all(_flags(res.model).values())   # every rebuilt layer reads a trainable parameter


def test_nothing_frozen_stays_trainable():
    m, x = _net([]), torch.randn(1, 3, 8, 8)
    res = cp.collapse(m, collapse=["r2"], example_inputs=(x,))
    assert all(_flags(res.model).values())
