"""The model's data file `<out>.data` (named by no flag) that exists as a symbolic link.

Seen: `o.onnx.data -> other/x.bin` (dangling) with a model read with external data: the run wrote the
weights to other/x.bin, recorded the location `x.bin` in o.onnx, said "wrote x.bin" and exited 0; o.onnx
could not be loaded (onnxruntime: "External data path does not exist"). Recording the link's own name
would not help: onnx refuses external data read through a symlink. Refused before any work instead.
"""
from __future__ import annotations

import os

import pytest

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from test_adv8_files import one_line, save_external, wide_model
from test_file_safety import cli, snapshot


@pytest.mark.parametrize("target", ["other/x.bin", "y.bin"])   # into another folder, or beside it; both missing
def test_a_data_file_that_is_a_symlink_is_refused_before_any_work(tmp_path, target):
    save_external(wide_model(), tmp_path / "m.onnx", "m.onnx.data")
    (tmp_path / "other").mkdir()
    os.symlink(target, tmp_path / "o.onnx.data")
    before = snapshot(tmp_path)
    rc, _, err = cli("m.onnx", "-o", "o.onnx", "--collapse", "/block/relu/Relu", cwd=tmp_path)
    one_line(rc, err, "o.onnx.data is a symbolic link", "choose another path for -o")
    assert snapshot(tmp_path) == before


def test_save_refuses_a_data_file_that_is_a_symlink(tmp_path, monkeypatch):
    """CollapseResult.save() of a result that needs a data file makes the same check."""
    from collapse_passes.onnx import graph

    save_external(wide_model(), tmp_path / "m.onnx", "m.onnx.data")
    res = cp.collapse(str(tmp_path / "m.onnx"), collapse="/block/relu/Relu")
    os.symlink("other/x.bin", tmp_path / "o.onnx.data")
    monkeypatch.setattr(graph, "EMBED_LIMIT", 0)   # as if the result were over 2 GiB
    before = snapshot(tmp_path)
    with pytest.raises(CollapseError, match="symbolic link"):
        res.save(tmp_path / "o.onnx")
    assert snapshot(tmp_path) == before


def test_a_data_file_that_is_a_fifo_names_a_way_out(tmp_path):
    """It said "(drop -o's data file to write none)": no flag names the data file."""
    save_external(wide_model(), tmp_path / "m.onnx", "m.onnx.data")
    os.mkfifo(tmp_path / "o.onnx.data")
    rc, _, err = cli("m.onnx", "-o", "o.onnx", "--collapse", "/block/relu/Relu", cwd=tmp_path)
    one_line(rc, err, "o.onnx.data is a FIFO", "choose another path for -o")
    assert "drop" not in err
