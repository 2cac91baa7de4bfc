"""A strided merge (or one with a bias map) is exact at the input size it was planned at only: the merged
module refuses other spatial sizes with a message instead of silently reading other borders; stride-1 merges
run at any size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp


class Net(nn.Module):
    def __init__(self, stride, lin=False, bias=True):
        super().__init__()
        self.lin = lin
        self.c1, self.r, self.c2 = nn.Conv2d(4, 8, 1, bias=bias), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=stride, padding=1)

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y if self.lin else self.r(y))


def _pair(stride, bias=True):
    torch.manual_seed(0)
    m = Net(stride, bias=bias).eval()
    ref = Net(stride, lin=True, bias=bias).eval()
    ref.load_state_dict(m.state_dict())
    return m, ref


def test_strided_merge_refuses_other_sizes():
    m, ref = _pair(2)
    res = cp.collapse(m, collapse=["r"], example_inputs=(torch.randn(1, 4, 223, 223),))
    assert len(res.report["merges"]) == 1
    z = torch.randn(2, 4, 223, 223)   # another batch is fine
    assert torch.allclose(res.model(z), ref(z), atol=1e-4)
    with pytest.raises(ValueError, match=r"planned for inputs of spatial size \(223, 223\).*got \(224, 224\)"):
        res.model(torch.randn(1, 4, 224, 224))   # same output size (112), other borders: was silently wrong


def test_stride_one_merge_runs_at_any_size():
    m, ref = _pair(1, bias=False)   # no bias: the zero padding commutes, no bias map
    res = cp.collapse(m, collapse=["r"], example_inputs=(torch.randn(1, 4, 16, 16),))
    assert len(res.report["merges"]) == 1
    for hw in (9, 16, 31):
        z = torch.randn(1, 4, hw, hw)
        assert torch.allclose(res.model(z), ref(z), atol=1e-4)
    biased, _ = _pair(1)                # a bias map (the padding reads the first conv's bias) is size-bound
    guarded = cp.collapse(biased, collapse=["r"], example_inputs=(torch.randn(1, 4, 16, 16),))
    with pytest.raises(ValueError, match="planned for inputs of spatial size"):
        guarded.model(torch.randn(1, 4, 9, 9))
