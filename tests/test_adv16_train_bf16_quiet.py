"""A bfloat16 model is one line, not onnx-graphsurgeon's stdout warnings.

gs prints "Could not convert: BFLOAT16 ..." and "colored module is not installed ..." for every bf16 constant
it reads: 339 lines before the CLI's one-line error on a bf16 ResNet-18, ~1,300 from iterative_collapse's
speed-up predictions on a bf16 model. collapse_passes.onnx raises gs's default level to ERROR.
"""
import subprocess
import sys
import warnings

import pytest
import torch

import collapse_passes as cp
from collapse_passes.errors import CollapseError


@pytest.fixture()
def bf16_model(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval().bfloat16()
    p = tmp_path / "bf16.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 8, 8).bfloat16(),), str(p), dynamo=False, input_names=["input"])
    return p


def test_library_prints_nothing_on_a_bf16_model(bf16_model, capfd):
    with pytest.raises(CollapseError):   # onnxruntime CPU has no bf16 Conv: one CollapseError
        cp.collapse(str(bf16_model), collapse=["1"])
    out, _ = capfd.readouterr()
    assert "BFLOAT16" not in out and "colored" not in out


def test_cli_bf16_model_is_one_line(bf16_model, tmp_path):
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(bf16_model), "--collapse", "1", "-o",
                        str(tmp_path / "o.onnx")], capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, lines[:5]
    assert not (tmp_path / "o.onnx").exists()
