"""The report's model stats mean the same on both front ends, and a p=0 Dropout is no op anywhere.

EfficientNet-B0 (random, eval) reported critical path 240 on torch and 239 on ONNX before any collapse, for
opposite reasons: the torch count held its 49 BatchNorms and the classifier's Dropout (both exporters fold /
drop them), the ONNX count held each SiLU twice (the exporters write Sigmoid + Mul). Both now count ops of
the deployed model: an activation one op, a BatchNorm folded into its conv none, parameters after that fold.
A Dropout(0.0) (Swin-T's default) traced or exported in train mode stayed between fc1 and fc2 and kept them
apart on both front ends; with p = 0 it passes its input through in every mode.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import collapse_passes as cp
from models import build
from models.export import export_onnx
from models.tv_init import calibrate_bn

pytestmark = pytest.mark.filterwarnings("ignore")

SAME = ("depth_ops", "depth_nonlinear", "macs", "params", "activations")


def _tiny_efficientnet():
    torch.manual_seed(0)
    m = build("efficientnet_b0", width_mult=0.25, depth_mult=0.25, num_classes=10)
    with torch.no_grad():   # no all-zero biases: the exporters share (TorchScript) or drop (dynamo) equal ones
        for p in m.parameters():
            if not p.any():
                p.uniform_(-0.1, 0.1)
    return calibrate_bn(m, (2, 3, 32, 32)).eval()


@pytest.mark.parametrize("other", ["torchscript", "dynamo", "exported_program"])
def test_efficientnet_stats_equal_on_both_front_ends(tmp_path, other):
    m = _tiny_efficientnet()
    x = torch.randn(1, 3, 32, 32)
    keys = [k["key"] for k in cp.list_keys(m, example_inputs=(x,))][1:3]
    t = cp.collapse(m, collapse=keys, example_inputs=(x,), merge=False).report
    if other == "exported_program":   # aten functions only: the classifier's in-place dropout, the SE sigmoids
        o = cp.collapse(torch.export.export(m, (x,)), collapse=keys, example_inputs=(x,), merge=False).report
    else:
        o = cp.collapse(export_onnx(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo=other == "dynamo"),
                        collapse=keys, merge=False).report
    for side in ("before", "after"):
        assert {k: t[side][k] for k in SAME} == {k: o[side][k] for k in SAME}, side
    # nothing but the two activations changed the path (folding a BatchNorm is no gain of the collapse)
    assert t["before"]["depth_ops"] - t["after"]["depth_ops"] == 2


class Mlp(nn.Module):
    """Swin-T's MLP: Linear, GELU, Dropout(0.0), Linear, Dropout(0.0)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.0)
        self.fc2, self.drop2 = nn.Linear(32, 8), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def _merged(report):
    return [len(m["nodes"]) for m in report["merges"]]


def test_p0_dropout_of_a_train_mode_export_does_not_block_the_merge():
    torch.manual_seed(0)
    m, x = Mlp().train(), torch.randn(4, 8)
    ep = torch.export.export(m, (x,))   # keeps aten.dropout(x, 0.0, True)
    res = cp.collapse(ep, collapse=["act"], example_inputs=(x,))
    assert res.passed and _merged(res.report) == [2] and res.report["after"]["nodes"] == 1


def test_p0_dropout_of_a_train_mode_onnx_export_does_not_block_the_merge(tmp_path):
    torch.manual_seed(0)
    m, x = Mlp().train(), torch.randn(4, 8)
    path = tmp_path / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(m, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False)   # Dropout(ratio 0, training_mode True)
    res = cp.collapse(str(path), collapse=["act"])
    assert res.passed and _merged(res.report) == [2]
    assert res.report["before"]["depth_ops"] == 3   # fc1, GELU, fc2: the Dropouts are no ops
    assert [n.op_type for n in res.model.graph.node if n.op_type != "Constant"] == ["Gemm"]


class Attention(nn.Module):
    """LayerNorm, qkv, softmax(q @ k^T) @ v, proj: MatMuls of two activations, functional nonlinear ops."""

    def __init__(self, d=16):
        super().__init__()
        self.ln, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1) @ v)


@pytest.mark.parametrize("other", ["torchscript", "dynamo", "exported_program"])
def test_attention_matmul_macs_and_nonlinear_depth_equal_on_both_front_ends(tmp_path, other):
    torch.manual_seed(0)
    m, x = Attention().eval(), torch.randn(1, 8, 16)
    t = cp.collapse(m, example_inputs=(x,)).report["before"]
    if other == "exported_program":
        o = cp.collapse(torch.export.export(m, (x,)), example_inputs=(x,)).report["before"]
    else:
        o = cp.collapse(export_onnx(m, tmp_path / "a.onnx", (1, 8, 16), dynamo=other == "dynamo")).report["before"]
    assert t["macs"] == 8 * 16 * 48 + 2 * 8 * 8 * 16 + 8 * 16 * 16   # qkv, the two matmuls, proj
    assert {k: t[k] for k in SAME} == {k: o[k] for k in SAME}
    assert t["depth_nonlinear"] == 2   # LayerNorm, softmax
