"""outputs.atomic_path / atomic_file: the writer of models/export.export_onnx, models/digits and the scripts.

Seen: it renamed its temp file onto the path without the checks the library's other writers make
(outputs.checked_output_file): a FIFO became a regular file, a symlink was replaced by a file (its target
kept the old bytes), and `export_onnx(model, "/dev/null", ...)` run as root replaced the device node.
"""
from __future__ import annotations

import os

import pytest

from collapse_passes import outputs
from collapse_passes.errors import CollapseError


def test_atomic_file_refuses_a_fifo_and_a_folder(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name, needle in (("fifo", "FIFO"), ("dir", "directory")):
        with pytest.raises(CollapseError, match=needle):
            with outputs.atomic_file(tmp_path / name) as fh:
                fh.write(b"new")
    assert (tmp_path / "fifo").is_fifo() and (tmp_path / "dir").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["dir", "fifo"]


def test_atomic_file_writes_through_a_symlink(tmp_path):
    (tmp_path / "real.onnx").write_bytes(b"old")
    os.symlink("real.onnx", tmp_path / "link.onnx")
    with outputs.atomic_file(tmp_path / "link.onnx") as fh:
        fh.write(b"new")
    assert os.path.islink(tmp_path / "link.onnx") and (tmp_path / "real.onnx").read_bytes() == b"new"


def test_export_onnx_never_replaces_a_fifo(tmp_path):
    torch = pytest.importorskip("torch")
    from models.export import export_onnx

    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(CollapseError, match="FIFO"):
        export_onnx(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), tmp_path / "m.onnx", (1, 4))
    assert (tmp_path / "m.onnx").is_fifo() and os.listdir(tmp_path) == ["m.onnx"]
