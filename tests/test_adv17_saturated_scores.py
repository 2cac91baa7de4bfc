"""ReLU6 and HardSigmoid have a third regime, saturated (constant), above their upper bound. The scores counted
only off / on, so a channel whose input sits half in the linear range and half above it was "always on", scored
0, and was collapsed to its linear regime, which is wrong for every saturated input. The score is now the
entropy over off / linear / saturated (the same number as before when nothing saturates), on both front ends
and for EASIER and TLC alike."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from collapse_passes.scores import compute_scores
from collapse_passes.scores._common import layer_summary
from collapse_passes.scores.torch_hooks import module_scores


def _clip_model(shift: float) -> onnx.ModelProto:
    """y = clip(x + shift, 0, 6) on 4 channels."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])
    nodes = [helper.make_node("Add", ["x", "shift"], ["h"], name="add"),
             helper.make_node("Clip", ["h", "lo", "hi"], ["y"], name="relu6")]
    inits = [helper.make_tensor("shift", TensorProto.FLOAT, [], [shift]),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _calib(n=16):
    return {"x": np.random.default_rng(0).standard_normal((n, 4, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_onnx_half_saturated_relu6_is_not_scored_linear(method):
    # input N(6, 1): half of it above 6 (saturated), half in the linear range, none off
    res = compute_scores(method, _clip_model(6.0), calib=_calib())
    (score,) = res.scores.values()
    assert score > 0.9, res.details
    # nothing saturates: the two-state entropy, unchanged (input N(0, 1): half off)
    res = compute_scores(method, _clip_model(0.0), calib=_calib())
    assert list(res.scores.values())[0] > 0.9
    res = compute_scores(method, _clip_model(3.0), calib=_calib())   # N(3, 1): all linear, almost
    assert list(res.scores.values())[0] < 0.1


class _Net(nn.Module):
    def __init__(self, shift):
        super().__init__()
        self.shift = shift
        self.act = nn.ReLU6()
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return self.act(x + self.shift) * self.gate(x + self.shift / 2)


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_torch_hooks_half_saturated_is_not_scored_linear(method):
    torch.manual_seed(0)
    batches = [torch.randn(8, 4, 8, 8) for _ in range(2)]
    res = module_scores(_Net(6.0), method, calib_batches=batches)
    # ReLU6 input N(6, 1) and HardSigmoid input N(3, 1) (upper bound 3): half saturated each
    assert res.scores["act"] > 0.9 and res.scores["gate"] > 0.9, res.scores


def test_layer_summary_reduces_to_the_binary_entropy_without_saturation():
    p_off = np.array([0.0, 0.25, 0.5, 1.0])
    a, b = layer_summary(p_off), layer_summary(p_off, np.zeros(4))
    assert a["score"] == pytest.approx(b["score"]) and a["frac_linear"] == b["frac_linear"]
    # off half the time, saturated the other half, never linear: 1 bit, not 0
    assert layer_summary(np.array([0.5]), np.array([0.5]))["score"] == pytest.approx(1.0)
