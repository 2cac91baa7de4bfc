"""Ratio pruning ranks a conv filter followed by a BatchNorm as it computes (H16, 2026-11-29).

Both torch exporters fold eval BatchNorm into the conv before it, so the ONNX front end ranked
||W * gamma / sqrt(var + eps)|| while the torch front end (BN kept as a module) ranked ||W||: the same
ResNet-50 at ratio 0.3 kept 38 stem channels through ONNX and 33 through `collapse(nn.Module, ...)`,
although docs/pruning.md says `collapse()` of a module runs the same pruning as the ONNX path.
`ChannelGraph.filter_importance` now scales a filter read only by a BN by |BN scale|.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module
from conftest import export_quiet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _net():
    """c1's filters grow in norm with the channel index while b1's gamma shrinks faster: by raw filter norm
    channels 0..k go first, by the folded (BN-scaled) norm the last ones do."""
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        for i in range(16):
            m.c1.weight[i] = torch.randn(3, 3, 3).sign() * (1.0 + 0.1 * i)
        m.b1.weight.copy_(torch.linspace(4.0, 0.5, 16) ** 2)
        m.b1.bias.uniform_(-0.1, 0.1)
        m.b2.weight.uniform_(0.5, 1.5)
    return m.eval()


def _kept_rows(w_pruned: np.ndarray, w_ref: np.ndarray) -> list[int]:
    """Which rows of w_ref (up to a positive per-row scale) the pruned weight kept, in order."""
    ref = w_ref.reshape(len(w_ref), -1)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    out = []
    for r in w_pruned.reshape(len(w_pruned), -1):
        out.append(int(np.argmax(ref @ (r / np.linalg.norm(r)))))
    return out


def test_torch_and_onnx_keep_the_same_channels(tmp_path):
    m = _net()
    x = torch.randn(1, 3, 8, 8)
    w1 = m.c1.weight.detach().numpy().copy()
    pm, rep = prune_module(m, x, ratio=0.25, scope="layer")
    torch_kept = _kept_rows(pm.get_submodule("c1").weight.detach().numpy(), w1)
    assert len(torch_kept) == 12
    # the folded norm (what the exporters write) decides: b1's large gammas sit on the low channels
    assert torch_kept == list(range(12)), torch_kept

    for dynamo in (False, True):
        path = export_quiet(m, tmp_path / f"m{int(dynamo)}.onnx", (1, 3, 8, 8), dynamo)
        res = cp.collapse(path, collapse=[], prune_ratio=0.25, prune_scope="layer", check=1)
        g = res.model
        convs = [nd for nd in g.graph.node if nd.op_type == "Conv"]
        inits = {t.name: numpy_helper.to_array(t) for t in g.graph.initializer}
        onnx_kept = _kept_rows(inits[convs[0].input[1]], w1)
        assert onnx_kept == torch_kept, (dynamo, onnx_kept, torch_kept)


def test_global_scope_counts_agree_with_onnx(tmp_path):
    m = _net()
    x = torch.randn(1, 3, 8, 8)
    res_t = cp.collapse(m, prune_ratio=0.3, example_inputs=(x,), check=1)
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), False)
    res_o = cp.collapse(path, collapse=[], prune_ratio=0.3, check=1)

    def rows(r):
        return [(g["channels_before"], g["channels_after"]) for g in r.report["pruning"]["ratio"]["groups"]]

    assert rows(res_t) == rows(res_o)
    assert res_t.report["after"]["macs"] == res_o.report["after"]["macs"]
