"""A model with ONNX optional values is refused in one line, not a traceback.

Found by the file-safety review (2026-11-29): a graph output or input of an optional type, or an
Optional / OptionalGetElement pair inside the graph, ended every run (also one with nothing to collapse) in
onnx-graphsurgeon's "TypeError: unhashable type: 'TypeProto'": exit 3 and a 40-line traceback.
"""
from __future__ import annotations

import os

import onnx
import pytest
from onnx import TensorProto, helper

from collapse_passes import collapse
from collapse_passes.errors import CollapseError
from conftest import vinfo
from test_file_safety import cli

OPT = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 4]))


def _model(nodes, inputs, outputs):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


MODELS = {
    "output": _model([helper.make_node("Relu", ["x"], ["y"], name="r"), helper.make_node("Optional", ["y"], ["oy"], name="op")],
                     [vinfo("x", [1, 4])], [helper.make_value_info("oy", OPT)]),
    "input": _model([helper.make_node("OptionalGetElement", ["ox"], ["x"], name="get"),
                     helper.make_node("Relu", ["x"], ["y"], name="r")], [helper.make_value_info("ox", OPT)], [vinfo("y", [1, 4])]),
    "inside": _model([helper.make_node("Relu", ["x"], ["y"], name="r"), helper.make_node("Optional", ["y"], ["oy"], name="op"),
                      helper.make_node("OptionalGetElement", ["oy"], ["z"], name="get")], [vinfo("x", [1, 4])], [vinfo("z", [1, 4])]),
}


@pytest.mark.parametrize("where", sorted(MODELS))
def test_optional_values_are_one_line(tmp_path, where):
    onnx.save(MODELS[where], tmp_path / "m.onnx")
    for extra in ([], ["--collapse", "r"]):
        rc, _, err = cli("m.onnx", "-o", "o.onnx", *extra, cwd=tmp_path)
        assert rc == 2 and err.count("\n") == 1 and "optional values" in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    with pytest.raises(CollapseError, match="optional values"):
        collapse(MODELS[where])


def test_list_keys_still_lists_them(tmp_path):
    onnx.save(MODELS["output"], tmp_path / "m.onnx")
    rc, out, err = cli("m.onnx", "--list-keys", cwd=tmp_path)
    assert rc == 0 and out.startswith("r\t"), (out, err)
