"""The gate does not pass a collapse whose requested semantics overflows to NaN/Inf where the input model
is finite (matching NaNs compared nothing): it fails with the reason, on both front ends."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import VerificationError
from conftest import export_quiet


class Overflow(nn.Module):
    """relu(x - 1e30) is 0 for any sane x, so the model is finite; linearized, 1e20 * -1e30 overflows."""

    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(4))
            self.a.bias.fill_(-1e30)
            self.b.weight.fill_(1e20)
            self.b.bias.fill_(0.5)

    def forward(self, x):
        return self.b(self.r(self.a(x)))


def test_overflowing_request_fails_the_gate_onnx(tmp_path):
    m = Overflow().eval()
    path = export_quiet(m, tmp_path / "m.onnx", (1, 4), dynamo=False)
    with pytest.raises(VerificationError, match="requested semantics outputs NaN/Inf in .* where the input model"):
        cp.collapse(path, collapse=["r"])
    forced = cp.collapse(path, collapse=["r"], force=True)
    assert not forced.passed and forced.report["verification"]["against_requested"]["why"]
    assert cp.collapse(path).passed   # nothing collapsed: finite, passes


def test_overflowing_request_fails_the_gate_torch():
    m = Overflow().eval()
    with pytest.raises(VerificationError, match="requested semantics outputs NaN/Inf"):
        cp.collapse(m, collapse=["r"], example_inputs=(torch.randn(1, 4),))


def test_cli_exit_1_and_the_reason(tmp_path):
    import subprocess
    import sys

    path = export_quiet(Overflow().eval(), tmp_path / "m.onnx", (1, 4), dynamo=False)
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "collapse_passes", path, "--collapse", "r", "-o", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "NaN/Inf" in r.stderr and not out.exists()
