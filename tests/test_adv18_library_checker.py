"""A ModelProto handed to collapse() gets the checks a file gets on load (onnx.checker on its structure, weight
sizes): the same invalid model was refused on the command line and run by the library."""
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _shapeless_output():
    n = h.make_node("Relu", ["x"], ["y"], name="relu")
    g = h.make_graph([n], "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_library_refuses_what_the_cli_refuses(tmp_path):
    m = _shapeless_output()
    with pytest.raises(CollapseError, match="no shape declared"):
        cp.collapse(m, collapse=[])
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(p), "-o", str(tmp_path / "o.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no shape declared" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_wrong_weight_size_in_a_proto_is_one_line():
    n = h.make_node("Add", ["x", "w"], ["y"], name="add")
    w = onnx.TensorProto(name="w", data_type=TP.FLOAT, dims=[3], float_data=[1.0, 2.0])   # two values, shape of three
    g = h.make_graph([n], "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 3])], [w])
    with pytest.raises(CollapseError, match="initializer 'w' holds 2 values"):
        cp.collapse(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), collapse=[])
