"""An ExportedProgram's own graph_module takes its lifted parameters and buffers as inputs (p_*, b_*): given the
user's inputs alone, the shape run failed and the line said "pass inputs the model accepts", which pointed nowhere;
it now says to pass the program or ep.module(). A plain model given a wrong input keeps the old way out."""
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).mean((2, 3)))


def test_a_programs_graph_module_points_to_the_program():
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(Net().eval(), (x,))
    with pytest.raises(CollapseError, match=r"ExportedProgram's graph_module.*\(p_conv_weight, \.\.\.\): pass the "
                                            r"ExportedProgram itself, or ep\.module\(\)"):
        cp.collapse(ep.graph_module, collapse=["act"], example_inputs=(x,))
    assert cp.collapse(ep.module(), collapse=["act"], example_inputs=(x,)).model is not None


def test_a_wrong_input_to_a_plain_model_keeps_its_way_out():
    with pytest.raises(CollapseError, match="pass inputs the model accepts"):
        cp.collapse(Net().eval(), collapse=["act"], example_inputs=(torch.randn(2, 5, 8, 8),))
