"""The gate's random check inputs must be able to show a wrong result.

- Dynamic height/width ran as 1 x 1: a 3x3 kernel then reads only its centre tap, so a result with every
  kernel transposed (or its borders wrong) passed. They now run at core/runtime.check_shapes' size
  (2 * downsampling + 1, at least 9).
- An input model that outputs NaN on standard normal inputs (a Log of the input): matching NaNs compared as
  equal and a wrong fold passed while nothing was compared. Inputs uniform in (0, 1] are tried then, and a
  check whose reference is NaN/Inf everywhere fails (core/runtime.nothing_compared).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import collapse_passes as cp
from collapse_passes.core.runtime import check_shapes, downsampling, index_ranges, random_inputs
from collapse_passes.errors import VerificationError
from collapse_passes.onnx.passes import fold_affine
from tests.conftest import make_model, rnd, vinfo

C = 4


def _model(dims, log_shift=None):
    """[Log(x - shift) ->] Conv 3x3 pad 1 -> BatchNorm -> Relu -> Conv 3x3 stride 2 pad 1."""
    nodes, x = [], "x"
    inits = {"w1": rnd(C, 3, 3, 3), "b1": rnd(C, seed=1), "g": rnd(C, seed=2) + 2.0, "be": rnd(C, seed=3),
             "mu": rnd(C, seed=4), "var": np.abs(rnd(C, seed=5)) + 0.5, "w2": rnd(C, C, 3, 3, seed=6)}
    if log_shift is not None:
        inits["shift"] = np.asarray(log_shift, np.float32)
        nodes += [helper.make_node("Sub", ["x", "shift"], ["xs"], name="sub"),
                  helper.make_node("Log", ["xs"], ["xl"], name="log")]
        x = "xl"
    nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], name="bn"),
              helper.make_node("Relu", ["bn"], ["r"], name="relu"),
              helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2])]
    out = [dims[0], C, None, None] if isinstance(dims[2], str) else [dims[0], C, dims[2] // 2, dims[3] // 2]
    return make_model(nodes, [vinfo("x", dims)], [vinfo("y", out)], inits)


@pytest.fixture
def transposed_fold(monkeypatch):
    """BatchNorm folded into the conv before it with the kernel's spatial axes swapped: wrong everywhere but at
    the centre tap."""
    real = fold_affine._ConvKind.fold_after

    def wrong(p, *aff):
        q = real(p, *aff)
        q.weight = np.ascontiguousarray(np.swapaxes(q.weight, 2, 3))
        return q

    monkeypatch.setattr(fold_affine._ConvKind, "fold_after", staticmethod(wrong))


def test_check_shapes_size_dynamic_dims_from_the_model():
    m = _model(["N", 3, "H", "W"])
    assert downsampling(m) == 2
    assert check_shapes(m) == {"x": [1, 3, 9, 9]}   # batch 1, H and W max(9, 2 * 2 + 1)
    assert check_shapes(_model([1, 3, 8, 8])) == {}
    assert check_shapes(_model(["N", 3, 8, 8])) == {}   # a dynamic batch alone stays 1
    feeds = random_inputs(m, 2, 0, shapes=check_shapes(m), dist="unit")
    assert [f["x"].shape for f in feeds] == [(1, 3, 9, 9)] * 2
    assert all(0 < f["x"].min() and f["x"].max() <= 1 for f in feeds)


def _refused(r) -> bool:
    """The wrong fold failed the check: the fold fallback wrote the request's own ops (BatchNorm kept)."""
    return r.passed and "fold_fallback" in r.report and \
        any(n.op_type == "BatchNormalization" for n in r.model.graph.node)


def test_a_wrong_kernel_fails_the_check_of_a_dynamic_height_width_model(transposed_fold):
    """Was written: at 1 x 1 the transposed 3x3 kernel computed exactly what the right one does."""
    assert _refused(cp.collapse(_model(["N", 3, "H", "W"]), collapse=["relu"], merge=False))


def test_a_right_collapse_of_a_dynamic_height_width_model_passes_and_says_the_size():
    r = cp.collapse(_model(["N", 3, "H", "W"]), collapse=["relu"], merge=False)
    assert r.passed and "dynamic dims sized from the model (x 1x3x9x9" in r.report["verification"]["inputs"]
    assert r.report["folds"]


def test_a_wrong_fold_after_a_log_of_the_input_fails(transposed_fold):
    """Every output was NaN on standard normal inputs: the transposed kernel passed with max abs 0."""
    assert _refused(cp.collapse(_model([1, 3, 8, 8], log_shift=0.0), collapse=["relu"], merge=False))


def test_a_right_collapse_after_a_log_is_checked_on_unit_inputs():
    r = cp.collapse(_model([1, 3, 8, 8], log_shift=0.0), collapse=["relu"], merge=False)
    ver = r.report["verification"]
    assert r.passed and "uniform in (0, 1]" in ver["inputs"] and ver["against_requested"]["max_abs"] >= 0
    assert any("standard normal" in w and "where it outputs 0" in w for w in r.report["warnings"])


def test_a_check_that_compares_nothing_fails():
    """Log(x - 2) is NaN on both kinds of random inputs: nothing compared, nothing written."""
    with pytest.raises(VerificationError, match="nothing was compared"):
        cp.collapse(_model([1, 3, 8, 8], log_shift=2.0), collapse=["relu"], merge=False)
    r = cp.collapse(_model([1, 3, 8, 8], log_shift=2.0), collapse=["relu"], merge=False, force=True)
    assert not r.passed


def test_the_merge_of_a_dynamic_export_is_checked_on_its_sizes(tmp_path):
    """The same on a torch export with dynamic height and width (TorchScript dynamic_axes)."""
    torch = pytest.importorskip("torch")
    import warnings

    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    path = tmp_path / "d.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["out"],
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "out": {0: "N"}})
    r = cp.collapse(onnx.load(path), collapse=["2"])
    assert r.passed and "input 1x3x9x9" in r.report["verification"]["inputs"]


# ----------------------------------------------------------------------------------- token ids


def _embedding_model():
    """ids -> Gather(table of 50 rows) -> MatMul -> Add -> Relu -> MatMul."""
    from onnx import TensorProto

    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
             helper.make_node("MatMul", ["e", "w1"], ["h"], name="l1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="l1b"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="l2")]
    inits = {"table": rnd(50, 16), "w1": rnd(16, 32, seed=1), "b1": rnd(32, seed=2), "w2": rnd(32, 8, seed=3)}
    return make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 7])],
                      [vinfo("y", [1, 7, 8])], inits), inits["table"]


def test_token_ids_are_drawn_over_the_table():
    m, _ = _embedding_model()
    assert index_ranges(m) == {"ids": 50}
    feeds = random_inputs(m, 3, 0, ranges=index_ranges(m))
    assert len(np.unique(np.concatenate([f["ids"].ravel() for f in feeds]))) > 2


def test_a_merge_wrong_off_the_first_two_embedding_rows_fails(monkeypatch):
    """Token ids were drawn 0/1: the check saw two embedding rows, and a merged Linear wrong in every direction
    orthogonal to them (max rel ~10 on real ids) passed and was written."""
    from collapse_passes.algebra import linear as lin_alg
    from collapse_passes.core import chains

    m, table = _embedding_model()
    q, _ = np.linalg.qr(table[:2].T.astype(np.float64))
    off = np.eye(16) - q @ q.T   # projects off span(table[0], table[1])
    real = lin_alg.compose_linear_chain

    def wrong(layers):
        p = real(layers)
        if p.weight.shape[1] == 16:
            noise = np.random.default_rng(0).standard_normal(p.weight.shape)
            p = lin_alg.LinearParams((p.weight + noise @ off).astype(p.weight.dtype), p.bias)
        return p

    monkeypatch.setattr(chains.lin_alg, "compose_linear_chain", wrong)
    r = cp.collapse(m, collapse=["relu"])
    assert "ids in 0..49" in r.report["verification"]["inputs"]
    assert r.passed and "merge_fallback" in r.report and not r.report["merges"]


# ----------------------------------------------------------------------------------- --calib data


def test_a_wrong_fold_fails_the_check_on_a_blank_calibration_image(transposed_fold):
    """--calib replaced the random inputs: one blank image exercised no weight and the wrong fold was written.
    Random inputs in the data's range are checked too (core/runtime.random_in_range)."""
    blank = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    r = cp.collapse(_model([1, 3, 8, 8]), collapse=["relu"], merge=False, calib=blank)
    assert "calibration data (1 samples) + 3 random input(s)" in r.report["verification"]["inputs"]
    assert _refused(r)


def test_random_inputs_in_the_calibration_range():
    from collapse_passes.core.runtime import random_in_range

    m = _model(["N", 3, 8, 8])
    data = [{"x": np.random.default_rng(0).uniform(0.2, 0.7, (5, 3, 8, 8)).astype(np.float32)}]
    feeds = random_in_range(m, data, 2, 0)
    assert [f["x"].shape for f in feeds] == [(1, 3, 8, 8)] * 2   # a dynamic batch: one sample each
    assert all(0.2 <= f["x"].min() and f["x"].max() <= 0.7 for f in feeds)
    blank = random_in_range(_model([2, 3, 8, 8]), [{"x": np.zeros((2, 3, 8, 8), np.float32)}], 1, 0)
    assert blank[0]["x"].shape == (2, 3, 8, 8) and blank[0]["x"].std() > 0.5   # one value: standard normal


def test_a_dynamic_model_that_runs_only_at_1x1_is_still_checked_there_and_says_so():
    """A Reshape to a fixed size behind a dynamic height/width runs at 1 x 1 only: the check falls back to 1 (as
    before check_shapes) with a warning, instead of refusing a model it could check."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")]
    m = make_model(nodes, [vinfo("x", [1, 3, "H", "W"])], [vinfo("y", [1, 2])],
                   {"w1": rnd(C, 3, 3, 3), "shape": np.array([1, C], np.int64), "w2": rnd(C, 2, seed=1)})
    r = cp.collapse(m, collapse=["relu"])
    assert r.passed and "dynamic dims after the first run as 1" in r.report["verification"]["inputs"]
    assert any("does not run at the check's size" in w and "x 1x3x9x9" in w for w in r.report["warnings"])
