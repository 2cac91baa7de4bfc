"""Selections that choose nothing are said: remove=0 (the 0 lowest scores) is refused in one line naming the
way out, on every entry (collapse() of torch and ONNX models, torch_backend, the CLI), and method='lacoot'
without remove_blocks (it scores blocks only, so nothing is removed or collapsed) gives a warning naming
remove_blocks, on both front ends. Both ran through before, changing nothing, with no warning."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.r = nn.ReLU()

    def forward(self, x):
        y = self.stem(x)
        return self.r(y + self.b1(y))


X = torch.randn(1, 3, 8, 8)


def _onnx(tmp_path):
    path = tmp_path / "res.onnx"
    torch.onnx.export(Res().eval(), (X,), str(path), input_names=["input"], dynamo=False)
    return path


@pytest.mark.parametrize("remove", [0, -1])
def test_remove_zero_is_refused_with_the_way_out(tmp_path, remove):
    m = Res().eval()
    for call in (lambda: cp.collapse(m, scores={"b1.1": 0.1}, remove=remove, example_inputs=(X,)),
                 lambda: cp.collapse(str(_onnx(tmp_path)), scores={"b1.1": 0.1}, remove=remove),
                 lambda: cp.torch_backend(scores={"b1.1": 0.1}, remove=remove)):
        with pytest.raises(CollapseError, match=r"remove \(--remove\) must be an integer >= 1.*leave it out"):
            call()


def test_cli_remove_zero_exits_2(tmp_path):
    path = _onnx(tmp_path)
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"scores": {"b1.1": 0.1}}))
    out = tmp_path / "out.onnx"
    p = subprocess.run([sys.executable, "-m", "collapse_passes", str(path), "--scores", str(scores), "--remove", "0",
                        "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and "--remove must be >= 1" in p.stderr + p.stdout and not out.exists(), p.stderr


def test_lacoot_without_remove_blocks_warns_on_both_front_ends(tmp_path):
    torch.manual_seed(0)
    m = Res().eval()
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    rt = cp.collapse(m, method="lacoot", calib=calib, example_inputs=(X,)).report
    path = tmp_path / "res.onnx"
    torch.onnx.export(m, (X,), str(path), input_names=["input"], dynamo=False)
    ro = cp.collapse(str(path), method="lacoot", calib={"input": torch.cat(calib).numpy()}).report
    for rep in (rt, ro):
        assert rep["blocks"] and not any(b["removed"] for b in rep["blocks"]), rep["blocks"]
        assert any("none removed" in w and "remove_blocks=T" in w for w in rep["warnings"]), rep["warnings"]
    # with remove_blocks there is no such warning
    rt = cp.collapse(m, method="lacoot", calib=calib, remove_blocks=1e9, example_inputs=(X,)).report
    assert all(b["removed"] for b in rt["blocks"]) and not any("none removed" in w for w in rt["warnings"])
