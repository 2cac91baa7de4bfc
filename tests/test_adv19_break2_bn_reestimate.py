"""The default fine-tuning's BatchNorm re-estimation (train/loop._reestimate_bn) reset every tracking BatchNorm
and re-averaged it over the training batches; one those batches never reach (an eval-only head, a branch
another input kind takes) kept reset_running_stats' mean 0 / variance 1 instead of its own statistics, so the
model returned computed garbage on that path. Such a BatchNorm now keeps the statistics it had (H45,
2026-11-29)."""
from __future__ import annotations

import torch
from torch import nn

from collapse_passes.train.loop import default_fine_tune


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.r = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.head, self.aux = nn.Linear(4, 3), nn.BatchNorm1d(3)
        self.use_aux = False   # the training batches never run self.aux

    def forward(self, x):
        y = self.head(self.r(self.bn(self.c(x))).mean((2, 3)))
        return self.aux(y) if self.use_aux else y


def test_a_batchnorm_no_training_batch_reaches_keeps_its_statistics():
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():
        m.aux.running_mean.fill_(5.0)
        m.aux.running_var.fill_(9.0)
        m.bn.running_mean.fill_(7.0)
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(3)]
    default_fine_tune(batches, steps=2)(m)
    assert m.aux.running_mean.tolist() == [5.0] * 3 and m.aux.running_var.tolist() == [9.0] * 3
    assert int(m.bn.num_batches_tracked) == 3 and float(m.bn.running_mean.abs().max()) < 3   # re-estimated
