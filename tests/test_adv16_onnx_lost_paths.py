"""A file whose exporter names and metadata are gone (onnxslim drops the torch.export exporter's node metadata;
onnxruntime's optimizer renames fused nodes): scores saved by module path on the exported file were refused as
"unknown layer key 'features.0.2'" with no reason. The line now says the file carries no module paths and what
to use instead."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _model(relu_name):
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="n0"), helper.make_node("Relu", ["c"], ["r"], name=relu_name),
             helper.make_node("Conv", ["r", "w"], ["y"], name="n2")]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 3, 3])   # noqa: E731
    m = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("y")], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_module_path_key_on_a_file_without_paths_says_why():
    with pytest.raises(CollapseError, match="no torch module path.*--list-keys"):
        cp.collapse(_model("n1"), scores={"features.0.2": 0.0}, threshold=0.1)


def test_files_with_paths_keep_near_matches():
    with pytest.raises(CollapseError, match="did you mean 'features.0.2'"):
        cp.collapse(_model("/features/features.0/features.0.2/Relu"), collapse=["features.0.3"])
