"""A TorchScript submodule is one line in prune_module and iterative_collapse too (adversarial round 23, H71).

Round 22 made collapse() refuse a TorchScript model or submodule in one line (it was a TypeError traceback); the
other torch entry points kept the traceback: prune_module a TypeError out of keep_module_state ("contains():
incompatible function arguments"), iterative_collapse a RuntimeError out of the score hooks ("register_forward_pre_hook
is not supported on ScriptModules"). Both now say what collapse() says (fx/api.refuse_torchscript)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module
from collapse_passes.train import iterative_collapse


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2.0


def test_prune_module_refuses_a_scripted_submodule_in_one_line():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), torch.jit.script(_Scale())).eval()
    with pytest.raises(CollapseError, match=r"submodule '3' is a TorchScript module .*pass the nn\.Module it was "
                                            r"made from, or export the model to ONNX"):
        prune_module(m, torch.randn(2, 3, 8, 8), ratio=0.25)


def test_iterative_collapse_refuses_a_scripted_submodule_in_one_line():
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), torch.jit.script(_Scale())).eval()
    with pytest.raises(CollapseError, match=r"submodule '3' is a TorchScript module .*made from$"):
        iterative_collapse(m, "easier", (x, y), (x, y), max_rounds=1, steps_per_round=1, predict=False)
