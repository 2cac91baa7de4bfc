"""max_accuracy_drop read as points (adversarial round 22, H68): the default accuracy is a fraction in [0, 1], so
max_accuracy_drop=1.5 ("1.5 points") accepted every collapse whatever it cost, without a word. With the default
accuracy a value above 1 is one CollapseError naming the fraction; 1.0 (any drop) and a user's evaluate on its own
scale still run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse


def _data():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    return x, (x[:, 0] > 0).long()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("drop", [1.5, 5, 100.0])
def test_a_drop_above_one_with_the_default_accuracy_is_refused(drop):
    x, y = _data()
    with pytest.raises(CollapseError, match=r"fraction of top-1 accuracy \(0.01 = 1 point\)"):
        iterative_collapse(_net(), "easier", (x, y), (x, y), max_accuracy_drop=drop, max_rounds=1,
                           steps_per_round=1, predict=False)


def test_one_and_a_users_scale_still_run():
    x, y = _data()
    res = iterative_collapse(_net(), "easier", (x, y), (x, y), max_accuracy_drop=1.0, max_rounds=1,
                             steps_per_round=1, predict=False)
    assert res.collapsed   # 1.0: any drop accepted, the one site collapsed
    res = iterative_collapse(_net(), "easier", (x, y), (x, y), max_accuracy_drop=50.0, max_rounds=1,
                             steps_per_round=1, predict=False, evaluate=lambda m: 100.0)   # percent: a user's scale
    assert res.collapsed
