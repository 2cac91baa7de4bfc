"""Three-regime scores (off / linear / saturated, scores/_common.layer_summary) on activations whose bounds
the authors did not try (adversarial round 17): a HardSigmoid with alpha < 0 (decreasing: 1 below
(1-beta)/alpha, 0 above -beta/alpha) counted every input of its linear range as both 'off' and
'saturated', so a channel half linear and half at 0 scored 0.5 bits instead of 1 (EASIER and TLC), and
looked more collapsible than it is; alpha = 0 (a constant) scored as if it had a kink at 0."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

from collapse_passes.core.activations import activation_kink, upper_bound
from collapse_passes.scores.easier import easier_scores
from collapse_passes.scores.tlc import tlc_scores

C = 2


def _model(alpha, beta=0.5):
    w = np.eye(C, dtype=np.float32).reshape(C, C, 1, 1)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node("HardSigmoid", ["c"], ["a"], name="hsig", alpha=alpha, beta=beta),
             h.make_node("Conv", ["a", "w"], ["y"], name="conv2")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["n", C, 1, 1])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["n", C, 1, 1])], [nh.from_array(w, "w")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _calib(a, b):
    """channel 0 half at `a`, half at `b`; channel 1 the same (64 samples)."""
    x = np.zeros((64, C, 1, 1), np.float32)
    x[:32] = a
    x[32:] = b
    return {"x": x}


def test_decreasing_hardsigmoid_has_its_linear_range_between_kink_and_upper():
    assert (activation_kink("hardsigmoid", {"alpha": -0.2, "beta": 0.5}),
            upper_bound("hardsigmoid", {"alpha": -0.2, "beta": 0.5})) == (-2.5, 2.5)
    assert (activation_kink("hardsigmoid", {"alpha": 0.2, "beta": 0.5}),
            upper_bound("hardsigmoid", {"alpha": 0.2, "beta": 0.5})) == (-2.5, 2.5)


def test_easier_decreasing_hardsigmoid_half_linear_half_off_is_one_bit():
    # alpha -0.2: x = 0 linear (0.5), x = 5 gives 0, x = -5 gives 1: each mix is two regimes half the time
    for other in (5.0, -5.0):
        res = easier_scores(_model(-0.2), calib=_calib(0.0, other))
        assert abs(res.scores["hsig"] - 1.0) < 1e-6, (other, res.scores)
    always_linear = easier_scores(_model(-0.2), calib=_calib(-1.0, 1.0))
    assert always_linear.scores["hsig"] < 1e-6
    assert always_linear.details["hsig"]["frac_linear"] == 1.0   # was 0 (every channel 'dead' and 'saturated')
    assert always_linear.details["hsig"]["frac_dead"] == 0.0


def test_easier_increasing_hardsigmoid_unchanged():
    assert abs(easier_scores(_model(0.2), calib=_calib(0.0, 5.0)).scores["hsig"] - 1.0) < 1e-6
    assert easier_scores(_model(0.2), calib=_calib(-1.0, 1.0)).scores["hsig"] < 1e-6


def test_constant_hardsigmoid_scores_zero():
    # alpha 0: clip(beta, 0, 1) whatever x, its 'linear regime' 0*x + beta is exact everywhere
    assert easier_scores(_model(0.0), calib=_calib(-3.0, 3.0)).scores["hsig"] < 1e-6


def test_tlc_empirical_decreasing_hardsigmoid():
    rng = np.random.default_rng(0)
    x = (0.5 * rng.standard_normal((256, C, 1, 1))).astype(np.float32)   # inside (-2.5, 2.5) but 6e-7
    res = tlc_scores(_model(-0.2), calib={"x": x})
    assert res.scores["hsig"] < 0.15, res.scores   # was ~0 only by accident: p_off = p_above = 1
    assert res.details["hsig"]["frac_linear"] == 1.0
