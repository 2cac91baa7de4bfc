"""The torch front end counts F.scaled_dot_product_attention as the ONNX exports count what they write for it.

timm-style attention calls F.scaled_dot_product_attention; both ONNX exporters write it as MatMul (q @ k^T),
Softmax, MatMul (attn @ v). The torch report counted no MACs for the call and no nonlinear op in it: a small
ViT reported 1.5 M of its 5.5 M MACs missing and a nonlinear depth 2 short of either export's (before 2026-11-30).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import collapse_passes as cp  # noqa: E402

B, N, D, H = 2, 10, 12, 3


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc1, self.act, self.fc2 = Attn(), nn.Linear(D, 2 * D), nn.ReLU(), nn.Linear(2 * D, D)

    def forward(self, x):
        x = x + self.attn(x)
        return self.fc2(self.act(self.fc1(x)))


def _macs_by_hand() -> int:
    linears = B * N * (D * 3 * D + D * D + D * 2 * D + 2 * D * D)
    attention = 2 * B * H * N * N * (D // H)   # q @ k^T and attn @ v
    return linears + attention


@pytest.mark.parametrize("kind", ["module", "program"])
def test_sdpa_macs_and_softmax_are_counted(kind):
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(B, N, D)
    model = m if kind == "module" else torch.export.export(m, (x,))
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,) if kind == "module" else None)
    before = res.report["before"]
    assert before["macs"] == _macs_by_hand()
    # the one nonlinear op on the attention path (its softmax) and the ReLU: ONNX's Softmax and Relu
    assert before["depth_nonlinear"] == 2 and res.report["after"]["depth_nonlinear"] == 1


def test_sdpa_counts_equal_the_torchscript_export(tmp_path):
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(B, N, D)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    t = cp.collapse(m, collapse=["act"], example_inputs=(x,)).report["before"]
    o = cp.collapse(str(path), collapse=["act"]).report["before"]
    assert (t["macs"], t["depth_nonlinear"]) == (o["macs"], o["depth_nonlinear"])
