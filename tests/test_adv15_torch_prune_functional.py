"""Round-15 (H9): activations written as functions in the torch channel graph (pruning/fx_adapter.py).

F.prelu(x, w), torch.clamp(x, min=0) / x.clamp(min=0) / clamp_min / clamp(0, 6) and F.selu / F.celu / F.elu /
nn.SELU / nn.CELU were not understood: a clamp or F.prelu froze every channel group it touched (a ratio prune
removed nothing there), and SELU-family activations stopped a constant channel (exact removal kept it). Each
result here is checked against the model itself, not against the tool's own verification."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module

ACTS = {
    "F.prelu": lambda m, y: F.prelu(y, m.slope),
    "F.prelu scalar": lambda m, y: F.prelu(y, m.slope1),
    "torch.clamp min=0": lambda m, y: torch.clamp(y, min=0),
    "x.clamp(min=0)": lambda m, y: y.clamp(min=0),
    "torch.clamp_min": lambda m, y: torch.clamp_min(y, 0.0),
    "x.clamp(0, 6)": lambda m, y: y.clamp(0, 6),
    "F.hardtanh(0, 6)": lambda m, y: F.hardtanh(y, 0.0, 6.0),
    "F.selu": lambda m, y: F.selu(y),
    "nn.SELU": lambda m, y: m.selu(y),
    "F.celu": lambda m, y: F.celu(y, 0.7),
    "nn.CELU": lambda m, y: m.celu(y),
    "F.elu": lambda m, y: F.elu(y, 0.5),
}


class Net(nn.Module):
    def __init__(self, act: str):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.slope = nn.Parameter(torch.linspace(0.05, 0.4, 8))
        self.slope1 = nn.Parameter(torch.tensor([0.3]))
        self.selu, self.celu = nn.SELU(), nn.CELU(0.7)
        self.act = act

    def forward(self, x):
        return self.c2(ACTS[self.act](self, self.c1(x)))


def _net(act, dead_bias=None):
    torch.manual_seed(0)
    m = Net(act).eval()
    if dead_bias is not None:   # channel 2: an all-zero filter, its output the constant bias
        with torch.no_grad():
            m.c1.weight[2] = 0
            m.c1.bias[2] = dead_bias
    return m


def _prune(m, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prune_module(m, x, **kw)


@pytest.mark.parametrize("act", list(ACTS))
def test_ratio_prune_reads_functional_activations(act):
    """A ratio prune removes channels through the activation (it froze the group: 0 removed) and slices
    F.prelu's per-channel slope with them (the pruned model runs)."""
    x = torch.randn(2, 3, 8, 8)
    pm, rep = _prune(_net(act), x, ratio=0.25)
    assert not rep["ratio"]["frozen_ops"], rep["ratio"]["frozen_ops"]
    assert rep["ratio"]["removed_channels"] > 0
    assert pm.c1.out_channels < 8
    assert pm(x).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [-0.7, 0.6])
def test_constant_channel_through_functional_activation_is_removed_exactly(act, bias):
    """A zero filter's constant bias passes the activation as f(bias) (SELU's gamma and alpha, CELU's and ELU's
    alpha, the PReLU slope of that channel on the negative side) and is folded into the next conv exactly."""
    x = torch.randn(2, 3, 8, 8)
    m = _net(act, dead_bias=bias)
    pm, rep = _prune(m, x)
    assert rep["removed_channels"] >= 1 and pm.c1.out_channels == 7
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["torch.clamp min=0", "x.clamp(min=0)", "torch.clamp_min", "x.clamp(0, 6)"])
def test_calib_removes_channels_dead_after_a_clamp(act):
    """torch.clamp(x, min=0) is a ReLU: a channel 0 on all the calibration data is removed with calib= (it was
    frozen, so kept), and on that data the result equals the model."""
    x = torch.randn(2, 3, 8, 8)
    m = _net(act)
    with torch.no_grad():
        m.c1.bias[3] = -100.0   # channel 3 is always off
    pm, rep = _prune(m, x, calib=[x])
    assert rep.get("data_dependent") and pm.c1.out_channels == 7
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)


def test_a_clamp_by_tensors_stays_frozen():
    """clamp with tensor bounds is not a per-channel function of one input: still frozen, never guessed."""
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.c1(x)
            return self.c2(torch.clamp(y, min=y.mean()))

    with pytest.raises(CollapseError, match="no channel of this model can be pruned.*clamp: function not understood"):
        _prune(T().eval(), torch.randn(1, 3, 4, 4), ratio=0.25)   # nothing prunable: refused (H68)


def test_a_shared_prelu_slope_is_not_sliced():
    """A slope parameter read by two F.prelu calls (or anything else) would be sliced for one of them: frozen."""
    class S(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)
            self.w = nn.Parameter(torch.rand(8))

        def forward(self, x):
            return self.c3(torch.cat([F.prelu(self.c1(x), self.w), F.prelu(self.c2(x), self.w)], 1))

    x = torch.randn(1, 3, 4, 4)
    m = S().eval()
    with pytest.raises(CollapseError, match="no channel of this model can be pruned.*computed or shared slope"):
        _prune(m, x, ratio=0.25)   # nothing prunable: refused (H68)
    assert m.w.shape == (8,)
