"""An ONNX model whose input is fixed at [0, 3] with --method easier --calib (arrays (8, 3)) failed in the scoring
with onnxruntime's "Expected: 0", later with a ZeroDivisionError on a batch size of 0 (a traceback), before the
gate's one line on inputs with no elements. The calibration reader now refuses such a model input first, in one
line naming it (calib._refuse_input_fixed_at_zero). Found by the small-gaps round (2026-11-29)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from collapse_passes.calib import iter_calibration
from collapse_passes.errors import CollapseError
from test_adv21_badinput_empty_inputs import _matmul_relu
from test_file_safety import cli


@pytest.mark.parametrize("args", [("--method", "easier"), ("--collapse", "act")])
def test_calibration_for_an_input_fixed_at_zero_is_refused_in_one_line(tmp_path, args):
    onnx.save(_matmul_relu([0, 3]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    rc, _, err = cli("m.onnx", *args, "--calib", "c.npz", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "model input 'x' has shape (0, 3), no elements" in err and "re-export with it dynamic" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


def test_every_calibration_form_is_refused_and_a_dynamic_input_is_read(tmp_path):
    x = np.ones((8, 3), np.float32)
    np.save(tmp_path / "batch0.npy", x)
    for data in (x, {"x": x}, str(tmp_path)):   # one array, a dict, a folder of batches
        with pytest.raises(CollapseError, match=r"'x' has shape \(N, 0\), no elements, .*dim 1 is fixed at 0"):
            next(iter_calibration(data, _matmul_relu(["N", 0])))
    assert [f["x"].shape for f in iter_calibration({"x": x}, _matmul_relu(["N", 3]), batch_size=4)] == [(4, 3)] * 2
