"""A model stored with external data is written back with external data: `<output>.data` beside the
output, landing before the model file that refers to it, with the same file-safety rules."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from collapse_passes.cli import main
from collapse_passes.core.runtime import outputs, random_inputs


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def external_model(exported, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    model = onnx.load(exported("resnet18", False))
    path = src / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.data",
              size_threshold=0)
    return path, src / "w.data"


def test_external_data_in_external_data_out(external_model, tmp_path):
    path, weights = external_model
    before = {p.name: _digest(p) for p in (path, weights)}
    out = tmp_path / "out" / "c.onnx"
    out.parent.mkdir()
    rc = main([str(path), "-o", str(out), "-q", "--collapse", "layer1.0.relu1"])
    assert rc == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.onnx", "c.onnx.data"]   # no temp left
    assert out.stat().st_size < 64 * 1024 < (out.parent / "c.onnx.data").stat().st_size   # weights apart
    written = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    import collapse_passes as cp

    expected = cp.collapse(str(path), collapse=["layer1.0.relu1"], check=1).model
    feed = random_inputs(written, 1)[0]
    for a, b in zip(outputs(str(out), feed), outputs(expected, feed)):
        np.testing.assert_array_equal(a, b)
    assert len(written.graph.initializer) == len(expected.graph.initializer)
    assert {p.name: _digest(p) for p in (path, weights)} == before   # the input and its data untouched


def test_data_file_that_would_overwrite_an_input_is_refused(external_model, tmp_path, capsys):
    path, weights = external_model
    # -o X makes X.data: here X.data is the input's weights file
    rc = main([str(path), "-o", str(weights.with_suffix("")), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "inputs are never overwritten" in err and err.count("\n") == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "w.data"]


def test_embedded_input_is_written_embedded(exported, tmp_path):
    out = tmp_path / "c.onnx"
    assert main([exported("resnet18", False), "-o", str(out), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["c.onnx"]


def test_pieces_with_external_data_read_back_as_the_model(exported, tmp_path):
    from collapse_passes.onnx.graph import data_file_for, save_model_atomic

    model = onnx.load(exported("mobilenet_v2", True))
    out = save_model_atomic(model, tmp_path / "m.onnx", external=True)
    back = onnx.load(str(out))
    assert data_file_for(out).exists()
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert a.name == b.name
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    assert back.graph.node == model.graph.node


def test_a_proto_whose_external_weights_are_not_loaded_is_one_line(tmp_path):
    import onnx
    import pytest
    import torch

    import collapse_passes as cp
    from collapse_passes.errors import CollapseError
    from conftest import export_quiet

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    path = export_quiet(m, tmp_path / "m.onnx", (1, 64), dynamo=False)
    onnx.save(onnx.load(path), str(tmp_path / "e.onnx"), save_as_external_data=True, location="e.data",
              size_threshold=0)
    proto = onnx.load(str(tmp_path / "e.onnx"), load_external_data=False)
    with pytest.raises(CollapseError, match="weights are not loaded.*pass the model's path"):
        cp.collapse(proto)
    assert cp.collapse(str(tmp_path / "e.onnx")).passed
