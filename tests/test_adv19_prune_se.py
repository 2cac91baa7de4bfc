"""Channel pruning through squeeze-excitation blocks (x -> pool -> fc1 -> act -> fc2 -> gate -> x * gate).

Before 2026-11-29 the constant propagation stopped at the SE Mul (0 * gate was "not a known constant"), so a dead
channel feeding an SE block (MobileNetV3, EfficientNet) stayed on both front ends; the SE reference code's
`b, c, _, _ = x.size(); y.view(b, c, 1, 1)` / `y.expand_as(x)` froze the group on torch (and the Expand / the
dynamic-batch Reshape froze it on ONNX), so the two front ends pruned different channels of one model.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from collapse_passes.errors import CollapseError
from models.export import export_onnx
from models.mobilenet_v3 import SqueezeExcitation
from models.tv_init import calibrate_bn

DEAD = (1, 5)
C = 16


class TvSE(nn.Module):
    """torchvision's SqueezeExcitation (1x1 convs, broadcast [N, C, 1, 1] gate) after a depthwise conv."""

    def __init__(self, bn3=True):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, C, 1, bias=False), nn.BatchNorm2d(C)
        self.dw, self.b2 = nn.Conv2d(C, C, 3, 1, 1, groups=C, bias=False), nn.BatchNorm2d(C)
        self.se = SqueezeExcitation(C, 8, scale_activation=nn.Hardsigmoid)
        self.pj = nn.Conv2d(C, 8, 1, bias=False)
        self.b3 = nn.BatchNorm2d(8) if bn3 else nn.Identity()

    def forward(self, x):
        y = F.relu(self.b2(self.dw(F.relu(self.b1(self.c1(x))))))
        return self.b3(self.pj(self.se(y)))

    def dead_bn(self):
        return self.b2


class LinearSE(nn.Module):
    """Linear fc1 / fc2 on the pooled vector, the gate brought back to [N, C, 1, 1] by `how`."""

    def __init__(self, how="view"):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C)
        self.fc1, self.fc2 = nn.Linear(C, 8), nn.Linear(8, C)
        self.pj = nn.Conv2d(C, 8, 1)
        self.how = how

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        b, c = y.shape[0], y.shape[1]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        if self.how == "view":
            s = s.view(b, c, 1, 1)
        elif self.how == "reshape":
            s = s.reshape(-1, c, 1, 1)
        elif self.how == "number":
            s = s.view(-1, C, 1, 1)   # the channel count as a number: rewritten with the kept count
        else:
            s = s[:, :, None, None]
        return self.pj(y * s)

    def dead_bn(self):
        return self.b1


class ClassicSE(nn.Module):
    """The SENet reference code: size() read, view(b, c), Linear fc, view(b, c, 1, 1), expand_as."""

    def __init__(self, expand=True):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(C, 8, bias=False), nn.ReLU(inplace=True), nn.Linear(8, C, bias=False),
                                nn.Sigmoid())
        self.pj = nn.Conv2d(C, 8, 1)
        self.expand = expand

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return self.pj(x * y.expand_as(x) if self.expand else x * y)

    def dead_bn(self):
        return self.b1


def _model(make, dead: str | None):
    """A calibrated model; dead "gamma": BN scale 0 and shift -0.5 (a structural constant, ReLU'd to 0), "bias": shift
    -100 (0 on every input: --prune-calib-dead's kind), on channels DEAD of the tensor that feeds the SE block."""
    torch.manual_seed(0)
    m = make()
    calibrate_bn(m, (2, 3, 8, 8))
    bn = m.dead_bn()
    with torch.no_grad():
        for i in DEAD if dead else ():
            if dead == "gamma":
                bn.weight[i], bn.bias[i] = 0.0, -0.5
            else:
                bn.bias[i] = -100.0
    return m.eval()


def _kept_columns(arrays, w: np.ndarray):
    """The columns of w (out, C) that one of `arrays` holds (a pruned copy of w, or its transpose): the channels a
    pruned model kept, read off the layer after the SE block (its output is the graph's, never pruned)."""
    for a in arrays:
        a = np.asarray(a, np.float64)
        a = a.reshape(a.shape[0], -1) if a.ndim > 2 else a
        for b in (a, a.T) if a.ndim == 2 else ():
            if b.shape[0] != w.shape[0] or not 0 < b.shape[1] <= w.shape[1]:
                continue
            d = np.abs(w[:, :, None] - b[:, None, :]).max(axis=0)   # (C, kept)
            if np.all(d.min(axis=0) < 1e-6):
                return d.argmin(axis=0).tolist()
    return None


def _onnx_kept(m, tmp_path, pj_weight, dynamo=False, dynamic_batch=False, **kw):
    from collapse_passes import api

    path = tmp_path / f"m_{dynamo}_{dynamic_batch}.onnx"
    ek = {}
    if dynamic_batch:
        ek = {"dynamic_shapes": ({0: torch.export.Dim("b")},)} if dynamo else \
            {"dynamic_axes": {"input": {0: "b"}, "logits": {0: "b"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(m, path, (2, 3, 8, 8), dynamo=dynamo, **ek)
        res = api.collapse(str(path), **kw)
    assert res.passed
    arrays = [numpy_helper.to_array(t) for t in res.model.graph.initializer]
    arrays += [numpy_helper.to_array(a.t) for n in res.model.graph.node for a in n.attribute if a.name == "value"]
    return _kept_columns(arrays, pj_weight), res.report["pruning"]


def _torch_kept(m, pj_weight, **kw):
    import collapse_passes

    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = collapse_passes.collapse(m, example_inputs=(x,), **kw)
    assert res.passed
    out = res.model
    with torch.no_grad():
        y = torch.randn(3, 3, 8, 8)   # another batch size: the gate's view / expand follow it
        torch.testing.assert_close(out(y), m(y), rtol=1e-4, atol=1e-5) if not kw else out(y)
    arrays = [p.detach().numpy() for n, p in out.named_parameters() if n.endswith("weight")]
    return _kept_columns(arrays, pj_weight), res.report["pruning"]


def _pj(m):
    return m.pj.weight.detach().numpy().reshape(m.pj.weight.shape[0], -1).astype(np.float64)


STYLES = {"torchvision": lambda: TvSE(bn3=False), "linear_view": LinearSE,
          "linear_reshape": lambda: LinearSE("reshape"), "linear_number": lambda: LinearSE("number"),
          "linear_index": lambda: LinearSE("index"), "classic_expand": ClassicSE,
          "classic_broadcast": lambda: ClassicSE(expand=False)}
EXPECTED = [i for i in range(C) if i not in DEAD]


@pytest.mark.parametrize("style", list(STYLES))
def test_dead_channels_through_se_torch(style):
    """collapse(nn.Module) removes the constant channels that feed the SE block (and its fc2 rows, fc1 columns), the
    output unchanged (the gate checks it, and another batch size runs: the view / expand follow the kept count)."""
    m = _model(STYLES[style], "gamma")
    kept, rep = _torch_kept(m, _pj(m))
    assert kept == EXPECTED, (kept, rep.get("frozen_ops"))
    assert rep["removed_channels"] == len(DEAD)


@pytest.mark.parametrize("style", ["torchvision", "linear_view", "classic_expand"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_dead_channels_through_se_onnx(tmp_path, style, exporter):
    """The ONNX path removes the same channels, static batch and dynamic batch (the TorchScript exporter's
    Reshape(Concat(Gather(Shape(x), 0), [C], [1], [1])) and Expand(y, Shape(x)); torch.export's
    Expand(y, Concat(Shape(input, 0, 1), [C, H, W])))."""
    m = _model(STYLES[style], "gamma")
    for dynamic_batch in (False, True):
        kept, rep = _onnx_kept(m, tmp_path, _pj(m), dynamo=exporter == "dynamo", dynamic_batch=dynamic_batch)
        assert kept == EXPECTED, (dynamic_batch, kept, rep.get("frozen_ops"))
        assert rep["removed_channels"] == len(DEAD)


def test_calib_dead_channels_through_se_both_front_ends(tmp_path):
    """--prune-calib-dead / prune_module(calib=): a ReLU channel 0 on all the data that feeds an SE block goes on both
    front ends, the same channels; it equals the model that keeps them there (shift -100: off on every input)."""
    from collapse_passes.pruning.fx_adapter import prune_module

    m = _model(TvSE, "bias")
    pj = m.pj.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    calib = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=calib)
    for dynamo in (False, True):
        _, rep = _onnx_kept(m, tmp_path, pj, dynamo=dynamo, calib=str(tmp_path / "calib.npz"), prune_calib_dead=True)
        assert rep["removed_channels"] >= len(DEAD) and rep["data_dependent"]
        assert rep["calib_dead_error"]["max_abs"] < 1e-4
        assert any(sorted(v) == list(DEAD) for v in rep["data_dependent_channels"].values()), rep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, trep = prune_module(m, torch.randn(2, 3, 8, 8), calib=[torch.as_tensor(calib[i:i + 2]) for i in (0, 2)])
    assert trep["removed_channels"] == rep["removed_channels"] and trep["calib_dead_error"]["max_abs"] < 1e-4
    assert pruned.se.fc1.weight.shape[1] == C - len(DEAD) and pruned.se.fc2.weight.shape[0] == C - len(DEAD)


@pytest.mark.parametrize("style", ["torchvision", "linear_index", "classic_expand"])
def test_ratio_prune_through_se_same_channels(tmp_path, style):
    """A ratio prune takes the SE block's channels with the conv that writes them (fc1's input columns dropped, as a
    ratio prune drops every reader's), the same channels on both exporters and on torch, its error reported."""
    m = _model(STYLES[style], None)
    kept_t, rep_t = _torch_kept(m, _pj(m), prune_ratio=0.3)
    assert kept_t is not None and len(kept_t) < C, rep_t["ratio"].get("frozen_ops")
    assert rep_t["ratio"]["error_vs_unpruned"]["max_abs"] > 0
    for dynamo in (False, True):
        kept, rep = _onnx_kept(m, tmp_path, _pj(m), dynamo=dynamo, prune_ratio=0.3)
        assert kept == kept_t, (dynamo, kept, kept_t)
        assert rep["ratio"]["error_vs_unpruned"]["max_abs"] > 0


class OtherCount(nn.Module):
    """view(b, c) with c the channel count of ANOTHER group's tensor: pruning one group and not the other would
    break the view, so both stay whole (the count read freezes them)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(3, C, 1)
        self.fc = nn.Linear(C, 4)

    def forward(self, x):
        ya, yb = self.a(x), self.b(x)
        n, c = ya.size(0), ya.size(1)
        return self.fc(yb.mean((2, 3)).view(n, c)) + ya.mean((1, 2, 3))[:, None]


def test_count_read_of_another_group_freezes():
    from collapse_passes.pruning.fx_adapter import prune_module

    torch.manual_seed(0)
    m = OtherCount().eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(), pytest.raises(CollapseError, match="no channel of this model can be pruned.*"
                                                                      "reads the channel count"):
        warnings.simplefilter("ignore")
        prune_module(m, x, ratio=0.5)   # nothing prunable: refused (H68)


def test_mobilenet_v3_dead_channels_before_se(tmp_path):
    """MobileNetV3-Small: two structurally dead channels before each of its 9 SE blocks (depthwise BN scale 0, shift
    that its ReLU / Hardswish turns into 0) go on the TorchScript export and on torch, 18 channels each."""
    import collapse_passes
    import models
    from collapse_passes import api

    torch.manual_seed(0)
    m = models.build("mobilenet_v3_small", num_classes=10)
    calibrate_bn(m, (2, 3, 32, 32))
    n = 0
    for mod in m.modules():
        layers = list(getattr(mod, "block", []))
        for k, layer in enumerate(layers):
            if isinstance(layer, SqueezeExcitation):
                bn, act = layers[k - 1][1], layers[k - 1][2]
                with torch.no_grad():
                    for i in DEAD:
                        bn.weight[i], bn.bias[i] = 0.0, -4.0 if isinstance(act, nn.Hardswish) else -0.5
                n += len(DEAD)
    m.eval()
    assert n == 18
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(m, path, (1, 3, 32, 32))
        res = api.collapse(str(path))
        out = collapse_passes.collapse(m, example_inputs=(torch.randn(1, 3, 32, 32),))
    assert res.passed and out.passed
    assert res.report["pruning"]["removed_channels"] == n
    assert out.report["pruning"]["removed_channels"] == n
