"""Forward hooks on layers are part of what the model computes. symbolic_trace kept a hooked nn.Conv2d /
BatchNorm / ReLU as a call_module node whose hooks ran only while that module stayed in the graph: folding the
BatchNorm into the hooked conv dropped the hook (the gate failed: 'output differs', even with nothing collapsed),
and collapsing a hooked ReLU dropped its hook silently (the reference dropped it too). The collapse tracer now
traces through hooked layers, hooks included, as torch.export and dynamo do."""
import copy

import pytest
import torch
import torch.nn as nn

import collapse_passes as cp


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv(x))))


def _net():
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _linear_relu(m, x):
    """The model with its ReLU's function replaced by the identity (its hooks still run)."""
    m = copy.deepcopy(m)
    m.relu.forward = lambda t: t
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("given", ["module", "graph_module"])
@pytest.mark.parametrize("where", ["conv", "bn", "relu"])
@pytest.mark.parametrize("pre", [False, True])
def test_hooked_layers_keep_their_hooks(given, where, pre):
    m = _net()
    layer = getattr(m, where)
    if pre:
        layer.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2 + 1,))
    else:
        layer.register_forward_hook(lambda mod, inp, out: out * 2 + 1)
    x = torch.randn(2, 3, 8, 8)
    obj = torch.fx.symbolic_trace(m) if given == "graph_module" else m
    res = cp.collapse(obj, collapse=["relu"], example_inputs=(x,))
    assert res.passed
    assert torch.allclose(res.model(x), _linear_relu(m, x), rtol=1e-4, atol=1e-5)
    assert res.report["after"]["nodes"] < res.report["before"]["nodes"]
    assert len(layer._forward_hooks) + len(layer._forward_pre_hooks) == 1   # the user's model keeps its hook


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_weight_reparametrization_hooks_still_merge(wrap):
    """torch's weight_norm / spectral_norm pre-hooks only set .weight from other parameters (the current .weight in
    eval): such a layer stays a layer (traced through, the hook set a Proxy as the user's weight, and the conv
    computed from it no longer merged)."""
    from torch.nn import utils

    torch.manual_seed(0)
    m = nn.Sequential(getattr(utils, wrap)(nn.Conv2d(3, 4, 1)), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        want = m[2](m[0](x))
    res = cp.collapse(m, collapse=["1"], example_inputs=(x,))
    assert res.report["after"]["nodes"] == 1
    assert torch.allclose(res.model(x), want, rtol=1e-4, atol=1e-5)
    assert type(m[0].weight) is torch.Tensor
