"""Grouped (non-depthwise) convs in the channel graph (H8, 2026-11-29).

A conv with 1 < groups that is not depthwise froze every group it touched ("grouped conv (group=N)"), so a
ResNeXt / RegNet bottleneck lost nothing to `--prune-ratio` / `prune_module(ratio=...)`, and dead channels
next to it stayed. Now it stays grouped with equal group sizes: position r of the per-group block goes in
every group at once (outputs {k*O/g + r}, inputs {k*I/g + r}: one unit each side), as Torch-Pruning does.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module
from conftest import export_quiet


def _bn(c):
    return nn.BatchNorm2d(c)


class RegNetBlock(nn.Module):
    """RegNet Y-style block: 1x1 -> grouped 3x3 (group width 8) -> SE -> 1x1, + residual."""

    def __init__(self, c=16, w=32, gw=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.bn0, self.r0 = _bn(c), nn.ReLU()
        self.a, self.bna, self.ra = nn.Conv2d(c, w, 1, bias=False), _bn(w), nn.ReLU()
        self.b, self.bnb, self.rb = nn.Conv2d(w, w, 3, 1, 1, groups=w // gw, bias=False), _bn(w), nn.ReLU()
        self.se1, self.se_r, self.se2 = nn.Conv2d(w, 8, 1), nn.ReLU(), nn.Conv2d(8, w, 1)
        self.c, self.bnc = nn.Conv2d(w, c, 1, bias=False), _bn(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.r0(self.bn0(self.stem(x)))
        y = self.rb(self.bnb(self.b(self.ra(self.bna(self.a(x))))))
        s = torch.sigmoid(self.se2(self.se_r(self.se1(y.mean((2, 3), keepdim=True)))))
        y = self.bnc(self.c(y * s))
        return self.head(torch.relu(x + y).mean((2, 3)))


class AlexGroups(nn.Module):
    """AlexNet-style groups=2 convs (conv2 / conv4 / conv5 of the original split over two GPUs)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.c2 = nn.Conv2d(16, 32, 3, 1, 1, groups=2)
        self.c3 = nn.Conv2d(32, 24, 3, 1, 1, groups=2)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = nn.functional.max_pool2d(torch.relu(self.c3(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _calibrated(m, shape=(4, 3, 8, 8)):
    from models.tv_init import calibrate_bn

    return calibrate_bn(m, shape)


def _plant_dead_positions(m: RegNetBlock, pos_in=1, pos_out=5):
    """Zero filter at position pos_in of every group of `a` (the grouped conv's input side) and pos_out of every
    group of `b` (its output side, with the SE's matching filter): BN beta < 0 so the ReLU after them is 0."""
    g = m.b.groups
    ci, co = m.b.in_channels // g, m.b.out_channels // g
    with torch.no_grad():
        for k in range(g):
            for conv, bn, i in ((m.a, m.bna, k * ci + pos_in), (m.b, m.bnb, k * co + pos_out)):
                conv.weight[i] = 0
                bn.bias[i], bn.running_mean[i] = -0.5, 0.0
            m.se2.weight[k * co + pos_out] = 0
    return m


def _group_shapes(model: onnx.ModelProto):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        g = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and g > 1 and n.input[1] in inits:
            out.append((g, tuple(inits[n.input[1]].shape)))
    return out


def _run(path_or_model, x):
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _frozen_grouped(frozen_ops) -> list:
    return [f for f in frozen_ops if "grouped conv" in f["reason"] and "one" not in f["reason"]]


# ------------------------------------------------------------------------------------------ exact removal

@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_dead_positions_around_a_grouped_conv_go_exactly(tmp_path, dynamo):
    torch.manual_seed(0)
    m = _plant_dead_positions(_calibrated(RegNetBlock()))
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo)
    res = cp.collapse(path, collapse=[], check=2)
    pr = res.report["pruning"]
    assert not _frozen_grouped(pr.get("frozen_ops", [])), pr.get("frozen_ops")
    # both sides of the grouped conv lose one position in each of its 4 groups: 32 -> 28 channels each
    assert sorted(r["channels_after"] for r in pr["groups"]) == [28, 28], pr["groups"]
    assert _group_shapes(res.model) == [(4, (28, 7, 3, 3))]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(res.model, x), ref, rtol=1e-4, atol=1e-4)


def test_fx_dead_positions_around_a_grouped_conv_go_exactly_and_match_onnx(tmp_path):
    torch.manual_seed(0)
    m = _plant_dead_positions(_calibrated(RegNetBlock()))
    x = torch.randn(2, 3, 8, 8)
    pm, rep = prune_module(m, x[:1])
    assert rep["removed_channels"] == 8 and sorted(r["channels_after"] for r in rep["groups"]) == [28, 28], rep
    assert not _frozen_grouped(rep["frozen_ops"])
    b = pm.get_submodule("b")
    assert b.groups == 4 and tuple(b.weight.shape) == (28, 7, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-4, atol=1e-5)
    # the ONNX front end removes the same channels
    res = cp.collapse(export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), False), collapse=[], check=1)
    assert res.report["pruning"]["removed_channels"] == rep["removed_channels"]
    assert _group_shapes(res.model) == [(b.groups, tuple(b.weight.shape))]


@pytest.mark.parametrize("groups", [1, 2])
def test_residual_around_a_conv_folds_the_inputs_its_other_outputs_read(groups):
    """x + conv(x): a unit holds the conv's input and output position; removing the input position must add
    its constant to the conv's other outputs (it feeds every output of its group), not only drop it. With
    groups=1 this was wrong before grouped convs were understood: the "exact" removal moved outputs by 0.077."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.g = nn.Conv2d(16, 16, 1, groups=groups)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            x = self.a(x)
            return self.out(x + self.g(x))

    torch.manual_seed(0)
    m = Net().eval()
    per = 16 // groups
    with torch.no_grad():
        for k in range(groups):   # position 3 of every group: a's filter and g's filter zero, biases nonzero
            m.a.weight[k * per + 3] = 0
            m.g.weight[k * per + 3] = 0
    x = torch.randn(2, 3, 5, 5)
    pm, rep = prune_module(m, x[:1])
    assert rep["removed_channels"] == groups and pm.get_submodule("g").weight.shape[0] == 16 - groups, rep
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ ratio pruning

def _tiny_resnext():
    from models import build

    torch.manual_seed(0)
    return _calibrated(build("resnext50_32x4d_tv", width=8, groups=4, width_per_group=16, num_classes=10),
                       (4, 3, 32, 32))


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_ratio_prunes_resnext_bottlenecks_with_equal_groups(tmp_path, dynamo):
    m = _tiny_resnext()
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo)
    before = _group_shapes(onnx.load(path))
    res = cp.collapse(path, collapse=[], prune_ratio=0.3, round_to=4, check=1)
    ratio = res.report["pruning"]["ratio"]
    assert not _frozen_grouped(ratio["frozen_ops"]), ratio["frozen_ops"][:3]
    # only the model's input and output groups stay frozen (16 grouped convs froze 34 of 39 groups at 224)
    assert ratio["frozen_groups"] == 2, ratio
    after = _group_shapes(res.model)
    assert [g for g, _ in after] == [g for g, _ in before]   # still grouped, same group count
    assert sum(s[0] for _, s in after) < sum(s[0] for _, s in before)
    for g, (o, i, *_k) in after:
        assert o % g == 0 and (o // g * i) >= 1 and o % 4 == 0   # equal groups, kept channels round to 4
    assert res.passed and ratio["error_vs_unpruned"]["max_abs"] > 0


def test_fx_ratio_prunes_resnext_and_agrees_with_onnx(tmp_path):
    """Per layer, every group loses floor(0.3 n) units whatever the importance: both front ends must see the
    same groups, of the same sizes (grouped ones in channels), and shrink them the same."""
    m = _tiny_resnext()
    x = torch.randn(1, 3, 32, 32)
    pm, rep = prune_module(m, x, ratio=0.3, scope="layer", round_to=4)
    assert not rep["ratio"]["frozen_ops"]
    convs = [mod for mod in pm.modules() if isinstance(mod, nn.Conv2d) and mod.groups > 1]
    assert convs and all(c.groups == 4 and c.out_channels % 4 == 0 for c in convs)
    assert sum(c.out_channels for c in convs) < sum(mod.out_channels for mod in m.modules()
                                                      if isinstance(mod, nn.Conv2d) and mod.groups > 1)
    with torch.no_grad():
        assert torch.isfinite(pm(x)).all()
    onnx_ratio = cp.collapse(export_quiet(m, tmp_path / "m.onnx", (1, 3, 32, 32), False), collapse=[],
                             prune_ratio=0.3, prune_scope="layer", round_to=4, check=1).report["pruning"]["ratio"]

    def sizes(rows):
        return sorted((r["channels_before"], r["channels_after"]) for r in rows)

    assert sizes(rep["ratio"]["groups"]) == sizes(onnx_ratio["groups"])
    assert rep["ratio"]["removed_channels"] == onnx_ratio["removed_channels"] > 0


def test_alexnet_groups_2_ratio_and_exact(tmp_path):
    torch.manual_seed(0)
    m = AlexGroups().eval()
    with torch.no_grad():   # position 2 of both groups of c2 dead (zero filter, negative bias: ReLU 0)
        for k in range(2):
            m.c2.weight[k * 16 + 2] = 0
            m.c2.bias[k * 16 + 2] = -1.0
    x = torch.randn(2, 3, 8, 8)
    pm, rep = prune_module(m, x[:1])
    assert rep["removed_channels"] == 2 and tuple(pm.get_submodule("c2").weight.shape) == (30, 8, 3, 3)
    assert tuple(pm.get_submodule("c3").weight.shape) == (24, 15, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)
    pr, rep = prune_module(m, x[:1], ratio=0.3, round_to=2)
    c2, c3 = pr.get_submodule("c2"), pr.get_submodule("c3")
    assert c2.groups == c3.groups == 2 and c2.out_channels < 32 and c3.out_channels < 24
    assert c3.in_channels == c2.out_channels and c2.out_channels % 2 == 0
    res = cp.collapse(export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), True), collapse=[], prune_ratio=0.3,
                      round_to=2, check=1)
    assert [g for g, _ in _group_shapes(res.model)] == [2, 2] and res.passed


def test_one_channel_per_group_side_is_frozen_with_its_reason():
    """A depthwise conv with a channel multiplier (groups == in, out = 2 in): removing an input channel would
    remove a whole group, so that side is frozen and says so; its output positions still go."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 16, 3, 1, 1, groups=8)
            self.b = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.dw(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    pm, rep = prune_module(Net().eval(), torch.randn(1, 3, 6, 6), ratio=0.5)
    reasons = [f["reason"] for f in rep["ratio"]["frozen_ops"]]
    assert any("one input channel per group" in r for r in reasons), reasons
    dw = pm.get_submodule("dw")
    assert dw.groups == 8 and dw.in_channels == 8 and dw.out_channels == 8


# ------------------------------------------------------------------------------------------ transposed convs

class _Up(nn.Module):
    """A U-Net decoder step: conv -> ConvTranspose (k2 s2, groups) -> conv."""

    def __init__(self, groups):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, 1, 1)
        self.up = nn.ConvTranspose2d(16, 12, 2, 2, groups=groups)
        self.b = nn.Conv2d(12, 4, 3, 1, 1)

    def forward(self, x):
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_is_pruned_not_frozen(tmp_path, groups):
    """ConvTranspose (weight (in, out/groups, k)) froze its groups ("not understood"). Its output positions go
    like a conv's; a dead channel it reads stays (a constant through a transposed conv is not one bias)."""
    torch.manual_seed(0)
    m = _Up(groups).eval()
    co, ci = 12 // groups, 16 // groups
    with torch.no_grad():
        for k in range(groups):
            m.up.weight[k * ci:(k + 1) * ci, 1] = 0   # output position 1 of every group: bias -1, ReLU 0
            m.up.bias[k * co + 1] = -1.0
            m.a.weight[k * ci + 2] = 0                # a dead channel the ConvTranspose reads: kept
            m.a.bias[k * ci + 2] = -1.0
    x = torch.randn(1, 3, 6, 6)
    pm, rep = prune_module(m, x)
    assert rep["removed_channels"] == groups and tuple(pm.get_submodule("up").weight.shape) == (16, co - 1, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-5, atol=1e-5)
    pr, rep = prune_module(m, x, ratio=0.3)
    up = pr.get_submodule("up")
    assert not rep["ratio"]["frozen_ops"] and up.groups == groups and up.out_channels < 12 and up.in_channels < 16
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 6, 6), groups == 2)
    res = cp.collapse(path, collapse=[], prune_ratio=0.3, check=2)
    assert res.passed and not res.report["pruning"]["ratio"]["frozen_ops"]
    assert res.report["pruning"]["ratio"]["removed_channels"] == rep["ratio"]["removed_channels"]
