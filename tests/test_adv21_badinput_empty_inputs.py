"""Check inputs with a 0-sized dim are refused in one line naming the input: a check on them compares nothing.

Found by the bad-input attack (2026-11-29): a torch model given example_inputs of shape (0, 3) collapsed a ReLU
and "verified" it (max abs 0 on 3 samples of zero elements), and an ONNX model whose input is fixed at [0, C]
failed with onnxruntime's "Expected: 0" for random inputs the tool had drawn at batch 1, blaming the user's data.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper

from collapse_passes import collapse
from collapse_passes.core.runtime import empty_check_input
from collapse_passes.errors import CollapseError
from conftest import make_model, rnd, vinfo
from test_file_safety import cli


def _matmul_relu(shape):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [vinfo("x", shape)], [vinfo("y", shape[:-1] + [2])],
                      {"w1": rnd(3, 4, seed=1), "w2": rnd(4, 2, seed=2)})


def test_onnx_input_fixed_at_zero_is_refused_by_name(tmp_path):
    onnx.save(_matmul_relu([0, 3]), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--collapse", "act", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "'x' has shape (0, 3), no elements" in err and "--input-shape" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_calibration_array_with_an_empty_axis_is_refused(tmp_path):
    onnx.save(_matmul_relu(["N", "L", 3]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 0, 3), np.float32))
    rc, _, err = cli("m.onnx", "--calib", "c.npz", "--collapse", "act", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "(4, 0, 3)" in err and "axis 1 is 0" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


def test_torch_example_inputs_with_no_elements_are_refused():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(CollapseError, match=r"example_inputs\[0\] has shape \(0, 3\), no elements"):
        collapse(net, collapse=["1"], example_inputs=(torch.randn(0, 3),))


def test_the_finder_names_nested_and_named_inputs_and_passes_full_ones():
    assert empty_check_input([{"a": np.zeros((1, 2)), "b": np.zeros((2, 0))}]) == ("b", (2, 0))
    assert empty_check_input([(torch.zeros(1), [torch.zeros(2, 0)])]) == ("example_inputs[1][0]", (2, 0))
    assert empty_check_input([{"a": np.zeros((1, 2))}, (torch.zeros(3), np.float32(1.0))]) is None
