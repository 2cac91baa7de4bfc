"""TVM's output check on an ill-conditioned collapsed model (adversarial round 18, H32).

MobileNetV3-small (random weights, calibrate_bn, 64x64, TorchScript export) with
features.2.block.0.2, features.2.block.1.2 and features.4.block.0.2 collapsed (outputs ~150; the core
refused the merge as ill-conditioned) and `--target cpu`: exit 1, nothing exported, "TVM output of the
collapsed model differs from onnxruntime ... in float64 terms TVM is off by max rel 0.00042,
onnxruntime's float32 by 5.2e-05". TVM was right: its float64 build of the same model is 1.6e-5 from
onnx's float64 evaluator (the HardSwish constant: TVM divides by 6, ONNX's function body multiplies by
float32(1/6)), and over six inputs TVM and onnxruntime took turns being 3-8x further than the other
(seed 3: onnxruntime 3.1e-4, TVM 4.6e-5). One input's 4x bound against onnxruntime alone is luck. A TVM
output outside it (but within FLOAT64_BUILD_FACTOR) is now judged by TVM's float64 build of the model.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")


def _cancelling(path=None):
    """y = x@W - x@(W + 1e-2 N): float32 rounding of the big products is ~1e-5 of the small result."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    w2 = (w + 1e-2 * rng.standard_normal((64, 8))).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["x", "W2"], ["b"]),
                           helper.make_node("Sub", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(model, str(path))
    return model, w.astype(np.float64) - w2.astype(np.float64)


def _perturbed_run(model, d, factor, f64_scale=1.0):
    """tc.run stand-in: a float32 call returns the float64 value plus `factor` x onnxruntime's own float32
    error (a correct program rounding worse on this input); a float64 call (TVM's float64 build) runs TVM."""
    from tvm_integration import compile as tc

    real = tc.run

    def run(ex, inputs, device=None):
        x = inputs["x"]
        if x.dtype == np.float64:
            return [o * f64_scale for o in real(ex, inputs, device)]
        exact = x.astype(np.float64) @ d
        ort = tc.run_ort(model, inputs)[0].astype(np.float64)
        return [(exact + factor * (ort - exact)).astype(np.float32)]
    return run


def test_float32_rounding_beyond_4x_passes_on_tvms_float64_build(monkeypatch):
    from tvm_integration import cli_hook as hook
    from tvm_integration import compile as tc
    from tvm_integration.targets import resolve_target

    model, d = _cancelling()
    x = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    ref = tc.run_ort(model, x)
    monkeypatch.setattr(tc, "run", _perturbed_run(model, d, 8.0))
    got = tc.run(None, x)
    assert not hook._compare(got, ref, 1e-4, 1e-5, model, x)["ok"]   # the premise: 8x fails the 4x look
    target, _ = resolve_target("cpu")
    c = hook._compare(got, ref, 1e-4, 1e-5, model, x, target)
    assert c["ok"], c
    look = c["float64_look"]
    assert look["tvm_float64_build_max_rel_vs_float64"] < look["onnxruntime_max_rel_vs_float64"]
    assert "TVM's float64 build by" in hook._f64_note(c)


@pytest.mark.parametrize("factor,f64_scale", [(100.0, 1.0),    # float32 output far beyond rounding
                                              (8.0, 1.01)])    # TVM's float64 build 1% off: a miscompile
def test_a_miscompile_is_not_excused_by_the_float64_build(monkeypatch, factor, f64_scale):
    from tvm_integration import cli_hook as hook
    from tvm_integration import compile as tc
    from tvm_integration.targets import resolve_target

    model, d = _cancelling()
    x = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    ref = tc.run_ort(model, x)
    monkeypatch.setattr(tc, "run", _perturbed_run(model, d, factor, f64_scale))
    c = hook._compare(tc.run(None, x), ref, 1e-4, 1e-5, model, x, resolve_target("cpu")[0])
    assert not c["ok"], c


def test_the_cli_check_passes_a_correct_compile_that_rounds_worse(tmp_path, monkeypatch, capsys):
    """Through the hook: the target reaches the check (exit 1 and nothing exported before)."""
    from tvm_integration import compile as tc
    from tvm_integration.__main__ import main

    path = tmp_path / "m.onnx"
    model, d = _cancelling(path)
    monkeypatch.setattr(tc, "run", _perturbed_run(model, d, 8.0))
    rc = main([str(path), "--target", "cpu", "--tvm-repeat", "1", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    notes = json.loads(cap.out)["notes"]
    assert any("passed as float32 rounding" in n and "TVM's float64 build by" in n for n in notes), notes
