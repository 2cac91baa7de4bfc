"""max_accuracy_drop=float("inf") (no accuracy limit) runs, as before the round-22 check (adversarial round 23, H71).

The check that refuses a drop above 1 with the default accuracy (1.5 meant as points) also refused inf, with the line
"pass inf for inf points": inf reads as no number of points, and says "any drop" as 1.0 does."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse


def _run(drop):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    return iterative_collapse(net, "easier", (x, y), (x, y), max_accuracy_drop=drop, max_rounds=1,
                              steps_per_round=1, predict=False)


def test_an_infinite_drop_accepts_any_drop():
    assert _run(float("inf")).collapsed


def test_points_are_still_refused():
    with pytest.raises(CollapseError, match=r"pass 0.015 for 1.5 points"):
        _run(1.5)
