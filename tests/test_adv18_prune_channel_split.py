"""A channel split (ShuffleNetV2 / GhostNet-style torch.chunk, then a branch, then a concat) through exact
constant-channel removal on both torch exporters (H30, 2026-11-29).

* The torch.export-based exporter writes torch.chunk as an opset-18 Split with `num_outputs`; the rewrite gave it a
  `split` attribute (gone since opset 13) and the whole run failed with "collapsed model: invalid ONNX model".
* The TorchScript exporter writes it as one Slice per chunk: a constant channel of the first chunk was kept because
  the second chunk's Slice reads the same tensor, so the two exports of one model lost different channels.
* torch.fx: x.chunk / torch.split / x[:, lo:hi] were not understood and froze the groups around them, so
  collapse(nn.Module) removed fewer channels than either export (9 vs 15 here); they are read as the ranges they
  are, and the rewrite gives the split its new sizes and the slice its new bounds.
"""
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import collapse_passes as cp
from models.export import export_onnx


def _cbr(i, o, k):
    return nn.Sequential(nn.Conv2d(i, o, k, 1, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class _ChunkNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.br = _cbr(8, 8, 1)
        self.post = _cbr(16, 8, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.post(torch.cat([a, self.br(b)], 1)).mean((2, 3))


def _model():
    torch.manual_seed(0)
    m = _ChunkNet()
    with torch.no_grad():
        for bn in (m.stem[1], m.br[1]):
            bn.running_var.uniform_(0.5, 2.0)
        m.stem[1].weight[[2, 5, 12]] = 0.0   # dead ReLU channels: 2 and 5 in chunk a, 12 in chunk b
        m.stem[1].bias[[2, 5, 12]] = -1.0
    return m.eval()


@pytest.mark.parametrize("dynamo", [False, True])
def test_chunk_constant_channels_removed_exactly(tmp_path, dynamo):
    m = _model()
    x = torch.randn(2, 3, 12, 12)
    path = export_onnx(m, tmp_path / "m.onnx", (2, 3, 12, 12), dynamo=dynamo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cp.collapse(path)   # dynamo=True: CollapseError "invalid ONNX model (Unrecognized attribute: split)"
    assert res.passed
    stem = [n for n in res.model.graph.node if n.op_type == "Conv"][0]
    w = next(i for i in res.model.graph.initializer if i.name == stem.input[1])
    assert w.dims[0] == 13, w.dims   # TorchScript's two Slices kept channels 2 and 5 (15)
    assert res.report["pruning"]["removed_channels"] == 3
    s = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(x).numpy(), rtol=1e-4, atol=1e-5)


class _Slices(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.stem = _cbr(3, 16, 3)
        self.b1 = _cbr(10, 8, 1)
        self.b2 = _cbr(6, 8, 3)

    def forward(self, x):
        x = self.stem(x)
        p, q = torch.split(x, [10, 6], dim=1) if self.how == "split" else (x[:, :10], x[:, 10:])
        return torch.cat([self.b1(p), self.b2(q)], 1).mean((2, 3))


@pytest.mark.parametrize("make", [_model, lambda: _Slices("split").eval(), lambda: _Slices("slice").eval()])
@pytest.mark.parametrize("kw", [{}, dict(prune_ratio=0.5, round_to=4)])
def test_torch_front_end_prunes_what_the_exports_prune(tmp_path, make, kw):
    m = make()
    if isinstance(m, _Slices):
        with torch.no_grad():
            m.stem[1].weight[[3, 12]] = 0.0   # one dead channel in each range
            m.stem[1].bias[[3, 12]] = -1.0
    x = torch.randn(2, 3, 12, 12)
    path = export_onnx(m, tmp_path / "m.onnx", (2, 3, 12, 12), dynamo=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ro = cp.collapse(path, **kw)
        rt = cp.collapse(m, example_inputs=(x,), **kw)
    key = "ratio" if kw else None
    rows = [[(g["channels_before"], g["channels_after"]) for g in (r.report["pruning"][key] if key else
                                                                  r.report["pruning"])["groups"]] for r in (ro, rt)]
    assert rows[0] == rows[1], rows   # torch froze the stem's group
    with torch.no_grad():
        got = rt.model(x).numpy()
        want = m(x).numpy()
    if kw:
        s = ort.InferenceSession(ro.model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
