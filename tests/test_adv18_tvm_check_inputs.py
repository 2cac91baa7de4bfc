"""TVM's output check draws its input as the gate does (the sizes the gate checked dynamic dims at, token ids over
their table): at 1 x 1 a 3x3 conv reads only its centre tap, so a TVM build wrong on kernel borders passed."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.cli import main  # noqa: E402
from models.export import export_onnx  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.r, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c2(self.r(self.c1(x)))


@pytest.fixture(scope="module")
def dyn_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(Net().eval(), tmp_path_factory.mktemp("m") / "m.onnx", (1, 3, 12, 12), dynamo=False,
                       dynamic_axes={"input": {2: "h", 3: "w"}})


def test_result_keeps_the_gate_sizes(dyn_path):
    res = cp.collapse(dyn_path, collapse=["r"])
    sizes = res.check_shapes["input"]
    assert sizes[:2] == [1, 3] and sizes[2] >= 9 and sizes[3] >= 9


def test_tvm_check_runs_at_the_gate_sizes(dyn_path, tmp_path):
    rep = tmp_path / "r.json"
    rc = main([dyn_path, "-o", str(tmp_path / "o.onnx"), "--collapse", "r", "--target", "cpu", "--tune-trials", "0",
               "--tvm-repeat", "2", "--report", str(rep), "-q"])
    assert rc == 0
    tvm = json.loads(rep.read_text())["tvm"]
    note = next(n for n in tvm["notes"] if "dynamic input size" in n)
    size = cp.collapse(dyn_path, collapse=["r"]).check_shapes["input"]
    assert f"input {'x'.join(map(str, size))}" in note, note


def test_standalone_tvm_entry_draws_at_the_check_sizes(dyn_path):
    import onnx

    from collapse_passes.core.runtime import check_shapes
    from tvm_integration.__main__ import random_inputs

    model = onnx.load(dyn_path)
    assert list(random_inputs(model)["input"].shape) == check_shapes(model)["input"]


def test_tvm_mismatch_names_a_way_out(dyn_path, tmp_path, monkeypatch, capsys):
    """A TVM build that differs from onnxruntime ends the run (exit 1, nothing exported): the line says what the
    user can do (it gave the numbers only)."""
    from tvm_integration import cli_hook

    monkeypatch.setattr(cli_hook, "_compare", lambda *a, **k: {"ok": False, "max_abs_err": 1.0})
    out = tmp_path / "o.onnx"
    rc = main([dyn_path, "-o", str(out), "--collapse", "r", "--target", "cpu", "--tune-trials", "0",
               "--tvm-repeat", "1", "--export", str(tmp_path / "lib"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and out.exists() and not (tmp_path / "lib").exists()
    line = next(ln for ln in err.splitlines() if "differs from onnxruntime" in ln)
    assert "onnxruntime" in line and "--target" in line and "--rtol" in line
