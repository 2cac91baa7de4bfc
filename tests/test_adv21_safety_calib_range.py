"""Calibration / eval data that the cast to the model input's type would change is refused in one line.

Found by the file-safety review (2026-11-29): NaN/Inf were checked before the cast to the input's type, so
float64 data beyond float32's range (1e300) passed, became Inf in the cast, and `--method tlc` computed
scores from it: exit 0, numpy RuntimeWarnings on stderr, a model collapsed on garbage statistics. Likewise
an integer input (token ids) took float data truncated (1.7 -> 1) and int64 data wrapped (2**40 -> 0 in int32).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest

from collapse_passes.calib import calibration_feeds
from collapse_passes.errors import CollapseError
from test_file_safety import C, cli, small_model


@pytest.mark.parametrize("value", [1e300, -1e39])
def test_float64_data_past_float32_range_is_refused(tmp_path, value):
    onnx.save(small_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.full((4, C, 6, 6), value, np.float64))
    rc, _, err = cli("m.onnx", "--calib", "c.npz", "--method", "tlc", "--threshold", "0", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "float32" in err and "Inf" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.onnx"]


def test_eval_and_library_calibration_make_the_same_check(tmp_path):
    model = small_model()
    x = np.full((4, C, 6, 6), 1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "overflow encountered in cast" on the way
        with pytest.raises(CollapseError, match="become Inf"):
            calibration_feeds({"x": x}, model)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "e.npz", x=x, labels=np.zeros(4, np.int64))
    rc, _, err = cli("m.onnx", "--eval", "e.npz", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and "become Inf" in err, err


def test_float64_data_within_range_still_runs(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((4, C, 6, 6)))   # float64
    rc, _, err = cli("m.onnx", "--calib", "c.npz", "--method", "tlc", "--threshold", "0", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err


def _int_model():
    from onnx import TensorProto, helper

    from conftest import vinfo

    g = helper.make_graph([helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT, name="c"),
                           helper.make_node("Relu", ["xf"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT32, [None, C])], [vinfo("y", [None, C])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("data, says", [
    (np.full((4, C), 1.7, np.float32), "fractional"),       # was truncated to 1
    (np.full((4, C), 2 ** 40, np.int64), "outside"),        # was wrapped into int32 (0)
    (np.full((4, C), 3e9, np.float64), "outside"),
])
def test_data_the_cast_to_an_integer_input_would_change_is_refused(data, says):
    with pytest.raises(CollapseError, match=says):
        calibration_feeds({"x": data}, _int_model())


def test_integral_floats_and_in_range_ints_still_feed_an_integer_input():
    for data in (np.full((4, C), 3.0, np.float32), np.full((4, C), -7, np.int64)):
        feeds = calibration_feeds({"x": data}, _int_model())
        assert feeds[0]["x"].dtype == np.int32 and (feeds[0]["x"] == data[:len(feeds[0]["x"])]).all()
