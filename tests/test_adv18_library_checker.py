"""A ModelProto handed to collapse() gets the checks a file gets on load (onnx.checker on its structure, weight
sizes): the same invalid model was refused on the command line and run by the library. A graph output declared
without a shape (make_tensor_value_info(name, type, None)) passes both once shape inference gives it one; an
input without a shape is refused by both."""
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _relu(in_shape=(1, 3), out_shape=None):
    n = h.make_node("Relu", ["x"], ["y"], name="relu")
    g = h.make_graph([n], "g", [h.make_tensor_value_info("x", TP.FLOAT, in_shape)],
                     [h.make_tensor_value_info("y", TP.FLOAT, out_shape)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _cli(tmp_path, m):
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    return subprocess.run([sys.executable, "-m", "collapse_passes", str(p), "-o", str(tmp_path / "o.onnx"), "-q"],
                          capture_output=True, text=True)


def test_shapeless_input_refused_by_library_and_cli(tmp_path):
    m = _relu(in_shape=None, out_shape=[1, 3])
    with pytest.raises(CollapseError, match="graph input 'x': no shape declared"):
        cp.collapse(m, collapse=[])
    r = _cli(tmp_path, m)
    assert r.returncode == 2 and "graph input 'x': no shape declared" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_shapeless_output_read_by_library_and_cli(tmp_path):
    m = _relu()
    res = cp.collapse(m, collapse=[])
    assert res.passed
    r = _cli(tmp_path, m)
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load(tmp_path / "o.onnx"))


def test_wrong_weight_size_in_a_proto_is_one_line():
    n = h.make_node("Add", ["x", "w"], ["y"], name="add")
    w = onnx.TensorProto(name="w", data_type=TP.FLOAT, dims=[3], float_data=[1.0, 2.0])   # two values, shape of three
    g = h.make_graph([n], "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 3])], [w])
    with pytest.raises(CollapseError, match="initializer 'w' holds 2 values"):
        cp.collapse(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), collapse=[])
