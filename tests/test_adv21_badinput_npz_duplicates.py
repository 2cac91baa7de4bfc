"""A calibration / --eval .npz holding two members of one name is refused in one line, naming the member.

Found by the bad-input attack (2026-11-29): a zip may hold `x.npy` twice (written with zipfile, or appended to),
and numpy silently read one of them: the run calibrated on data the user may not have meant, exit 0.
"""
from __future__ import annotations

import io
import os
import warnings
import zipfile

import numpy as np
import onnx
import pytest

from collapse_passes.calib import calibration_feeds
from collapse_passes.errors import CollapseError
from test_file_safety import C, cli, small_model


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _twice(path, name, first, second, **others):
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore")   # zipfile's own "Duplicate name" warning
        for k, v in others.items():
            z.writestr(f"{k}.npy", _npy(v))
        z.writestr(f"{name}.npy", _npy(first))
        z.writestr(f"{name}.npy", _npy(second))


def _x(seed):
    return np.random.default_rng(seed).standard_normal((4, C, 6, 6)).astype(np.float32)


def test_calibration_archive_with_a_member_twice_is_refused(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    _twice(tmp_path / "c.npz", "x", _x(0), _x(1))
    rc, _, err = cli("m.onnx", "--calib", "c.npz", "--method", "easier", "--threshold", "0", "-o", "o.onnx",
                     cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "'x.npy' twice" in err and "numpy.savez" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


def test_eval_archive_with_labels_twice_is_refused(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    _twice(tmp_path / "e.npz", "labels", np.zeros(4, np.int64), np.ones(4, np.int64), x=_x(0))
    rc, _, err = cli("m.onnx", "--eval", "e.npz", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "'labels.npy' twice" in err, err
    assert sorted(os.listdir(tmp_path)) == ["e.npz", "m.onnx"]


def test_library_calibration_path_refuses_it_too(tmp_path):
    _twice(tmp_path / "c.npz", "x", _x(0), _x(1))
    with pytest.raises(CollapseError, match="two arrays named 'x'"):
        calibration_feeds(str(tmp_path / "c.npz"), small_model())


def test_a_well_formed_archive_still_reads(tmp_path):
    np.savez(tmp_path / "c.npz", x=_x(0))
    feeds = calibration_feeds(str(tmp_path / "c.npz"), small_model())
    assert len(feeds) == 4 and feeds[0]["x"].shape == (1, C, 6, 6)
