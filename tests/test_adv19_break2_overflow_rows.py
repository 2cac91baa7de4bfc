"""The overflow refusal numbered the check's feeds, while its description counts samples: a --calib .npz of
16 samples on a dynamic-batch model is ONE feed, so "on check input(s) 1 of 5 (calibration data (16
samples) + 4 random input(s) ...)" read as the first sample when the sixth overflowed. A feed of several
samples now also names its overflowing samples, on both front ends (core/runtime.nonfinite_request,
feeds=; H45, 2026-11-29)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.errors import VerificationError


def _data():
    x = np.tile(np.array([1, -1], np.float32), 32)[None].repeat(16, 0)   # each sample sums to 0: exp(0)
    x[5] = -1.0   # the sixth: exp(640) once the ReLU is the identity
    return x


def _onnx(path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                           helper.make_node("ReduceSum", ["r", "ax"], ["s"], keepdims=1),
                           helper.make_node("Mul", ["s", "k"], ["m"]),
                           helper.make_node("Exp", ["m"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(np.array([1], np.int64), "ax"),
                           numpy_helper.from_array(np.array([-10.0], np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_onnx_batched_calib_names_the_sample(tmp_path):
    np.savez(tmp_path / "c.npz", x=_data())
    with pytest.raises(VerificationError) as e:
        cp.collapse(str(_onnx(tmp_path / "m.onnx")), collapse=["relu"], calib=str(tmp_path / "c.npz"), check=4)
    msg = str(e.value)
    assert "on check input(s) 1 (sample(s) 6 of its 16) of 5 (calibration data (16 samples)" in msg, msg


class _M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return torch.exp(-10 * self.relu(x).sum(1, keepdim=True))


def test_torch_batched_example_inputs_name_the_sample():
    with pytest.raises(VerificationError) as e:
        cp.collapse(_M().eval(), example_inputs=(torch.tensor(_data()),), collapse=["relu"], check=1)
    msg = str(e.value)
    assert "check input(s) 1 (sample(s) 6 of its 16)" in msg and "(example_inputs +" in msg, msg


def test_single_sample_feeds_are_numbered_as_before():
    from collapse_passes.core.runtime import nonfinite_request

    ok, inf = [np.ones((1, 1), np.float32)], [np.full((1, 1), np.inf, np.float32)]
    c = nonfinite_request([ok, ok, ok], [ok, inf, ok], ["y"], 3, "d", feeds=[{"x": np.zeros((1, 4))}] * 3)
    assert "on check input(s) 2 of 3 (d, in that order)" in c.why, c.why
