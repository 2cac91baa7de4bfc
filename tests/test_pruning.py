"""Channel pruning: the dependency graph, exact constant-channel removal and ratio pruning, ONNX (both
torch exporters) and torch.fx front ends."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from collapse_passes import api
from collapse_passes.algebra import prune as P
from collapse_passes.algebra.conv import ConvParams, conv_nd
from collapse_passes.algebra.linear import LinearParams, apply_linear
from collapse_passes.errors import CollapseError
from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.graph import to_graph, to_model
from collapse_passes.pruning.fx_adapter import build_fx_channel_graph, prune_module
from collapse_passes.pruning.onnx_adapter import build_channel_graph
from collapse_passes.pruning.onnx_prune import exact_removal, ratio_prune
from collapse_passes.verify import session
from conftest import export_quiet, randomize_bn

EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo", marks=pytest.mark.slow)]


# ----------------------------------------------------------------------------- helpers

def _onnx(module, tmp_path, shape, dynamo, name="m"):
    return onnx.load(export_quiet(module.eval(), tmp_path / f"{name}_{int(dynamo)}.onnx", shape, dynamo))


def _run(model, x):
    return session(model).run(None, {session(model).get_inputs()[0].name: x})[0]


def _exact_onnx(model):
    g = to_graph(model)
    rep = exact_removal(g)
    return to_model(g, model), rep


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _plant_dead(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, count: int, beta: float = -0.5):
    """Zero `count` filters and make their pre-ReLU value the constant beta."""
    with torch.no_grad():
        conv.weight[:count] = 0
        if conv.bias is not None:
            conv.bias[:count] = beta
        if bn is not None:
            bn.running_mean[:count] = 0
            bn.bias[:count] = beta


def _conv_weights(model) -> dict:
    g = to_graph(model)
    from collapse_passes.onnx.graph import const_value

    return {n.name: const_value(n.inputs[1]).shape for n in g.nodes if n.op == "Conv"}


# ----------------------------------------------------------------------------- pure maths

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.floats(-2, 2))
def test_fold_constant_input_conv_matches_reference(k, pad, stride, c):
    rng = np.random.default_rng(0)
    p = ConvParams(rng.standard_normal((4, 3, k, k)), rng.standard_normal(4), (stride, stride), (pad,) * 4)
    x = rng.standard_normal((1, 3, 6, 6))
    x[:, 1] = c  # channel 1 is the constant c
    ref = conv_nd(x, p)
    folded, bias_map = P.fold_constant_inputs_conv(p, [1], [c], (6, 6))
    small = P.slice_conv(folded, None, [0, 2])
    out = conv_nd(x[:, [0, 2]], small) + (0 if bias_map is None else bias_map[None])
    np.testing.assert_allclose(out, ref, atol=1e-9)
    if pad and k > 1 and abs(c) > 1e-3:
        assert bias_map is not None  # the border sees less of the constant


def test_fold_constant_input_linear_and_slice():
    rng = np.random.default_rng(1)
    p = LinearParams(rng.standard_normal((3, 5)), rng.standard_normal(3))
    x = rng.standard_normal((2, 5))
    x[:, [1, 4]] = [0.5, -2.0]
    q = P.slice_linear(P.fold_constant_inputs_linear(p, [1, 4], [0.5, -2.0]), None, [0, 2, 3])
    np.testing.assert_allclose(apply_linear(x[:, [0, 2, 3]], q), apply_linear(x, p), atol=1e-12)


def test_keep_counts_round_and_refuse():
    assert P.keep_count(10, 0.3) == 7
    assert P.keep_count(10, 0.3, round_to=4) == 8
    assert P.keep_count(3, 0.9, round_to=8) == 3  # never above what the layer has
    for bad in (1.0, -0.1):
        with pytest.raises(CollapseError, match=r"\[0, 1\)"):
            P.keep_count(10, bad)
    with pytest.raises(CollapseError, match="round-to"):
        P.round_keep(3, 10, 0)
    with pytest.raises(CollapseError, match="remove all"):
        P.slice_conv(ConvParams(np.ones((2, 2, 1, 1))), [], None)


# ----------------------------------------------------------------------------- small torch models

class ConcatBlock(nn.Module):
    """DenseNet-style: new features concatenated to the input features, then a transition conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.grow = nn.Conv2d(6, 4, 3, padding=1)
        self.grow_bn = nn.BatchNorm2d(4)
        self.grow_relu = nn.ReLU()
        self.trans = nn.Conv2d(10, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.stem_relu(self.stem(x))
        y = self.grow_relu(self.grow_bn(self.grow(x)))
        z = self.trans(torch.cat([x, y], 1))
        return self.fc(torch.flatten(self.pool(z), 1))


class SmallVGG(nn.Module):
    """conv-bn-relu-pool x2, flatten of a 4x4 map -> linear: channel c owns 16 features."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.r3, self.fc2 = nn.Linear(8 * 16, 12), nn.ReLU(), nn.Linear(12, 4)

    def forward(self, x):
        x = self.pool(self.r1(self.b1(self.c1(x))))
        x = self.pool(self.r2(self.b2(self.c2(x))))
        return self.fc2(self.r3(self.fc1(torch.flatten(x, 1))))


class TokenMLP(nn.Module):
    """Token embedding, then a transformer block's MLP: LayerNorm -> Linear -> ReLU -> Linear, residual."""

    def __init__(self, d=8, h=16):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d)

    def forward(self, x):
        x = self.embed(x)
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def _planted_resnet():
    from models import build

    torch.manual_seed(0)
    m = randomize_bn(build("resnet18", width=8).eval())
    blocks = [m.layer1[0], m.layer2[0], m.layer3[1]]  # identity, projection and identity shortcut blocks
    for b in blocks:
        _plant_dead(b.conv1, b.bn1, b.conv1.out_channels // 2)
    return m, blocks


# ----------------------------------------------------------------------------- planted residual case

@pytest.fixture(scope="module")
def planted_onnx(tmp_path_factory):
    """planted_onnx(dynamo) -> path of the planted ResNet exported once per exporter."""
    cache, d = {}, tmp_path_factory.mktemp("planted")

    def get(dynamo):
        if dynamo not in cache:
            m, _ = _planted_resnet()
            cache[dynamo] = export_quiet(m, d / f"planted_{int(dynamo)}.onnx", (1, 3, 32, 32), dynamo)
        return cache[dynamo]

    return get


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_planted_residual_blocks_removed_end_to_end_onnx(planted_onnx, dynamo):
    m, blocks = _planted_resnet()
    path = planted_onnx(dynamo)
    res = api.collapse(path, merge=False)
    pr = res.report["pruning"]
    halves = sorted((b.conv1.out_channels, b.conv1.out_channels // 2) for b in blocks)
    assert sorted((r["channels_before"], r["channels_after"]) for r in pr["groups"]) == halves
    assert res.report["verification"]["against_original"]["passed"]
    assert any(p["name"] == "remove_constant_channels" and p["changes"] for p in res.report["passes"])
    # the conv's outputs, and the next conv's inputs, are gone (BN is folded into the conv by then)
    shapes = sorted(s for s in _conv_weights(res.model).values())
    before = sorted(s for s in _conv_weights(onnx.load(path)).values())
    assert len(shapes) == len(before) and shapes != before
    assert sum(np.prod(s) for s in before) - sum(np.prod(s) for s in shapes) == sum(
        9 * h * (b.conv1.in_channels + b.conv2.out_channels) for b in blocks for h in [b.conv1.out_channels // 2])
    # reported savings = measured savings of the removal itself (collapse with and without it)
    off = api.collapse(path, prune=False, merge=False)
    assert pr["params_saved"] == off.report["after"]["params"] - res.report["after"]["params"] > 0
    assert pr["macs_saved"] == off.report["after"]["macs"] - res.report["after"]["macs"] > 0


@pytest.mark.slow
def test_planted_residual_blocks_bn_sliced_before_fold(planted_onnx):
    """Before the BN fold: the conv's outputs, its BatchNormalization and the next conv's inputs all shrink."""
    m, blocks = _planted_resnet()
    model = onnx.load(planted_onnx(True))
    g = to_graph(model)
    n_bn = sum(n.op == "BatchNormalization" for n in g.nodes)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == sum(b.conv1.out_channels // 2 for b in blocks)
    x = _x((1, 3, 32, 32))
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    if n_bn:  # the exporter kept BatchNormalization: it is sliced with the conv
        from collapse_passes.onnx.graph import const_value

        sizes = sorted(const_value(n.inputs[1]).size for n in to_graph(out).nodes if n.op == "BatchNormalization")
        assert sizes.count(4) >= 1 and sizes.count(8) >= 2 and sizes.count(16) >= 2


def test_planted_residual_blocks_removed_fx():
    m, blocks = _planted_resnet()
    x = torch.randn(1, 3, 32, 32)
    pm, rep = prune_module(m, x)
    assert isinstance(pm, nn.Module)
    for name in ("layer1.0", "layer2.0", "layer3.1"):
        b, pb = m.get_submodule(name), pm.get_submodule(name)
        h = b.conv1.out_channels // 2
        assert (pb.conv1.out_channels, pb.bn1.num_features, pb.conv2.in_channels) == (h, h, h)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-4, atol=1e-5)
    expected = sum((b.conv1.in_channels * 9 + 2 + b.conv2.out_channels * 9) * (b.conv1.out_channels // 2)
                   for b in blocks)
    assert rep["params_saved"] == expected == rep["params_before"] - sum(p.numel() for p in pm.parameters())
    assert rep["macs_saved"] > 0


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_zero_gamma_bn_constant_folded_through_padding(tmp_path, dynamo):
    """Zero-gamma BN with beta > 0: after the ReLU the channel is the constant beta, read by a padded conv:
    its contribution is a per-position bias map."""
    from models import build

    torch.manual_seed(0)
    m = randomize_bn(build("resnet18", width=8).eval())
    with torch.no_grad():
        m.layer2[1].bn1.weight[:3] = 0
        m.layer2[1].bn1.bias[:3] = 0.7
    x = _x((1, 3, 8, 8))   # layer2 at 4x4: the 16x4x4 bias map is smaller than the weights the removal saves
    model = _onnx(m, tmp_path, (1, 3, 8, 8), dynamo)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 3
    assert any("bias map" in n for n in rep["notes"])
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    pm, frep = prune_module(m, torch.from_numpy(x))
    assert frep["removed_channels"] == 3
    with torch.no_grad():
        torch.testing.assert_close(pm(torch.from_numpy(x)), m(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_constant_channels_whose_bias_map_outweighs_the_removal_are_kept(tmp_path, dynamo):
    """The same constants at 32x32: the bias map (16x16x16) would add more parameters than the removal
    saves, so exact removal keeps those channels (a 16 KB model grew to 1.8 MB at 224 before) and says why."""
    from models import build

    torch.manual_seed(0)
    m = randomize_bn(build("resnet18", width=8).eval())
    with torch.no_grad():
        m.layer2[1].bn1.weight[:3] = 0
        m.layer2[1].bn1.bias[:3] = 0.7
    model = _onnx(m, tmp_path, (1, 3, 32, 32), dynamo)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 0 and rep.get("params_saved", 0) >= 0
    assert any("more parameters than the removal saves" in n for n in rep["notes"]), rep["notes"]
    pm, frep = prune_module(m, torch.from_numpy(_x((1, 3, 32, 32))))
    assert frep["removed_channels"] == 0
    assert sum(p.numel() for p in pm.parameters()) + sum(b.numel() for b in pm.buffers()) <= \
        sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())


# ----------------------------------------------------------------------------- coupling structures

@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_concat_block_offsets(tmp_path, dynamo):
    torch.manual_seed(0)
    m = randomize_bn(ConcatBlock().eval())
    _plant_dead(m.grow, m.grow_bn, 2)
    _plant_dead(m.stem, None, 1)  # the stem's channel 0: read by grow (padded, value 0) and, via concat, by trans
    x = _x((1, 3, 8, 8))
    model = _onnx(m, tmp_path, (1, 3, 8, 8), dynamo)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 3
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    ws = sorted(_conv_weights(out).values())
    assert (5, 7, 1, 1) in ws and (2, 5, 3, 3) in ws and (5, 3, 3, 3) in ws
    pm, frep = prune_module(m, torch.from_numpy(x))
    assert (pm.trans.in_channels, pm.grow.out_channels, pm.stem.out_channels) == (7, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(pm(torch.from_numpy(x)), m(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)
    # ratio pruning through the concat keeps the offsets consistent (the model still runs, sizes shrink)
    pr, info = ratio_prune(model, 0.4, scope="layer")
    assert info["removed_channels"] > 0 and _run(pr, x).shape == (1, 3)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_flatten_to_linear_feature_ranges(tmp_path, dynamo):
    torch.manual_seed(0)
    m = randomize_bn(SmallVGG().eval())
    _plant_dead(m.c2, m.b2, 3)
    x = _x((1, 3, 16, 16))
    model = _onnx(m, tmp_path, (1, 3, 16, 16), dynamo)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 3
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    g = to_graph(out)
    from collapse_passes.onnx.graph import const_value

    mats = [const_value(n.inputs[1]).shape for n in g.nodes if n.op in ("Gemm", "MatMul")]
    assert any(5 * 16 in s for s in mats)  # 3 channels x 16 features left the first linear layer
    pm, _ = prune_module(m, torch.from_numpy(x))
    assert pm.fc1.in_features == 5 * 16 and pm.c2.out_channels == 5
    with torch.no_grad():
        torch.testing.assert_close(pm(torch.from_numpy(x)), m(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)


def test_depthwise_mobilenet_couples_in_and_out(tmp_path):
    from models import build

    torch.manual_seed(0)
    m = randomize_bn(build("mobilenet_v2", width_mult=0.25).eval())
    blk = m.features[2]
    _plant_dead(blk.expand, blk.expand_bn, 4)  # ReLU6(const < 0) = 0 -> depthwise reads 0 -> its BN shift
    x = _x((1, 3, 32, 32))
    model = _onnx(m, tmp_path, (1, 3, 32, 32), False)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 4
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    g = to_graph(out)
    for n in g.nodes:
        if n.op == "Conv" and int(n.attrs.get("group", 1)) > 1:
            from collapse_passes.onnx.graph import const_value

            assert int(n.attrs["group"]) == const_value(n.inputs[1]).shape[0]  # still depthwise
    pm, frep = prune_module(m, torch.from_numpy(x))
    pdw = pm.get_submodule("features.2.dw")
    assert pdw.groups == pdw.in_channels == blk.dw.in_channels - 4
    with torch.no_grad():
        torch.testing.assert_close(pm(torch.from_numpy(x)), m(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)
    pr, info = ratio_prune(model, 0.3, round_to=2)
    assert info["removed_channels"] > 0 and _run(pr, x[:1]).shape == (1, 10)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_transformer_mlp_hidden_prunable_residual_frozen(tmp_path, dynamo):
    torch.manual_seed(0)
    m = TokenMLP().eval()
    with torch.no_grad():
        m.fc1.weight[:5] = 0
        m.fc1.bias[:5] = -1.0
    x = _x((2, 6, 8))
    model = _onnx(m, tmp_path, (2, 6, 8), dynamo)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 5
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-5)
    assert any(f["op_type"] == "LayerNormalization" or "norm" in f["op"].lower() for f in rep["frozen_ops"])
    cg = build_channel_graph(to_graph(model))
    frozen_sizes = {g.channels for g in cg.groups() if g.frozen}
    assert 8 in frozen_sizes  # the residual stream (LayerNorm'd) is never pruned
    pm, frep = prune_module(m, torch.from_numpy(x))
    assert pm.fc1.out_features == 11 and pm.fc2.in_features == 11 and pm.fc2.out_features == 8
    assert any("normalises" in f["reason"] for f in frep["frozen_ops"])
    with torch.no_grad():
        torch.testing.assert_close(pm(torch.from_numpy(x)), m(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)


def test_residual_groups_couple_identity_and_projection(exported):
    model = onnx.load(exported("resnet18"))
    cg = build_channel_graph(to_graph(model))
    multi = [g for g in cg.groups() if len(g.producers) >= 3 and not g.frozen]
    assert multi  # a residual stream: the stage's conv2s and its projection shortcut conv, pruned together
    x = _x((1, 3, 32, 32))
    pr, info = ratio_prune(model, 0.5, scope="layer", round_to=2)
    assert all(r["channels_after"] % 2 == 0 or r["channels_after"] == r["channels_before"] for r in info["groups"])
    before, after = model_stats(model), model_stats(pr)
    assert after.params < before.params and after.macs < before.macs
    assert _run(pr, x).shape == (1, 10)
    gm = torch.fx.symbolic_trace(__import__("models").build("resnet18", width=8).eval())
    fcg = build_fx_channel_graph(gm, (torch.randn(1, 3, 32, 32),))
    assert sorted(len(g.producers) for g in fcg.groups()) == sorted(len(g.producers) for g in cg.groups())


# ----------------------------------------------------------------------------- frozen ops, bad input

class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c2(torch.softmax(self.c1(x), 1))


def test_unknown_op_freezes_and_is_listed(tmp_path):
    m = UnknownOp().eval()
    with torch.no_grad():
        m.c1.weight[:2] = 0
        m.c1.bias[:2] = -1
    model = _onnx(m, tmp_path, (1, 3, 4, 4), False)
    out, rep = _exact_onnx(model)
    assert rep["removed_channels"] == 0
    assert [f["op_type"] for f in rep["frozen_ops"]] == ["Softmax"]
    with pytest.raises(CollapseError, match="no channel of this model can be pruned.*softmax: function not"):
        prune_module(m, torch.randn(1, 3, 4, 4), ratio=0.5)   # nothing prunable: refused (H68)


def test_bad_prune_input_one_line(tmp_path, exported, capsys):
    from collapse_passes.cli import main

    path = exported("resnet18")
    for args, msg in ((["--prune-ratio", "1.0"], "--prune-ratio must be in [0, 1)"),
                      (["--prune-ratio", "-0.2"], "--prune-ratio must be in [0, 1)"),
                      (["--prune-ratio", "0.2", "--round-to", "0"], "--round-to must be"),
                      (["--round-to", "4"], "only with --prune-ratio")):
        assert main([path, "--dry-run", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    with pytest.raises(CollapseError, match="prune ratio must be|--prune-ratio must be"):
        api.collapse(path, prune_ratio=1.5)
    # global ranking that would take every channel of one layer
    model = onnx.load(path)
    cg = build_channel_graph(to_graph(model))
    first = next(g for g in cg.groups() if cg.prunable_units(g))
    scores = {}
    for g in cg.groups():
        for s in g.slots:
            scores[s[0]] = [(-1e9 if g is first else 1.0)] * cg.size(s)
    with pytest.raises(CollapseError, match="would empty layer"):
        ratio_prune(model, 0.1, importance="scores", channel_scores=scores)


# ----------------------------------------------------------------------------- calibration, CLI

def test_data_dependent_removal_with_calib(tmp_path):
    torch.manual_seed(0)
    m = SmallVGG().eval()
    with torch.no_grad():
        m.b1.bias[:2] = -50.0  # always off on any reasonable data, but not structurally constant
    path = export_quiet(m, tmp_path / "vgg.onnx", (1, 3, 16, 16), False)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_x((16, 3, 16, 16), seed=3))
    plain = api.collapse(path)
    assert plain.report["pruning"]["removed_channels"] == 0
    # an approximation: only on request (--prune-calib-dead), never by default with --calib
    by_default = api.collapse(path, calib=str(calib))
    assert by_default.report["pruning"]["removed_channels"] == 0 and not by_default.report["approximate"]
    res = api.collapse(path, calib=str(calib), prune_calib_dead=True)
    pr = res.report["pruning"]
    assert pr["removed_channels"] >= 2 and pr["data_dependent"]
    first = pr["groups"][0]  # b1's ReLU: the planted channels (random calibration data may switch off others too)
    assert first["channels_before"] == 6 and first["channels_after"] <= 4 and "data-dependent" in first["kind"]
    assert res.passed and res.report["verification"]["against_requested"]["passed"]
    # removal that holds on the calibration data only is said: approximate, with a warning (it was "exact")
    assert res.report["approximate"] and not plain.report["approximate"]
    assert any("off on every calibration sample" in w and "max abs" in w for w in res.report["warnings"])
    # what the removal changes is measured on random inputs against the model that keeps those channels
    err = pr["calib_dead_error"]
    from collapse_passes.verify import random_inputs
    feeds = random_inputs(res.original, 3, 1)
    keep, got = session(onnx.load(path)), session(res.model)
    diff = max(float(np.abs(keep.run(None, f)[0] - got.run(None, f)[0]).max()) for f in feeds)
    assert err["max_abs"] == pytest.approx(diff, rel=1e-3, abs=1e-6) and err["inputs"] == "3 random input(s)"
    with pytest.raises(CollapseError, match="--calib"):
        api.collapse(path, prune_calib_dead=True)
    with pytest.raises(CollapseError, match="--no-prune"):
        api.collapse(path, calib=str(calib), prune_calib_dead=True, prune=False)
    # torch front end: the same channels, and the result equals the module with them forced to 0
    batches = [torch.from_numpy(_x((8, 3, 16, 16), seed=s)) for s in (3, 4)]
    pm, frep = prune_module(m, batches[0][:1], calib=batches)
    assert frep["data_dependent"] and frep["groups"][0]["channels_after"] <= 4
    assert prune_module(m, batches[0][:1])[1]["removed_channels"] == 0
    with torch.no_grad():  # on the calibration data those channels are 0 anyway: same output there
        torch.testing.assert_close(pm(batches[1]), m(batches[1]), rtol=1e-4, atol=1e-5)


def test_cli_no_prune_and_ratio(tmp_path, planted_onnx):
    from collapse_passes.cli import main

    path = planted_onnx(False)
    out1, out2 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert main([path, "-o", str(out1), "-q", "--no-prune"]) == 0
    assert main([path, "-o", str(out2), "-q", "--prune-ratio", "0.3", "--round-to", "2", "--report",
                 str(tmp_path / "r.json")]) == 0
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    ratio = rep["pruning"]["ratio"]
    assert ratio["removed_channels"] > 0 and ratio["error_vs_unpruned"]["max_abs"] > 0
    assert model_stats(onnx.load(out2)).params < model_stats(onnx.load(out1)).params
    assert main([path, "--dry-run", "--prune-ratio", "0.3", "--prune-max-error", "1e-9"]) == 1


def test_ratio_importance_statistics_and_user_scores(tmp_path):
    import json

    torch.manual_seed(0)
    m = randomize_bn(SmallVGG().eval())
    path = export_quiet(m, tmp_path / "vgg.onnx", (1, 3, 16, 16), False)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_x((16, 3, 16, 16), seed=3))
    for imp in ("easier", "tlc"):
        r = api.collapse(path, prune_ratio=0.3, prune_importance=imp, calib=str(calib), prune_scope="layer")
        ratio = r.report["pruning"]["ratio"]
        assert ratio["importance"] == "scores" and ratio["removed_channels"] > 0
    # user scores for one layer: only that layer is a candidate; the lowest-scored channels go
    scores = tmp_path / "ch.json"
    scores.write_text(json.dumps({"/c1/Conv": [0.1, 5, 5, 5, 5, 0.2]}))
    r = api.collapse(path, prune_ratio=0.34, prune_importance=str(scores))
    rows = r.report["pruning"]["ratio"]["groups"]
    assert [(x["group"], x["channels_before"], x["channels_after"]) for x in rows] == [("/c1/Conv", 6, 4)]
    assert r.report["approximate"]   # a ratio prune is an approximation, at the top of the report too
    assert r.model is not None and r.report["pruning"]["ratio"]["params_saved"] == 2 * (3 * 9 + 1) + 2 * 8 * 9  # c1 filters + biases (BN folded by the exporter), c2 inputs


def test_ratio_prune_reports_accuracy_with_eval(tmp_path):
    torch.manual_seed(0)
    m = randomize_bn(SmallVGG().eval())
    path = export_quiet(m, tmp_path / "vgg.onnx", (1, 3, 16, 16), False)
    data = tmp_path / "eval.npz"
    xs = _x((6, 3, 16, 16), seed=5)
    with torch.no_grad():
        labels = m(torch.from_numpy(xs)).argmax(1).numpy()  # the unpruned model is right on all of them
    np.savez(data, input=xs, labels=labels)
    r = api.collapse(path, prune_ratio=0.5, eval_data=str(data))
    acc = r.report["pruning"]["ratio"]["accuracy"]
    assert acc["unpruned"] == 1.0 and 0.0 <= acc["pruned"] <= 1.0


@settings(max_examples=6, deadline=None)
@given(ratio=st.floats(0.0, 0.9), round_to=st.sampled_from([1, 2, 4]), scope=st.sampled_from(["global", "layer"]),
       norm=st.sampled_from(["l1", "l2"]))
def test_ratio_prune_property_runs_and_rounds(exported, ratio, round_to, scope, norm):
    """Any ratio prune of a residual net gives a valid model whose kept counts are multiples of round_to
    (or the whole layer), or one clear refusal when a layer would be emptied."""
    model = onnx.load(exported("resnet18"))
    try:
        pr, info = ratio_prune(model, ratio, scope=scope, round_to=round_to, importance=norm)
    except CollapseError as exc:
        assert scope == "global" and "would empty layer" in str(exc)
        return
    for r in info["groups"]:
        assert 0 < r["channels_after"] < r["channels_before"]
        assert r["channels_after"] % round_to == 0 or r["channels_after"] == r["channels_before"]
    assert _run(pr, _x((1, 3, 32, 32))).shape == (1, 10)
    assert model_stats(pr).params <= model_stats(model).params


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_constant_channels_are_those_of_the_requested_semantics(planted_onnx, dynamo):
    """Collapsing the ReLU after planted zero filters with bias < 0 passes that negative constant on:
    the removal must fold it, not the 0 the ReLU made of it (it once folded 0 and failed verification)."""
    m, blocks = _planted_resnet()
    res = api.collapse(planted_onnx(dynamo), collapse=["layer1.0.relu1"])
    assert res.report["verification"]["against_requested"]["passed"]
    assert res.report["pruning"]["removed_channels"] == sum(b.conv1.out_channels // 2 for b in blocks)
    x = _x((1, 3, 32, 32))
    ref = copy.deepcopy(m)
    ref.layer1[0].relu1 = nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(_run(res.model, x), ref(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)
