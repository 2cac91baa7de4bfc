"""--channel-regimes with --prune-calib-dead (2026-11-29, H58, the ONNX CLI as an outside judge).

The channels a kept ReLU leaves at 0 on the calibration data were found on the request with the chosen activations
linearized on every channel, not on the per-channel request --channel-regimes asks for. A dead channel of a collapsed
ReLU is 0 in that request, not its (negative) input; a kept ReLU it feeds, off under plain linearization, is on there,
and was removed: the result was 1.0 off the input model on the very calibration data the removal is promised exact
on, and the gate, whose reference masks the same channels, passed it.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _model() -> onnx.ModelProto:
    """x[N,4] -> fc1 -> A=Relu -> fc2 (+b) -> B=Relu -> fc3. On inputs in [0.5, 1.5]: A's channel 0 is always off
    (dead), 1 and 2 always on; B's channel 0 = relu(10 * A_0 + 1) is 1 in the model, off if A_0 passed its input."""
    w1 = np.array([[-1, 1, 1], [-1, 1, -1], [-1, 1, 1], [-1, 1, 1]], np.float32)
    w2 = np.array([[10, 0], [0, 1], [0, 1]], np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([1, 0.5], np.float32), "b2"),
             numpy_helper.from_array(np.ones((2, 1), np.float32), "w3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["a"], name="A"),
             helper.make_node("MatMul", ["a", "w2"], ["g"], name="fc2"),
             helper.make_node("Add", ["g", "b2"], ["gb"], name="fc2_bias"),
             helper.make_node("Relu", ["gb"], ["b"], name="B"), helper.make_node("MatMul", ["b", "w3"], ["y"], name="fc3")]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _calib(tmp_path) -> np.ndarray:
    x = np.random.default_rng(0).uniform(0.5, 1.5, (32, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return x


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_off_channels_are_found_on_the_per_channel_request(tmp_path):
    model, x = _model(), _calib(tmp_path)
    res = cp.collapse(model, method="easier", collapse=["A"], channel_regimes=True, prune_calib_dead=True,
                      calib=str(tmp_path / "calib.npz"))
    site = res.report["channel_regimes"]["sites"][0]
    assert site["regime"] == "per-channel" and site["to_zero"] == 1   # A's dead channel went to 0
    # B's channel 0 is 1 under the per-channel request: not "always 0 on the calibration data"
    data_dep = [g for g in res.report["pruning"].get("groups", []) if str(g.get("kind", "")).startswith("data-dependent")]
    assert not data_dep, data_dep
    # exact on the calibration data, as promised, measured here and in the report
    assert np.abs(_run(model, x) - _run(res.model, x)).max() < 1e-5
    assert res.report["verification"]["against_original_on_data"]["max_abs"] < 1e-5


def test_without_channel_regimes_the_linearized_request_still_decides(tmp_path):
    """Plain collapse: A passes its negative input, B's channel 0 is off on every sample and is removed (the
    request it is exact against: the result equals the linearized model on the data)."""
    model, x = _model(), _calib(tmp_path)
    res = cp.collapse(model, collapse=["A"], prune_calib_dead=True, calib=str(tmp_path / "calib.npz"))
    data_dep = [g for g in res.report["pruning"].get("groups", []) if str(g.get("kind", "")).startswith("data-dependent")]
    assert [(g["channels_before"], g["channels_after"]) for g in data_dep] == [(2, 1)]
    assert np.abs(_run(res.requested, x) - _run(res.model, x)).max() < 1e-5


def test_nothing_removed_says_the_collapsed_sites_were_not_looked_at(tmp_path):
    """A random MobileNetV3-Small (--channel-regimes --prune-calib-dead): 198 dead SE-ReLU channels went to 0 and were
    removed, and the warning said "no ReLU ... channel is 0 on every calibration sample"."""
    model, _ = _model(), _calib(tmp_path)
    res = cp.collapse(model, method="easier", collapse=["A"], channel_regimes=True, prune_calib_dead=True,
                      calib=str(tmp_path / "calib.npz"))
    line = [w for w in res.report["warnings"] if "--prune-calib-dead removed no channel" in w]
    assert len(line) == 1 and "1 collapsed activation(s) are not looked at" in line[0]
    assert "--channel-regimes sends their dead channels, if any, to 0" in line[0]
