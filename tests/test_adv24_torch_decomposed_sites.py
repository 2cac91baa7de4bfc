"""Activations a decomposed ExportedProgram (ep.run_decompositions(), what torch.export pipelines lower to) spells
as several aten ops, found as the one site the plain program has:

- PReLU: where(x > 0, x, view(w) * x); CELU: where(x > 0, x, alpha * expm1(x / alpha)); Mish:
  x * tanh(where(x > 20, x, log1p(exp(x)))). Before, none of the three was an activation site of a decomposed
  program (`collapse(ep, collapse=["1"])` said the key names nothing), so nothing collapsed or merged there.
- Hardsigmoid (MobileNetV3's SE gate): add(x, 3), clamp(min=0), clamp(max=6), div(6). Before, its first clamp alone
  was the site (a clip): collapsing the module's key left min(x + 3, 6) / 6 in the result, a nonlinear op, and a
  result that differed from the plain program's collapse by 0.26 on inputs past the upper kink.
- `method="prelu"` scored nn.PReLU / nn.LeakyReLU modules only: an ExportedProgram (no modules) was refused, and an
  `F.prelu(x, w)` in a module's forward got no score, where the ONNX front end scores all three.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import collapse_passes as cp
from collapse_passes.fx.graph import find_activations

warnings.filterwarnings("ignore")


def _net(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act, nn.Conv2d(4, 5, 3)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        if isinstance(act, nn.PReLU):
            act.weight.uniform_(0.2, 1.5)
    return m


def _programs(m: nn.Module, x: torch.Tensor):
    ep = torch.export.export(m, (x,))
    return ep, torch.export.export(m, (x,)).run_decompositions()


ACTS = {"prelu_channels": (lambda: nn.PReLU(4), "prelu"), "prelu_one": (lambda: nn.PReLU(), "prelu"),
        "celu": (lambda: nn.CELU(0.5), "celu"), "mish": (lambda: nn.Mish(), "mish"),
        "hardsigmoid": (lambda: nn.Hardsigmoid(), "hardsigmoid")}


class _Regime(nn.Module):
    """the activation's linear regime: identity, or x / 6 + 0.5 for torch's hardsigmoid"""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return x / 6 + 0.5 if self.kind == "hardsigmoid" else x


@pytest.mark.parametrize("name", list(ACTS))
def test_decomposed_program_has_the_plain_programs_site_and_collapses_the_same(name):
    make, kind = ACTS[name]
    m = _net(make())
    x = torch.randn(2, 3, 12, 12) * 4   # past every kink: hardsigmoid saturates at +-3
    plain, dec = _programs(m, x)
    assert [(s.keys[0], s.kind) for s in find_activations(dec.module())] == [("2", kind)]
    if kind == "prelu":   # the slope read through the decomposition's view, channel by channel
        site = find_activations(dec.module())[0]
        np.testing.assert_array_equal(site.params["slope"], m[2].weight.detach().double().numpy().reshape(-1))
    if name == "celu":
        assert find_activations(dec.module())[0].params == {"alpha": 0.5}
    got = {}
    for tag, ep in (("plain", plain), ("dec", dec)):
        res = cp.collapse(ep, collapse=["2"])
        assert res.report["collapsed"] == 1
        got[tag] = res.model.module()(x)
        # the request: the activation replaced by its linear regime, checked here in eager torch
        want = nn.Sequential(m[0], m[1], _Regime(kind), m[3])(x)
        torch.testing.assert_close(got[tag], want, rtol=1e-4, atol=1e-5)
        convs = [n for n in res.model.graph.nodes if n.op == "call_function" and ("convolution" in str(n.target)
                                                                                  or "conv2d" in str(n.target))]
        assert len(convs) == 1, res.model.graph   # conv, BN, conv merged into one conv once the activation is gone
    torch.testing.assert_close(got["dec"], got["plain"], rtol=1e-5, atol=1e-6)


def _where_net(neg):
    class W(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.register_buffer("w", torch.full((1, 1, 6, 1), 0.5))

        def forward(self, x):
            h = self.conv(x)
            return torch.where(h > 0, h, neg(self, h))
    return W().eval()


@pytest.mark.parametrize("neg", [
    lambda self, h: self.w * h,                  # a constant broadcast on the rows, not the channels: no PReLU
    lambda self, h: h * h.mean(),                # a slope computed at run time
    lambda self, h: 0.5 * torch.expm1(h) + 1.0,  # ELU-like, but not ELU / CELU for any of its constants
], ids=["rows", "runtime", "shifted"])
def test_other_wheres_are_not_activation_sites(neg):
    m = _where_net(neg)
    x = torch.randn(1, 3, 6, 6)
    for ep in _programs(m, x):
        assert [s.kind for s in find_activations(ep.module()) if s.kind in ("prelu", "celu", "elu", "leaky_relu")] \
            == []


class _Slopes(nn.Module):
    """an nn.PReLU module, an F.prelu with a parameter, an nn.LeakyReLU"""

    def __init__(self):
        super().__init__()
        self.c1, self.a = nn.Conv2d(3, 4, 3), nn.PReLU(4)
        self.c2, self.w = nn.Conv2d(4, 4, 3), nn.Parameter(torch.tensor([0.2, 0.9, 1.0, 1.4]))
        self.c3, self.l = nn.Conv2d(4, 2, 1), nn.LeakyReLU(0.95)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([0.97, 0.99, 1.0, 0.93]))

    def forward(self, x):
        x = self.a(self.c1(x))
        x = F.prelu(self.c2(x), self.w)
        return self.l(self.c3(x))


def test_prelu_method_scores_every_slope_on_every_torch_entry_and_as_the_onnx_front_end(tmp_path):
    m = _Slopes().eval()
    x = torch.randn(1, 3, 12, 12)
    want = {"a": float(np.mean(np.abs(1 - m.a.weight.detach().double().numpy()))),
            "prelu()": float(np.mean(np.abs(1 - m.w.detach().double().numpy()))),
            "l": abs(1 - 0.95)}
    plain, dec = _programs(m, x)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False)
    for tag, model, kw in (("module", m, {"example_inputs": (x,)}), ("program", plain, {}),
                           ("decomposed", dec, {}), ("onnx", str(path), {})):
        res = cp.collapse(model, method="prelu", threshold=0.1, **kw)
        scores = {a["key"]: a["score"] for a in res.report["activations"]}
        assert scores.keys() == want.keys(), (tag, scores)
        for k, v in want.items():
            assert scores[k] == pytest.approx(v, rel=1e-6), (tag, k)
        assert res.report["collapsed"] == 2, tag   # a and l (below 0.1); prelu() (0.55) stays
