"""A per-channel scale before a zero-padded conv folds on ONNX as on torch (H60, 2026-11-29).

(s*x) padded with zeros is s*(x padded with zeros), so conv(s*x) is one conv whatever its padding; only a shift
needs an unpadded conv (the padding would not see it). The torch front end folded the scale
(fx/passes/fold_batchnorm.py, "affine-before"); ONNX's FoldAffineIntoNext refused anything before a padded conv:
a Mul / Div by a per-channel constant, a BatchNormalization with zero shift, and the `/ std` of input
normalisation (both exporters write it as a Div) stayed before the stem conv."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import collapse_passes as cp
from collapse_passes.verify import random_inputs, run
from conftest import export_quiet, make_model, rnd, vinfo

C, O = 3, 5


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _same(a, b):
    feeds = random_inputs(a, 2, seed=3)
    for x, y in zip(run(a, feeds)[0], run(b, feeds)[0]):
        for u, v in zip(x, y):
            np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)


def _before_conv(op, const, pads, auto_pad=None):
    """x -> op(x, const) -> Conv(3x3, pads) -> y."""
    inits = {"c": const, "w": rnd(O, C, 3, 3, seed=1), "b": rnd(O, seed=2)}
    attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": [pads] * 4}
    nodes = [helper.make_node(op, ["x", "c"], ["s"], name="aff"),
             helper.make_node("Conv", ["s", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], **attrs)]
    return make_model(nodes, [vinfo("x", [2, C, 6, 6])], [vinfo("y", [2, O, 6 if pads or auto_pad else 4,
                                                                     6 if pads or auto_pad else 4])], inits)


SCALE = (np.array([0.5, -2.0, 3.0], np.float32).reshape(1, C, 1, 1))


@pytest.mark.parametrize("op, pads, auto_pad", [("Mul", 1, None), ("Div", 1, None), ("Mul", 0, "SAME_UPPER"),
                                                ("Mul", 0, None)])
def test_a_per_channel_scale_folds_into_a_zero_padded_conv(op, pads, auto_pad):
    m = _before_conv(op, SCALE, pads, auto_pad)
    r = cp.collapse(m, collapse=[])
    assert _ops(r.model) == ["Conv"], _ops(r.model)
    assert [(f["op"], f["where"]) for f in r.report["folds"]] == [(op, "before")]
    _same(m, r.model)


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_a_shift_stays_before_a_padded_conv(op):
    m = _before_conv(op, SCALE, 1)
    r = cp.collapse(m, collapse=[])
    assert _ops(r.model) == [op, "Conv"] and r.report["folds"] == []
    _same(m, r.model)


def test_a_batchnorm_folds_before_a_padded_conv_only_when_its_shift_is_zero():
    """BN(x) = gamma * (x - mean) / sqrt(var + eps) + beta is a pure scale where beta == gamma * mean / sqrt(...)
    exactly: mean = beta = 0 here. With a nonzero beta it stays (the zero border would need it)."""
    def model(beta):
        inits = {"g": np.array([0.5, 2.0, -1.5], np.float32), "be": np.full(C, beta, np.float32),
                 "mu": np.zeros(C, np.float32), "var": np.array([1.0, 4.0, 0.25], np.float32),
                 "w": rnd(O, C, 3, 3, seed=1), "b": rnd(O, seed=2)}
        nodes = [helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["s"], name="bn",
                                  epsilon=1e-5),
                 helper.make_node("Conv", ["s", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1] * 4)]
        return make_model(nodes, [vinfo("x", [2, C, 6, 6])], [vinfo("y", [2, O, 6, 6])], inits)

    m = model(0.0)
    r = cp.collapse(m, collapse=[])
    assert _ops(r.model) == ["Conv"] and [f["op"] for f in r.report["folds"]] == ["BatchNormalization"]
    _same(m, r.model)
    m = model(0.25)
    r = cp.collapse(m, collapse=[])
    assert _ops(r.model) == ["BatchNormalization", "Conv"] and r.report["folds"] == []
    _same(m, r.model)


def test_input_normalisation_before_a_padded_stem_folds_alike_on_both_front_ends(tmp_path):
    """(x - mean) / std before a padded conv: torch folds the Div (a scale) and keeps the Sub; both exporters'
    ONNX files now do the same (they kept both)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
            self.c1, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.act(self.c1((x - self.mean) / self.std))

    torch.manual_seed(0)
    model, x = Normalised().eval(), torch.rand(1, 3, 8, 8)
    fx_rep = cp.collapse(model, collapse=[], example_inputs=(x,)).report
    assert [f["kind"] for f in fx_rep["folds"]] == ["affine-before"]
    for dynamo in (False, True):
        path = export_quiet(model, tmp_path / f"m{int(dynamo)}.onnx", (1, 3, 8, 8), dynamo)
        r = cp.collapse(path, collapse=[])
        assert [f["op"] for f in r.report["folds"]] == ["Div"], (dynamo, r.report["folds"])
        assert _ops(r.model) == ["Sub", "Conv", "Relu"], (dynamo, _ops(r.model))
        assert r.report["after"]["nodes"] == fx_rep["after"]["nodes"], dynamo
        _same(r.requested, r.model)


# ------------------------------------------------------------------ through a pad that copies pixels

def _through_pad(op, mode, conv_pads):
    """x -> op(x, SCALE) -> Pad(mode, 1 on each spatial side) -> Conv(3x3, conv_pads) -> y."""
    inits = {"c": SCALE, "w": rnd(O, C, 3, 3, seed=1), "b": rnd(O, seed=2),
             "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    nodes = [helper.make_node(op, ["x", "c"], ["s"], name="aff"),
             helper.make_node("Pad", ["s", "p"], ["q"], name="pad", mode=mode),
             helper.make_node("Conv", ["q", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[conv_pads] * 4)]
    side = 6 + 2 * conv_pads
    return make_model(nodes, [vinfo("x", [2, C, 6, 6])], [vinfo("y", [2, O, side, side])], inits)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_an_affine_folds_through_a_pad_that_copies_pixels(op, mode):
    """reflect / edge padding copies pixels of the same channel, so a per-channel affine commutes with it: the
    affine goes into the conv and the Pad stays; a shift only where the conv itself adds no zero padding."""
    for conv_pads in (0, 1):
        m = _through_pad(op, mode, conv_pads)
        r = cp.collapse(m, collapse=[])
        folds = op == "Mul" or conv_pads == 0
        assert _ops(r.model) == (["Pad", "Conv"] if folds else [op, "Pad", "Conv"]), (conv_pads, _ops(r.model))
        assert [f.get("through") for f in r.report["folds"]] == (["pad"] if folds else [])
        _same(m, r.model)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_input_normalisation_before_a_reflect_padded_stem_folds_alike_on_both_front_ends(tmp_path, mode):
    """A padding_mode conv is a pad then an unpadded conv: (x - mean) / std folds into it whole, on torch (the
    conv module split as F.pad + conv, also from torch.export's aten.pad) and on both exporters' Pad + Conv."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
            self.c1, self.act = nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.ReLU()

        def forward(self, x):
            return self.act(self.c1((x - self.mean) / self.std))

    torch.manual_seed(0)
    model, x = Normalised().eval(), torch.rand(1, 3, 8, 8)
    x2 = torch.rand(1, 3, 8, 8) * 4 - 2   # the exported program's batch is 1
    for src in (model, torch.export.export(model, (x,))):
        res = cp.collapse(src, collapse=[], example_inputs=(x,) if src is model else None)
        assert [f["kind"] for f in res.report["folds"]] == ["affine-before"] * 2, res.report["folds"]
        run = res.model if src is model else res.model.module()
        with torch.no_grad():
            assert torch.allclose(run(x2), model(x2), rtol=1e-4, atol=1e-5)
    fx_after = cp.collapse(model, collapse=[], example_inputs=(x,)).report["after"]["nodes"]
    for dynamo in (False, True):
        path = export_quiet(model, tmp_path / f"m{int(dynamo)}.onnx", (1, 3, 8, 8), dynamo)
        r = cp.collapse(path, collapse=[])
        assert sorted(f["op"] for f in r.report["folds"]) == ["Div", "Sub"], (dynamo, r.report["folds"])
        assert _ops(r.model) == ["Pad", "Conv", "Relu"], (dynamo, _ops(r.model))
        assert r.report["after"]["nodes"] == fx_after, dynamo
        _same(r.requested, r.model)
