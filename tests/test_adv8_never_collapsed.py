"""A key naming an activation no front end collapses (Tanh, Sigmoid) is told why, on both front ends. It
was "unknown layer key 'acts.tanh'; did you mean 'acts.hardtanh'?", which invites collapsing another layer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from conftest import export_quiet


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.hardtanh, self.tanh, self.gate = nn.Hardtanh(), nn.Tanh(), nn.Sigmoid()

    def forward(self, x):
        return self.gate(self.tanh(self.hardtanh(self.conv(x))))


@pytest.mark.parametrize("key,op", [("tanh", "tanh"), ("tanh:0", "tanh"), ("gate", "sigmoid")])
def test_a_key_of_an_activation_never_collapsed_says_so(tmp_path, key, op):
    m = _Net().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match=f"is a {op}, which has no linear regime") as torch_err:
        cp.collapse(m, collapse=[key], example_inputs=(x,))
    assert "did you mean" not in str(torch_err.value)
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=False)
    with pytest.raises(CollapseError, match=f"(?i)is a {op}, which has no linear regime"):
        cp.collapse(path, scores={key: 0.0}, threshold=0.5)
    # a collapsible neighbour with a similar name still works, and an unknown key still gets near matches
    assert cp.collapse(path, collapse=["hardtanh"]).passed
    with pytest.raises(CollapseError, match="did you mean"):
        cp.collapse(path, collapse=["hardtanhh"])
