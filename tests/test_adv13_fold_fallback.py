"""The gate's last resort: a result whose folds (BatchNorm into the conv before it, in float32) put it out
of tolerance, farther than float32 rounding of the request goes, was refused outright: a random
EfficientNet-B0 on the torch front end with 16 SiLUs collapsed (folded result 0.75 off, the request's own
float32 outputs 0.028, the float64 model 1e-13: exact algebra, float32 weights too coarse). The
activations linearized and nothing folded is the request's own ops: that result is now written, with a
warning giving the folded result's numbers and `fold_fallback` in the report."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import collapse_passes as cp


class _Cancelling(nn.Module):
    """(h1 - h2) of two ~1e5-scale rows behind a BatchNorm, averaged over 1024 positions of x + 10: float32
    arithmetic errors average out over the positions, the folded weights' rounding does not."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.act = nn.Conv2d(8, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()
        self.c2 = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            w = torch.stack([torch.full((8,), 1e5) + torch.arange(8.0), torch.full((8,), 1e5)])
            self.c1.weight.copy_(w[:, :, None, None])
            self.bn.weight.fill_(0.7)
            self.bn.bias.fill_(0.0)
            self.bn.running_var.fill_(1.0 - 1e-5)
            self.c2.weight.copy_(torch.tensor([1.0, -1.0])[None, :, None, None])
        # x + 10 as a per-position buffer: a constant shift (a number, a per-channel buffer) now folds into c1's
        # bias (fx/passes/fold_batchnorm, input normalisation), which takes away the cancellation this case needs
        self.register_buffer("offset", torch.full((1, 1, 32, 32), 10.0))

    def forward(self, x):
        return self.c2(self.act(self.bn(self.c1(x + self.offset)))).mean((2, 3))


@pytest.mark.parametrize("merge", [True, False])
def test_torch_front_end_writes_the_unfolded_result(merge):
    m = _Cancelling().eval()
    x = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    r = cp.collapse(m, collapse=["act"], example_inputs=(x,), merge=merge)
    fb = r.report["fold_fallback"]
    assert r.passed and fb["folds_refused"] >= 1 and fb["max_rel_folded"] > 1e-4
    assert any("folding refused after verification" in w for w in r.report["warnings"])
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in r.model.modules())   # kept, not folded
    with torch.no_grad():
        assert torch.equal(r.model(x), m.c2(m.bn(m.c1(x + m.offset))).mean((2, 3)))   # the request's own ops


def _bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             [("W", rng.standard_normal((4, 3, 3, 3))), ("g", rng.uniform(0.5, 1.5, 4)), ("b", rng.standard_normal(4)),
              ("mu", rng.standard_normal(4)), ("var", rng.uniform(0.5, 1.5, 4)), ("W2", rng.standard_normal((2, 4, 1, 1)))]]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="act"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_front_end_writes_the_unfolded_result(monkeypatch):
    """The same last resort on ONNX, with a fold made off on purpose (ONNX exporters fold BatchNorm already,
    and onnxruntime folds it at load, so a real case is rare there): nothing folded is written."""
    from collapse_passes.algebra import conv as conv_alg

    real = conv_alg.bn_to_affine

    def off(*args, **kw):
        scale, shift = real(*args, **kw)
        return scale * 1.01, shift

    monkeypatch.setattr(conv_alg, "bn_to_affine", off)
    r = cp.collapse(_bn_model(), collapse=["act"], merge=False)
    assert r.passed and r.report["fold_fallback"]["folds_refused"] == 1
    assert [n.op_type for n in r.model.graph.node] == ["Conv", "BatchNormalization", "Conv"]


def test_torch_compile_backend_takes_the_same_last_resort():
    m = _Cancelling().eval()
    x = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    be = cp.torch_backend(collapse=["act"], inductor=False)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(m, backend=be)(x)
    [rep] = be.reports
    assert rep["fold_fallback"]["folds_refused"] >= 1 and rep["verification"]["passed"]
    with torch.no_grad():
        assert torch.allclose(got, m.c2(m.bn(m.c1(x + m.offset))).mean((2, 3)), rtol=1e-6, atol=0)
