"""prune_module on example inputs the module does not take (adversarial round 22, H68): a ShapeProp traceback
(RuntimeError "ShapeProp error for: node=%conv1"), where collapse() on the same inputs says it in one line."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("x, shown", [(torch.randn(1, 5, 8, 8), "(1, 5, 8, 8)"),
                                      (torch.randn(1, 3, 8, 8, dtype=torch.float64), "float64")])
@pytest.mark.parametrize("ratio", [None, 0.3])
def test_wrong_example_inputs_are_one_line(x, shown, ratio):
    m = _net()
    with pytest.raises(CollapseError, match="does not run on example_inputs") as err:
        prune_module(m, x, ratio=ratio)
    assert shown in str(err.value) and "\n" not in str(err.value)


def test_right_inputs_still_prune():
    m = _net()
    pruned, rep = prune_module(m, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert rep["ratio"]["removed_channels"] > 0
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)
