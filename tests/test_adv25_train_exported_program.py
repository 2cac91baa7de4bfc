"""iterative_collapse of a torch.export program is one line with a way out (adversarial round 25, H77).

ep.module() is in training mode and refuses .eval() ("Calling eval() is not supported yet"): the loop's "the model
is in training mode; call model.eval() first" was a dead end. Forced to eval mode it failed on the guarded batch size
("Guard failed: x.size()[0] == 2"), and a program cannot be fine-tuned by the loop anyway (BatchNorm frozen,
activations as function calls). The ExportedProgram itself got "expects a torch.nn.Module" with no way out."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.train import iterative_collapse


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 3)).eval()
    return torch.export.export(m, (torch.randn(2, 3, 8, 8),))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


@pytest.mark.parametrize("kind", ["program", "module"])
def test_an_exported_program_is_one_line_naming_the_way_out(program, kind):
    model = program if kind == "program" else program.module()
    with pytest.raises(CollapseError) as info:
        iterative_collapse(model, "easier", _data(), _data(), max_rounds=1, steps_per_round=1, predict=False)
    msg = str(info.value)
    assert "torch.export program" in msg and "nn.Module it was exported from" in msg, msg
    assert "call model.eval()" not in msg
