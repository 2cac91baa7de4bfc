"""Model files and graphs the loader must refuse in one true line (exit 2, nothing written).

Found by the file-safety review (2026-11-29): a graph that declares no outputs reached onnxruntime in the
gate and ended in exit 3 with a traceback ("OrtValue indexes should have been populated"); the library and
`python -m tvm_integration` called a FIFO or a device "empty file", and a symbolic link loop "no such file".
"""
from __future__ import annotations

import os

import onnx
import pytest
from onnx import helper

from collapse_passes import collapse
from collapse_passes.errors import CollapseError
from collapse_passes.onnx.graph import load_model
from conftest import vinfo
from test_file_safety import cli


def _no_outputs():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [vinfo("x", [1, 4])], [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_graph_without_outputs_is_one_line_not_a_bug(tmp_path):
    onnx.save(_no_outputs(), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2, err
    assert err.count("\n") == 1 and "declares no outputs" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_a_model_proto_without_outputs_is_a_collapse_error():
    with pytest.raises(CollapseError, match="declares no outputs"):
        collapse(_no_outputs())


def test_a_fifo_or_device_is_named_as_such_by_the_loader(tmp_path):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    with pytest.raises(CollapseError, match="FIFO"):
        load_model(fifo)
    with pytest.raises(CollapseError, match="is a device"):
        load_model("/dev/null")


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    (tmp_path / "loop.onnx").symlink_to("loop.onnx")
    with pytest.raises(CollapseError, match="symbolic links"):
        load_model(tmp_path / "loop.onnx")
