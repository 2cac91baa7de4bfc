"""Training runs' file writers: ^C (or any failure) while writing leaves the target as it was and no temp.

models.export.export_onnx (the builder of `make run`'s example, the benchmarks' exports) let torch write
straight to the target path, so an export interrupted while writing left a truncated model there, over
the good one; models/train_digits_collapse.py wrote digits_eval.npz in place; benchmarks/train_accuracy.py
left `<path>.tmp` behind (a fixed name two runs shared).
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]


def _interrupting(real):
    """A writer that writes part of its output to the path it was given, then gets ^C."""
    def write(*args, **kw):
        target = next(a for a in list(args) + list(kw.values()) if isinstance(a, (str, os.PathLike)) or hasattr(a, "write"))
        if hasattr(target, "write"):
            target.write(b"PK\x03\x04 partial")
        else:
            Path(target).write_bytes(b"\x08\x07 partial")
        raise KeyboardInterrupt
    return write


def test_interrupted_export_leaves_the_old_model_and_no_temp(tmp_path, monkeypatch):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    path = tmp_path / "m.onnx"
    export_onnx(m, path, (1, 3, 8, 8))
    good = path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()   # a plain new file's mode
    monkeypatch.setattr(torch.onnx, "export", _interrupting(torch.onnx.export))
    with pytest.raises(KeyboardInterrupt):
        export_onnx(m, path, (1, 3, 8, 8))
    assert path.read_bytes() == good
    with pytest.raises(KeyboardInterrupt):
        export_onnx(m, tmp_path / "new.onnx", (1, 3, 8, 8))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_interrupted_eval_npz_leaves_the_old_file(tmp_path, monkeypatch):
    mod = _load("models/train_digits_collapse.py", "_tdc")
    path = tmp_path / "digits_eval.npz"
    mod._save_npz(str(path), input=np.zeros((2, 1), np.float32), labels=np.zeros(2, np.int64))
    good = path.read_bytes()
    assert np.load(path)["labels"].shape == (2,)
    monkeypatch.setattr(np, "savez_compressed", _interrupting(np.savez_compressed))
    with pytest.raises(KeyboardInterrupt):
        mod._save_npz(str(path), input=np.ones((3, 1), np.float32), labels=np.ones(3, np.int64))
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["digits_eval.npz"]


def test_benchmark_writes_leave_no_tmp(tmp_path):
    mod = _load("benchmarks/train_accuracy.py", "_ta")
    path = str(tmp_path / "r.json")
    mod._write_atomic(path, lambda fh: fh.write(b"{}"))

    def interrupted(fh):
        fh.write(b"{\"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mod._write_atomic(path, interrupted)
    assert Path(path).read_bytes() == b"{}" and sorted(os.listdir(tmp_path)) == ["r.json"]
