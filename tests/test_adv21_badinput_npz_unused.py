"""Calibration / --eval arrays that name no model input are refused in one line, naming them and the inputs.

Found by the bad-input attack (2026-11-29): extra arrays were ignored, so a misspelt name (or an array meant for
an initializer-backed input, which the tool never feeds) went unnoticed as long as every input had its array.
Refused as onnxruntime refuses a feed of an unknown name and torch's load_state_dict unexpected keys; `labels`
(the --eval format's array) is allowed in --calib, so one labelled file serves both flags.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from collapse_passes.calib import calibration_feeds
from collapse_passes.errors import CollapseError
from test_file_safety import C, cli, small_model


def _x(n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, C, 6, 6)).astype(np.float32)


def test_calib_npz_with_an_unused_array_is_refused(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=_x(), X_mask=_x(seed=1))
    rc, _, err = cli("m.onnx", "--calib", "c.npz", "--method", "easier", "--threshold", "0", "-o", "o.onnx",
                     cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "'X_mask'" in err and "['x']" in err and "rename" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


def test_eval_npz_with_an_unused_array_is_refused(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "e.npz", x=_x(), labels=np.zeros(4, np.int64), extra=_x(seed=2))
    rc, _, err = cli("m.onnx", "--eval", "e.npz", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "'extra'" in err, err
    assert sorted(os.listdir(tmp_path)) == ["e.npz", "m.onnx"]


def test_folder_with_an_unused_npy_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "x.npy", _x())
    np.save(tmp_path / "d" / "x_old.npy", _x(seed=3))
    with pytest.raises(CollapseError, match="'x_old.npy' name no model input"):
        calibration_feeds(str(tmp_path / "d"), small_model())


def test_library_dict_with_an_unused_key_is_refused():
    with pytest.raises(CollapseError, match="'y' name no model input"):
        calibration_feeds({"x": _x(), "y": _x()}, small_model())


def test_labels_beside_the_inputs_stays_accepted_for_calibration(tmp_path):
    np.savez(tmp_path / "c.npz", x=_x(), labels=np.zeros(4, np.int64))   # an --eval file given to --calib
    assert len(calibration_feeds(str(tmp_path / "c.npz"), small_model())) == 4
