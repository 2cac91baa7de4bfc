"""The torch front end makes the ONNX front end's decisions on the same module (H55, 2026-11-29):
- ReLU6 / clip written torch.minimum(torch.maximum(x, lo), hi) and LeakyReLU written torch.maximum(x, a * x) are one
  site with the kind and key the ONNX export gets (onnx/patterns._two_op_forms); they were no site on torch;
- a conv with padding_mode reflect / replicate followed by a 1x1 conv merges (pad kept before the merged conv), as
  the export's Pad + Conv does; torch left both convs;
- input normalisation (x - mean) / std by constant tensors folds into the stem conv, as the ONNX FoldAffine does;
  before a padded conv only the scale (a shift would have to cross the zero padding)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from tests.conftest import export_quiet  # noqa: E402


class Spelled(nn.Module):
    """conv -> activation spelled as `mode` inside module `act` -> 1x1 conv; `linear=True` is its linear regime."""

    def __init__(self, mode, linear=False):
        super().__init__()
        self.mode, self.linear = mode, linear
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("zero", torch.zeros(()))
        self.register_buffer("six", torch.full((), 6.0))

    def forward(self, x):
        y = self.c1(x)
        if self.linear:
            return self.c2(y)
        if self.mode == "minmax":
            y = torch.minimum(torch.maximum(y, self.zero), self.six)
        elif self.mode == "maxmin":
            y = torch.maximum(torch.minimum(y, self.six), self.zero)
        elif self.mode == "leaky":
            y = torch.maximum(y, 0.1 * y)
        elif self.mode == "clamp":
            y = y.clamp(0, 6)
        elif self.mode == "max_other":          # maximum(y, a * x) of another tensor: no LeakyReLU
            y = torch.maximum(y, 0.1 * self.c1(x * 2))
        elif self.mode == "max_big":            # a >= 1: max(x, 1.5x) is no LeakyReLU
            y = torch.maximum(y, 1.5 * y)
        return self.c2(y)


def _rows(rows):
    return sorted((r["key"], r["kind"]) for r in rows)


@pytest.mark.parametrize("mode,kind", [("minmax", "relu6"), ("maxmin", "relu6"), ("leaky", "leaky_relu"),
                                       ("clamp", "relu6")])
def test_two_op_spellings_are_the_onnx_sites_and_collapse_whole(tmp_path, mode, kind):
    torch.manual_seed(0)
    model, x = Spelled(mode).eval(), torch.randn(1, 3, 8, 8)
    rows = cp.list_keys(model, (x,))
    assert _rows(rows) == [(f"{kind}()", kind)]
    for dynamo in (False, True):
        path = export_quiet(model, tmp_path / f"m{int(dynamo)}.onnx", (1, 3, 8, 8), dynamo)
        assert _rows(cp.list_keys(path)) == _rows(rows)
        onnx_after = cp.collapse(path, collapse=[f"{kind}()"]).report["after"]["nodes"]
    res = cp.collapse(model, collapse=[f"{kind}()"], example_inputs=(x,))
    assert res.report["after"]["nodes"] == onnx_after == 1       # both ops gone, the convs merged
    ref = Spelled(mode, linear=True).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        x2 = torch.randn(2, 3, 8, 8)
        assert torch.allclose(res.model(x2), ref(x2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["max_other", "max_big"])
def test_a_max_that_is_no_leaky_relu_is_no_site(mode):
    model, x = Spelled(mode).eval(), torch.randn(1, 3, 8, 8)
    assert cp.list_keys(model, (x,)) == []


def test_a_lone_maximum_by_a_scalar_is_the_onnx_clip_site(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)
            self.register_buffer("lo", torch.full((), -1.0))

        def forward(self, x):
            return torch.maximum(self.c(x), self.lo)

    model, x = M().eval(), torch.randn(1, 3, 4, 4)
    rows = cp.list_keys(model, (x,))
    path = export_quiet(model, tmp_path / "m.onnx", (1, 3, 4, 4), False)
    assert _rows(rows) == _rows(cp.list_keys(path)) == [("clip()", "clip")]


class Padded(nn.Module):
    def __init__(self, mode, act=True):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode)
        self.act = nn.ReLU() if act else nn.Identity()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_a_reflect_padded_conv_merges_with_the_1x1_after_it(tmp_path, mode):
    torch.manual_seed(0)
    model, x = Padded(mode).eval(), torch.randn(1, 3, 8, 8)
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    path = export_quiet(model, tmp_path / "m.onnx", (1, 3, 8, 8), True)
    onnx_rep = cp.collapse(path, collapse=["act"]).report
    assert len(res.report["merges"]) == len(onnx_rep["merges"]) == 1
    for k in ("nodes", "macs", "depth_ops"):   # the conv's own padding counts as the export's Pad, before and after
        assert res.report["before"][k] == onnx_rep["before"][k] and res.report["after"][k] == onnx_rep["after"][k], k
    ref = Padded(mode, act=False).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        x2 = torch.randn(2, 3, 8, 8)
        assert torch.allclose(res.model(x2), ref(x2), rtol=1e-4, atol=1e-5)


class Normalised(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.c1, self.act = nn.Conv2d(3, 8, 3, padding=pad), nn.ReLU()

    def forward(self, x):
        return self.act(self.c1((x - self.mean) / self.std))


@pytest.mark.parametrize("pad,folds", [(0, 2), (1, 1)])
def test_input_normalisation_folds_into_the_stem_conv_where_exact(tmp_path, pad, folds):
    torch.manual_seed(0)
    model, x = Normalised(pad).eval(), torch.rand(1, 3, 8, 8)
    res = cp.collapse(model, collapse=[], example_inputs=(x,))
    assert [f["kind"] for f in res.report["folds"]] == ["affine-before"] * folds
    if pad == 0:   # as the ONNX fold: Sub and Div gone
        path = export_quiet(model, tmp_path / "m.onnx", (1, 3, 8, 8), False)
        assert res.report["after"]["nodes"] == cp.collapse(path, collapse=[]).report["after"]["nodes"] == 2
    else:          # the shift stays before the padded conv (its zero border), the scale folds
        assert any("kept before" in n for n in res.report["notes"])
    with torch.no_grad():
        x2 = torch.rand(2, 3, 8, 8) * 4 - 2
        assert torch.allclose(res.model(x2), model(x2), rtol=1e-4, atol=1e-5)


def test_the_division_inside_a_spelled_hardswish_is_not_folded_into_the_next_conv():
    class HS(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.c1(x)
            return self.c2(y * F.relu6(y + 3) / 6)

    model, x = HS().eval(), torch.randn(1, 3, 4, 4)
    res = cp.collapse(model, collapse=[], example_inputs=(x,))
    assert [r["kind"] for r in cp.list_keys(res.model, (x,))] == ["hardswish"]


def test_normalising_an_integer_image_is_not_folded_into_the_conv():
    class U8(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.c((x - 127.5) / 255.0)

    model, x = U8().eval(), torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    res = cp.collapse(model, collapse=[], example_inputs=(x,))
    assert [f["nodes"][0] for f in res.report["folds"]] == ["truediv"]   # the float / 255 folds, the uint8 - 127.5 stays
    x2 = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(res.model(x2), model(x2), rtol=1e-4, atol=1e-5)


def test_a_reflect_padded_conv_left_unmerged_counts_as_before(tmp_path):
    """The 3x3 zero-padded conv after it does not merge exactly: written as F.pad + conv, the op count stays."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
            self.act, self.c2 = nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.c2(self.act(self.c1(x)))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(1, 3, 8, 8)
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    onnx_rep = cp.collapse(export_quiet(model, tmp_path / "m.onnx", (1, 3, 8, 8), True), collapse=["act"]).report
    assert res.report["merges"] == [] and onnx_rep["merges"] == []
    assert res.report["after"]["nodes"] == onnx_rep["after"]["nodes"] == res.report["before"]["nodes"] - 1
