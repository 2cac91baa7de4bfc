"""The loop's `stopped` says the target speed-up was reached when the last round allowed reached it (adversarial
round 25, H77).

The max_rounds check came first: a run whose last round reached target_speedup reported "max_rounds", as a run that
missed it does (digits MobileNetV3 layout, 6 rounds, target 1.3: predicted 1.32x, stopped "max_rounds")."""
from __future__ import annotations

import torch
from torch import nn

from collapse_passes.train import iterative_collapse


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def test_a_target_reached_in_the_last_round_is_said():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    # collapsing one Hardswish (priced per element, it fuses into no conv) buys a predicted speed-up > 1.0001
    res = iterative_collapse(_net(), "easier", (x, y), (x, y), max_rounds=1, steps_per_round=0, max_accuracy_drop=1.0,
                             target_speedup=1.0001)
    assert len(res.collapsed) == 1 and res.predicted_speedup >= 1.0001
    assert res.stopped == "target speed-up 1.0001 reached", res.stopped


def test_max_rounds_is_said_when_the_target_is_missed():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    res = iterative_collapse(_net(), "easier", (x, y), (x, y), max_rounds=1, steps_per_round=0, max_accuracy_drop=1.0,
                             target_speedup=50.0)
    assert len(res.collapsed) == 1 and res.predicted_speedup < 50.0
    assert res.stopped == "max_rounds", res.stopped
