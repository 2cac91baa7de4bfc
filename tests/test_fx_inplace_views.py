"""In-place writes through a view (`h.view(-1).relu_()`, `h[:, :2].relu_()`) in the torch front end: a
collapsed activation whose input is written that way later keeps the value it read (x.clone(), as for a
direct write), and an in-place activation on a view, collapsed, writes its linear regime through the view.
References are eager modules written without the passes."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class CloneIdentity(nn.Module):
    def forward(self, x):
        return x.clone()


WRITES = {
    "view": lambda h: h.view(-1).relu_(),
    "slice": lambda h: h[:, :2].relu_(),
    "transpose_view": lambda h: h.transpose(1, 2)[:, 1].mul_(2.0),
    "chained_view": lambda h: h.flatten(2)[:, 1:].unsqueeze(0).add_(1.0),
}


class IdentityThenViewWrite(nn.Module):
    """act (collapsed: identity) reads h; then h is written in place through a view; both are read."""

    def __init__(self, write):
        super().__init__()
        self.write = write
        self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.c1(x)
        a = self.act(h)
        WRITES[self.write](h)
        return self.c2(a) + h


def _close(a, b, rtol=1e-4):
    return float((a - b).abs().max()) <= rtol * float(b.abs().max()) + 1e-5


@pytest.mark.parametrize("write", list(WRITES))
def test_a_collapsed_activation_keeps_its_value_when_its_input_is_written_through_a_view(write):
    torch.manual_seed(0)
    model, x = IdentityThenViewWrite(write).eval(), torch.randn(1, 4, 6, 6)
    ref = copy.deepcopy(model)
    ref.act = CloneIdentity()
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    assert res.passed
    with torch.no_grad():
        for inp in (x, torch.randn(1, 4, 6, 6)):
            assert _close(res.model(inp.clone()), ref(inp.clone()))
        # the write does reach `a` if it aliases h: the test can tell the two apart
        alias = copy.deepcopy(model)
        alias.act = nn.Identity()
        assert not _close(alias(x.clone()), ref(x.clone()))


class ViewActivation(nn.Module):
    """An in-place activation on a view whose result is unused: only its write into h matters."""

    def __init__(self, how, linear=False):
        super().__init__()
        self.how, self.linear = how, linear

    def forward(self, h):
        v = h[:, :2] if self.how == "slice" else h.view(h.shape[0], -1)
        if self.linear:     # the reference: the linear regime, written through the view
            if self.how == "hardsigmoid":
                v.mul_(1.0 / 6.0).add_(0.5)
            return h
        if self.how == "hardsigmoid":
            F.hardsigmoid(v, inplace=True)
        else:
            v.relu_()
        return h


class ViewActNet(nn.Module):
    def __init__(self, how, linear=False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.va = ViewActivation(how, linear)

    def forward(self, x):
        h = self.c1(x)
        self.va(h)
        return self.c2(h) + h


@pytest.mark.parametrize("how", ["slice", "view", "hardsigmoid"])
def test_an_in_place_activation_on_a_view_collapses_to_its_regime_written_through_the_view(how):
    torch.manual_seed(0)
    model, x = ViewActNet(how).eval(), 5 * torch.randn(1, 4, 6, 6)   # past HardSigmoid's linear part [-3, 3]
    keys = cp.list_keys(model, (x,))
    assert [(k["key"], k["kind"]) for k in keys] == [("va", "hardsigmoid" if how == "hardsigmoid" else "relu")]
    ref = ViewActNet(how, linear=True).eval()
    ref.load_state_dict(model.state_dict())
    res = cp.collapse(model, collapse=["va"], example_inputs=(x,))
    assert res.passed
    with torch.no_grad():
        for inp in (x, 5 * torch.randn(1, 4, 6, 6)):
            assert _close(res.model(inp.clone()), ref(inp.clone()))
        assert not _close(model(x.clone()), ref(x.clone()))
