"""A check whose inputs hold elements but whose every output holds none (a model that slices to 0 elements) compared
nothing and passed ("max abs 0"): core/runtime.nothing_compared counted only the finite values of non-empty outputs.
It now fails the gate, saying why, as a check on an empty input is refused (core/runtime.empty_check_input);
torch_backend runs nothing_compared too (it skipped it: NaN everywhere also "verified"). Found by the small-gaps
round (2026-11-29)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper

import collapse_passes as cp
from collapse_passes.core.runtime import nothing_compared
from conftest import make_model, rnd, vinfo
from test_file_safety import cli


def _sliced_to_nothing(width):
    """MatMul, Relu, MatMul, then y[:, 0:width]: no element when width is 0."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y0"], name="mm2"),
             helper.make_node("Slice", ["y0", "st", "en", "ax"], ["y"], name="sl")]
    return make_model(nodes, [vinfo("x", ["N", 3])], [vinfo("y", ["N", width])],
                      {"w1": rnd(3, 4, seed=1), "w2": rnd(4, 2, seed=2), "st": np.array([0], np.int64),
                       "en": np.array([width], np.int64), "ax": np.array([1], np.int64)})


def test_onnx_outputs_with_no_elements_fail_the_check(tmp_path):
    onnx.save(_sliced_to_nothing(0), tmp_path / "m.onnx")
    rc, out, err = cli("m.onnx", "--collapse", "act", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 1 and "every output of the requested semantics has no elements" in err, err
    assert "nothing was compared" in err and "nothing written" in err, err
    assert "do not depend on its input" not in out + err, out   # was said beside it, with "max |output| nan"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_onnx_outputs_with_elements_still_pass(tmp_path):
    onnx.save(_sliced_to_nothing(1), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--collapse", "act", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "o.onnx"]


class _Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.r(self.a(x)))[:, :0]


def test_torch_collapse_and_backend_fail_on_outputs_with_no_elements():
    torch.manual_seed(0)
    m = _Sliced().eval()
    with pytest.raises(cp.VerificationError, match="every output of the requested semantics has no elements"):
        cp.collapse(m, collapse=["r"], example_inputs=(torch.randn(2, 3),))
    torch._dynamo.reset()
    backend = cp.torch_backend(collapse=["r"], inductor=False)
    with pytest.raises(Exception, match="torch_backend: verification failed: every output .* has no elements"):
        torch.compile(m, backend=backend)(torch.randn(2, 3))


def test_partly_empty_and_integer_outputs_are_compared_as_before():
    full, empty = np.ones((2, 2), np.float32), np.zeros((2, 0), np.float32)
    assert nothing_compared([[full, empty]], 1, "x") is None   # one output holds elements: it is compared
    assert nothing_compared([[np.arange(3)]], 1, "x") is None   # an integer output: compared by compare()
    c = nothing_compared([[empty], [empty]], 2, "2 inputs")
    assert c is not None and not c.passed and "no elements on 2 inputs" in c.why


def test_backend_fails_a_reference_that_is_nan_everywhere_as_collapse_does():
    """The backend skipped nothing_compared: a NaN call input compiled as verified (max abs 0 over NaN == NaN)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    nan = torch.full((2, 3), float("nan"))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch_backend: verification failed: .*NaN/Inf in all 4 values"):
        torch.compile(net, backend=cp.torch_backend(collapse=["1"], inductor=False))(nan)
    torch._dynamo.reset()
    forced = cp.torch_backend(collapse=["1"], inductor=False, force=True)
    assert torch.isnan(torch.compile(net, backend=forced)(nan)).all()
    assert forced.reports[0]["verification"]["passed"] is False
