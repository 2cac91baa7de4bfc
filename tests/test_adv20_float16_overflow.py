"""A float16 model whose collapse overflows: the refusal names float16 (it said float32 for every model), and the
merged constants that overflow float16 when cast back print no numpy RuntimeWarning on stderr (the gate says it)."""
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(path):
    """x -> Mul 1e3 -> Clip(0, 6) -> Mul 1e3: at most 6e3 as given; with the Clip collapsed x * 1e6 (fp16 max 65504)."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float16), name)   # noqa: E731
    nodes = [helper.make_node("Mul", ["x", "a"], ["h"], name="scale_in"),
             helper.make_node("Clip", ["h", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("Mul", ["r", "b"], ["y"], name="scale_out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
                          [c("a", 1e3), c("b", 1e3), c("lo", 0.0), c("hi", 6.0)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, path)


def _conv_model(path):
    """Conv 1x1 (300 I) -> Clip(0, 6) -> Conv 1x1 (300 I): the merged weight 9e4 overflows float16 when cast back."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float16), name)   # noqa: E731
    w = (300 * np.eye(4)).reshape(4, 4, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Clip", ["h", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 3, 3])],
                          [c("w1", w), c("w2", w), c("lo", 0.0), c("hi", 6.0)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, path)


def test_merged_constant_overflowing_float16_prints_no_numpy_warning(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    _conv_model(str(src))
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "--collapse", "relu6", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    assert "RuntimeWarning" not in r.stderr, r.stderr


def test_float16_overflow_is_named_float16_and_prints_no_numpy_warning(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    _model(str(src))
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(src), "--collapse", "relu6", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not out.exists()
    assert "overflow float16" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr, r.stderr
