"""A traced model whose own input is named like a lifted buffer (b_mask, p_scale) is no ExportedProgram's graph_module
(adversarial round 23, H71). fx/graph.program_graph_way_out matched any placeholder named p_* / b_* / c_*, so a
symbolic_trace'd model given too few inputs was told "this is an ExportedProgram's graph_module ... pass the
ExportedProgram itself", which it is not, instead of which input is missing. The program's lifted inputs come first,
each with its example value (node.meta["val"]); a program's own graph_module keeps its way out."""
import pytest
import torch
import torch.fx as fx
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, b_mask):
        return torch.relu(self.conv(x)) * b_mask


def test_a_traced_models_input_named_b_is_named_missing():
    gm = fx.symbolic_trace(Masked().eval())
    with pytest.raises(CollapseError) as info:
        cp.collapse(gm, example_inputs=(torch.randn(1, 3, 8, 8),))
    msg = str(info.value)
    assert "ExportedProgram" not in msg, msg
    assert "b_mask" in msg and "give every input in example_inputs" in msg, msg


def test_a_programs_graph_module_keeps_its_way_out():
    x, mask = torch.randn(1, 3, 8, 8), torch.ones(1, 4, 6, 6)
    ep = torch.export.export(Masked().eval(), (x, mask))
    with pytest.raises(CollapseError, match=r"ExportedProgram's graph_module.*\(p_conv_weight, \.\.\.\)"):
        cp.collapse(ep.graph_module, example_inputs=(x, mask))
