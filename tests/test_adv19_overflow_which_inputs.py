"""The overflow refusal said "the requested semantics outputs NaN/Inf ... collapse fewer activations" without
saying on which check inputs: with --calib, the random inputs in the data's range (uniform over min..max, more
energy than the data) overflowed several MobileNetV3 requests while every calibration sample was fine (H36,
2026-11-29). It now names the inputs, in the order the check's description lists them."""
from __future__ import annotations

import numpy as np

from collapse_passes.core.runtime import nonfinite_request


def _outs(values):
    return [[np.asarray(v, np.float32)] for v in values]


def test_the_inputs_that_overflow_are_named_in_the_descriptions_order():
    orig = _outs([[1.0, 2.0]] * 4)
    req = _outs([[1.0, 2.0], [3.0, 4.0], [np.inf, 1.0], [np.nan, np.inf]])
    c = nonfinite_request(orig, req, ["y"], 4, "calibration data (2 samples) + 2 random input(s) in its range")
    assert not c.passed
    assert "3 of 8 values" in c.why
    assert "on check input(s) 3, 4 of 4 (calibration data (2 samples) + 2 random input(s) in its range, in that order)" \
        in c.why, c.why


def test_one_input_and_finite_requests():
    assert nonfinite_request(_outs([[1.0]]), _outs([[2.0]]), ["y"], 1, "x") is None
    c = nonfinite_request(_outs([[1.0]]), _outs([[np.inf]]), ["y"], 1, "x")
    assert "check input" not in c.why and "1 of 1 values" in c.why
    # NaN in the input model's own output is not the request's doing
    assert nonfinite_request(_outs([[np.nan]]), _outs([[np.nan]]), ["y"], 1) is None
