"""--eval given a .npy or a folder: one line that says what the file is and how to save an .npz.

A .npy (one array, no labels) was "not a readable .npz file ('numpy.ndarray' object has no attribute
'files')"; a folder was "evaluation data not found"."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from collapse_passes.errors import CollapseError
from collapse_passes.evaluation import load_eval_data


def _model() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"], name="act")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_npy_names_the_missing_labels(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((4, 4), np.float32))
    with pytest.raises(CollapseError, match=r"\.npy file holds one array and no 'labels'.*numpy\.savez") as e:
        load_eval_data(str(p), _model())
    assert "attribute" not in str(e.value)


def test_folder_is_named_a_folder(tmp_path):
    with pytest.raises(CollapseError, match="a folder"):
        load_eval_data(str(tmp_path), _model())


def test_cli_npy_is_one_line_exit_2(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(_model(), m)
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((4, 4), np.float32))
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(m), "-o", str(out), "--eval", str(p),
                        "--collapse", "act"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "labels" in lines[0] and "attribute" not in lines[0]
