"""Adversarial round 19 (H36): MobileNetV3 / EfficientNet layouts through both front ends.

A border-inexact merge (``allow_border_approx``) on a request that is ill-conditioned in float32 (a random
EfficientNetV2-S with its stem SiLU collapsed: outputs ~1e4, float32 1-50 % off float64) was accepted by the
float64 second look's conditioning rule ("as close as float32 gets"), since the border error cannot be told
from float32 rounding there: the approximation's own gate was skipped, so ``approx_max_error=0.001`` let a
result 1.7e4 off through and no "border approximation" warning gave its error. The tiny model below has the
same shape of problem: a padded conv pair merged approximately, then ``relu(y + C) - C`` (C = 1e6), which
float32 rounds to 1/16 and float64 does not.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp


class _BorderThenCancel(nn.Module):
    def __init__(self, c: float = 1e6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.keep = nn.ReLU()
        self.c = c
        with torch.no_grad():   # mostly the centre tap: the border error stays small next to float32's rounding
            self.conv1.weight.mul_(0.01)
            self.conv1.weight[:, :, 1, 1] = torch.randn(4, 3)

    def forward(self, x):
        y = self.conv2(self.act(self.conv1(x)))
        return self.keep(y + self.c) - self.c


def _model():
    torch.manual_seed(0)
    return _BorderThenCancel().eval(), torch.randn(1, 3, 16, 16)


@pytest.fixture()
def onnx_path(tmp_path):
    m, x = _model()
    p = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(p), dynamo=False, input_names=["input"])
    return str(p)


def test_onnx_approx_max_error_applies_on_an_ill_conditioned_request(onnx_path):
    with pytest.raises(cp.VerificationError, match="approx_max_error"):
        cp.collapse(onnx_path, collapse=["act"], allow_border_approx=True, approx_max_error=1e-3)
    r = cp.collapse(onnx_path, collapse=["act"], allow_border_approx=True)   # opted in, no limit: passes, error said
    assert r.report["approximate"] and r.passed
    assert any(w.startswith("border approximation: max abs error") for w in r.report["warnings"]), r.report["warnings"]
    assert not any("as close as float32 gets" in w for w in r.report["warnings"])


def test_torch_approx_max_error_applies_on_an_ill_conditioned_request():
    m, x = _model()
    with pytest.raises(cp.VerificationError, match="approx_max_error"):
        cp.collapse(m, collapse=["act"], allow_border_approx=True, approx_max_error=1e-3, example_inputs=(x,))
    r = cp.collapse(m, collapse=["act"], allow_border_approx=True, example_inputs=(x,))
    assert r.report["approximate"] and r.passed
    assert any(w.startswith("border approximation: max abs error") for w in r.report["warnings"]), r.report["warnings"]


def test_cli_refusal_names_the_limit(onnx_path, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o.onnx"
    p = subprocess.run([sys.executable, "-m", "collapse_passes", onnx_path, "--collapse", "act", "--allow-border-approx",
                        "--approx-max-error", "0.001", "-o", str(out), "-q"], capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "approx_max_error 0.001" in p.stderr and not out.exists()


@pytest.mark.parametrize("kw", [dict(threshold=0.2), dict(remove=3)])
def test_threshold_without_scores_is_refused_on_both_front_ends(onnx_path, kw):
    """The CLI refuses --threshold / --remove without --scores or --method; collapse(m, threshold=0.2) ran,
    collapsed nothing and said only "no scores given" in a note."""
    with pytest.raises(cp.CollapseError, match="chooses activations by their scores"):
        cp.collapse(onnx_path, **kw)
    m, x = _model()
    with pytest.raises(cp.CollapseError, match="chooses activations by their scores"):
        cp.collapse(m, example_inputs=(x,), **kw)
    assert cp.collapse(onnx_path, scores={"act": 0.1}, **kw).report["collapsed"] == 1   # with scores it chooses
