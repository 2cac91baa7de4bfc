"""Adversarial round 20 (H51): the torch front end judged on layouts it was never tuned for."""
from __future__ import annotations

import warnings

import torch
from torch import nn

import collapse_passes as cp


class _NhwcHead(nn.Module):
    """symbolic_trace cannot follow the size branch (traced with torch.export); a channels-last body whose head
    permutes back and pools, as torchvision's Swin does: size-oblivious export guards its batch to > 1 here."""

    def __init__(self):
        super().__init__()
        self.lin, self.act = nn.Linear(3, 4), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        x = self.act(self.lin(x.permute(0, 2, 3, 1)))
        return self.fc(torch.flatten(self.pool(x.permute(0, 3, 1, 2)), 1))


def test_untraceable_module_collapsed_at_batch_2_runs_at_batch_1():
    """The torch.export fallback exported a batch-2 example size-obliviously, which wrote `batch > 1` into the
    program: torchvision's Swin-T collapsed with example_inputs of batch 2 then refused batch 1 ("Guard failed:
    x.size()[0] > 1"), with no note saying so. A batch > 1 is now exported plainly first (any batch)."""
    torch.manual_seed(0)
    m = _NhwcHead().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cp.collapse(m, collapse=["act"], example_inputs=(torch.randn(2, 3, 8, 8),))
    assert not any("example batch" in n for n in res.report["notes"]), res.report["notes"]
    for b in (1, 3):
        x = torch.randn(b, 3, 8, 8)
        with torch.no_grad():
            ref = m.fc(torch.flatten(m.pool(m.lin((x * 2).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)), 1))
            got = res.model(x)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), b


class _DictIn(nn.Module):
    """forward(batch) of a dict, as data-loader-shaped models are written; `branch` adds a size branch
    symbolic_trace cannot follow (so an nn.Module goes through the torch.export fallback)."""

    def __init__(self, branch: bool = False):
        super().__init__()
        self.branch = branch
        self.c, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.r, self.d = nn.ReLU(), nn.Conv2d(8, 4, 1)

    def forward(self, batch):
        x = batch["image"] * batch["gain"]
        if self.branch and x.shape[-1] > 4:
            x = x * 2
        return {"out": self.d(self.r(self.bn(self.c(x))))}

    def linear(self, batch):
        x = batch["image"] * batch["gain"] * (2 if self.branch else 1)
        return self.d(self.bn(self.c(x)))


def _dict_batch(b):
    return {"image": torch.randn(b, 3, 8, 8), "gain": torch.rand(b, 1, 1, 1)}


def _live(m):
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_program_of_a_dict_input_is_collapsed():
    """collapse(ep) of a program whose forward takes a dict was refused: ep.module() has one placeholder per tensor
    in the dict, so "the traced model takes 2 input(s) and example_inputs gives 1; batch_gain are missing", even
    with the program's own example inputs; with a dynamic batch the re-export then gave torch.export one spec per
    placeholder instead of the dict's structure."""
    torch.manual_seed(0)
    m = _live(_DictIn())
    ex = (_dict_batch(2),)
    b = torch.export.Dim("b", min=1, max=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = ({"image": {0: b}, "gain": {0: b}},)
        progs = [torch.export.export(m, ex), torch.export.export(m, ex, dynamic_shapes=dyn)]
        results = [cp.collapse(progs[0], collapse=["r"]), cp.collapse(progs[1], collapse=["r"], example_inputs=ex)]
    for res, batches in zip(results, [(2,), (1, 3)]):
        assert isinstance(res.model, torch.export.ExportedProgram) and res.passed
        for bs in batches:
            x = _dict_batch(bs)
            with torch.no_grad():
                assert torch.allclose(res.model.module()(x)["out"], m.linear(x), rtol=1e-5, atol=1e-6), bs


def test_untraceable_module_of_a_dict_input_keeps_its_batch_dynamic():
    """The torch.export fallback made only top-level tensors' batch dynamic: a dict input was exported at its
    example batch (the result refused any other batch)."""
    torch.manual_seed(0)
    m = _live(_DictIn(branch=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cp.collapse(m, collapse=["r"], example_inputs=(_dict_batch(2),))
    assert not any("example batch" in n for n in res.report["notes"]), res.report["notes"]
    for bs in (1, 3):
        x = _dict_batch(bs)
        with torch.no_grad():
            assert torch.allclose(res.model(x)["out"], m.linear(x), rtol=1e-5, atol=1e-6), bs


class _LayerScale(nn.Module):
    """x + gamma * conv2(act(conv1(x))) with a per-channel layer scale (ConvNeXt / timm style), then a conv whose
    output is scaled by a per-channel buffer and shifted by a per-position one (which must not fold)."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1, self.act, self.conv2 = nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.1)
        self.head = nn.Conv2d(c, 4, 1)
        self.register_buffer("scale", torch.rand(1, 4, 1, 1) + 0.5)
        self.register_buffer("pos", torch.randn(1, 4, 8, 8))
        self.out = nn.Linear(4, 3)
        self.tok_scale = nn.Parameter(torch.rand(3) + 0.5)

    def forward(self, x, linear=False):
        x = self.stem(x)
        h = self.conv1(x)
        x = x + self.gamma * self.conv2(h if linear else self.act(h))
        y = self.head(x) * self.scale + self.pos
        return self.out(y.mean((2, 3))) * self.tok_scale


def test_per_channel_layer_scale_folds_into_the_conv():
    """A layer scale (a (C, 1, 1) parameter) or a per-channel buffer multiplying a conv's output stayed an op on
    the torch front end (only Python numbers folded), so the collapsed block kept conv1, conv2, the Mul and the
    residual Add where the ONNX front end, which folds per-channel Mul/Add, merged them: depth 12 -> 10 on torch
    against 12 -> 3 on its ONNX export (now 12 -> 4). A per-position buffer (1, C, H, W) is no per-channel affine
    and stays."""
    torch.manual_seed(0)
    m = _LayerScale().eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cp.collapse(m, collapse=["act"], example_inputs=(x,))
    kinds = [f["kind"] for f in res.report["folds"]]
    assert kinds.count("scalar-affine-after") == 3, res.report["folds"]   # gamma, scale, tok_scale; not pos
    assert res.report["after"]["depth_ops"] <= 4, (res.report["before"], res.report["after"])
    for b in (1, 3):
        xb = torch.randn(b, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(res.model(xb), m(xb, linear=True), rtol=1e-4, atol=1e-5), b
    assert any(p.requires_grad for p in res.model.parameters())   # built from trainable weights: trainable
