"""Adversarial round 17 on the TVM hand-off: `-q -v` with tuning.

`-q` promises "only errors and the output path" on stdout, and `-v` sends MetaSchedule's per-task tables to stdout:
`collapse_passes M.onnx -q -v --target cpu --tune-trials 2` printed 78 lines of tuning logs before the path a
script reads with `$(...)`. The two flags are now refused together (exit 2, nothing written), like the other
contradicting pairs (-o with --dry-run).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quiet_and_verbose_are_refused_together(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "W")
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"],
                                                                                         name="act")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    p = subprocess.run([sys.executable, "-m", "collapse_passes", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                        "--collapse", "act", "-q", "-v"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert "-q and -v" in p.stderr and "drop one" in p.stderr and not (tmp_path / "o.onnx").exists()
