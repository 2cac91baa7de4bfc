"""Inputs of a model that symbolic_trace cannot trace (torch.export fallback, as torchvision's Swin-T).

Before 2026-11-29: `example_inputs=x` (one tensor, not a tuple), which works for a traceable model, was split
along its batch by the fallback (tuple(x)) and refused as "torch.export failed too ... rewrite its data-dependent
control flow"; and inputs the model does not accept (4 channels, float64) got that same way out, where a
traceable model says "the model does not run on example_inputs of shape ...; pass inputs the model accepts".
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp


class _SizeBranch(nn.Module):
    """Branches on a size: symbolic_trace fails (a Proxy in `if`), torch.export traces it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.act(self.conv(x))
        if x.shape[-1] > 4:
            y = y * 2
        return self.head(y)


def _model():
    torch.manual_seed(0)
    return _SizeBranch().eval()


def test_one_bare_tensor_is_one_input():
    m, x = _model(), torch.randn(2, 3, 8, 8)
    want = cp.collapse(m, example_inputs=(x,), collapse=["act"]).model
    got = cp.collapse(m, example_inputs=x, collapse=["act"]).model
    with torch.no_grad():
        assert torch.allclose(got(x), want(x))
    assert [k["key"] for k in cp.list_keys(m, x)] == ["act"]


@pytest.mark.parametrize("bad", [torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8, dtype=torch.float64)])
def test_inputs_the_model_rejects_are_named_as_such(bad):
    with pytest.raises(cp.CollapseError) as e:
        cp.collapse(_model(), example_inputs=(bad,), collapse=["act"])
    msg = str(e.value)
    assert msg.startswith("the model does not run on example_inputs of shape (2, ") and "control flow" not in msg
    assert msg.endswith("pass inputs the model accepts") and "\n" not in msg
