"""A full disk while a library writer runs (result.save(), plot/summary writers through
onnx/graph.write_bytes_atomic) reached the caller as a raw OSError; with external data a failed model
write left a data file no model refers to. Now: one CollapseError naming the path and the cause, and
the folder holds exactly what it held before."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import collapse_passes as cp
from collapse_passes import outputs
from collapse_passes.onnx import graph as ograph
from test_adv13_misc_duplicate_names import _dup_model


def _full_disk_after(monkeypatch, ok_writes: int):
    calls = {"n": 0}
    real = outputs.write_chunks

    def write_chunks(fh, data):
        calls["n"] += 1
        if calls["n"] > ok_writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fh, data)

    monkeypatch.setattr(outputs, "write_chunks", write_chunks)


def test_save_on_a_full_disk_is_one_collapse_error(tmp_path, monkeypatch):
    res = cp.collapse(_dup_model(), collapse=["relu"])
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(cp.CollapseError, match="No space left on device"):
        res.save(tmp_path / "o.onnx")
    assert os.listdir(tmp_path) == []


def test_external_data_is_not_left_when_the_model_write_fails(tmp_path, monkeypatch):
    res = cp.collapse(_dup_model(), collapse=["relu"])
    _full_disk_after(monkeypatch, 1)   # the data file is written, the model file is not
    with pytest.raises(cp.CollapseError, match="o.onnx: cannot write"):
        ograph.save_model_atomic(res.model, tmp_path / "o.onnx", external=True)
    assert os.listdir(tmp_path) == []


def test_text_writer_keeps_an_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(cp.CollapseError, match="the summary .*summary.json: cannot write"):
        ograph.write_text_atomic("new", target, "the summary")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
