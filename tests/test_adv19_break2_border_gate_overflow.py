"""--allow-border-approx without --approx-max-error passed a result whose requested semantics overflow float32
(nonfinite_request: nothing to verify against) with "border approximation: max abs error inf", exit 0 and the
model written; with a limit it was refused as "the border approximation is max abs inf", blaming the merge for
the overflow. verify.border_approximation_gate accepts a measured (finite) error only and keeps the
comparison's own reason (H45, 2026-11-29). Both front ends go through it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import VerificationError

OVERFLOW = "requested semantics outputs NaN/Inf"


def _weights():
    rng = np.random.default_rng(0)
    w1 = (10 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32)
    w2 = -np.abs(rng.standard_normal((4, 4, 3, 3))).astype(np.float32)   # ReLU before: the sum <= 0, exp <= 1
    return w1, w2


def _onnx(path):
    w1, w2 = _weights()
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["a"], ["r"], name="relu"),
                           helper.make_node("Conv", ["r", "w2"], ["b"], pads=[1, 1, 1, 1]),
                           helper.make_node("ReduceSum", ["b", "ax"], ["s"], keepdims=1),
                           helper.make_node("Exp", ["s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(np.array([1, 2, 3], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        w1, w2 = _weights()
        self.c1, self.relu = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.c1.weight.copy_(torch.from_numpy(w1))
            self.c2.weight.copy_(torch.from_numpy(w2))

    def forward(self, x):
        return torch.exp(self.c2(self.relu(self.c1(x))).sum((1, 2, 3), keepdim=True))


@pytest.mark.parametrize("limit", [None, 1.0])
def test_onnx_overflow_is_refused_as_overflow(tmp_path, limit):
    with pytest.raises(VerificationError, match=OVERFLOW):
        cp.collapse(_onnx(tmp_path / "m.onnx"), collapse=["relu"], allow_border_approx=True, approx_max_error=limit)


def test_torch_result_overflow_is_refused_without_a_limit():
    """Here the requested semantics stay finite and the border-merged result overflows: an error of inf, which
    no limit (none given) may accept."""
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match="the result outputs NaN/Inf where the requested semantics are finite"):
        cp.collapse(_Net().eval(), example_inputs=(torch.randn(1, 3, 8, 8),), collapse=["relu"],
                    allow_border_approx=True)
