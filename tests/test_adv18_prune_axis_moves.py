"""Ops that move the channel axis without touching its channels, on both front ends (H30, 2026-11-29).

* torch.fx: x.permute / x.transpose / x.flatten(2) (a channel-last nn.Linear between convs, MLP-Mixer / ViT style)
  and F.adaptive_avg_pool1d were not understood and froze their groups, while the ONNX exports (Transpose, Reshape,
  AveragePool) pruned them: the two front ends removed different channels of one model.
* ONNX: the torch.export-based exporter writes adaptive_avg_pool1d as Unsqueeze, AveragePool, Squeeze; Unsqueeze was
  not understood, so its export kept a group the TorchScript export pruned, and a ratio prune put the cut elsewhere.
"""
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from models.export import export_onnx
from models.tv_init import calibrate_bn


class _Tokens(nn.Module):
    """conv -> tokens (flatten(2).transpose) -> Linear -> back (transpose) -> pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.lin = nn.Linear(16, 24)
        self.post = nn.Conv1d(24, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)          # N, HW, C
        t = F.relu(self.lin(t)).permute(0, 2, 1)              # N, D, HW
        return self.fc(F.relu(self.post(t)).mean(2))


class _Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(3, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.fc = nn.Linear(16 * 8, 5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool1d(self.c2(self.c1(x)), 8).flatten(1))


def _dead(m):
    """Dead ReLU channels on purpose: BatchNorm gamma 0, beta -1; Linear rows 0 with bias -1."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.weight[::4] = 0.0
                mod.bias[::4] = -1.0
            elif isinstance(mod, nn.Linear) and mod.out_features > 5:
                mod.weight[1::5] = 0.0
                mod.bias[1::5] = -1.0
    return m


CASES = [(_Tokens, (1, 3, 16, 16)), (_Conv1d, (1, 3, 32))]


def _run(m, shape, tmp_path, kw):
    x = torch.randn(*shape)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dynamo in (False, True):
            path = export_onnx(m, tmp_path / f"m{int(dynamo)}.onnx", shape, dynamo=dynamo)
            res = cp.collapse(path, **kw)
            s = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
            out["dynamo" if dynamo else "torchscript"] = (res, s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
        res = cp.collapse(m, example_inputs=(x,), **kw)
        with torch.no_grad():
            out["torch"] = (res, res.model(x).numpy())
            ref = m(x).numpy()
    return out, ref


@pytest.mark.parametrize("net,shape", CASES)
def test_exact_removal_same_on_both_front_ends(tmp_path, net, shape):
    torch.manual_seed(0)
    m = _dead(calibrate_bn(net(), (2,) + shape[1:])).eval()
    out, ref = _run(m, shape, tmp_path, {})
    counts = {k: r.report["pruning"]["removed_channels"] for k, (r, _) in out.items()}
    assert len(set(counts.values())) == 1 and counts["torch"] > 0, counts
    for k, (r, got) in out.items():
        assert r.passed
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("net,shape", CASES)
def test_ratio_prune_same_channels_on_both_front_ends(tmp_path, net, shape):
    torch.manual_seed(0)
    m = calibrate_bn(net(), (2,) + shape[1:]).eval()
    out, _ = _run(m, shape, tmp_path, dict(prune_ratio=0.5, round_to=8))
    rows = {k: [(g["channels_before"], g["channels_after"]) for g in r.report["pruning"]["ratio"]["groups"]]
            for k, (r, _) in out.items()}
    assert rows["torch"] == rows["torchscript"] == rows["dynamo"], rows
    outs = [got for _, got in out.values()]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-4, atol=1e-5)
