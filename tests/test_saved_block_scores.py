"""--save-scores after --method lacoot writes residual-block scores ("kind": "block"); given back as --scores
they select blocks for --remove-blocks without computing LaCoOT again (they were refused as unknown layer keys,
and --remove-blocks refused anything but --method lacoot)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from conftest import export_quiet
from models import build


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocks")
    torch.manual_seed(0)
    m = build("resnet18_tv", num_classes=10, width=16).eval()
    p = str(d / "m.onnx")
    export_quiet(m, p, (1, 3, 32, 32), dynamo=False)
    calib = d / "calib.npz"
    np.savez(calib, input=np.random.default_rng(1).standard_normal((12, 3, 32, 32)).astype(np.float32))
    scores = d / "scores.json"
    _cli(p, "--method", "lacoot", "--calib", str(calib), "--save-scores", str(scores), "--dry-run")
    return m, p, str(calib), str(scores), d


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "collapse_passes", *args, "-q"], capture_output=True, text=True)
    return proc


def test_saved_block_scores_remove_the_same_blocks_as_lacoot(saved):
    m, p, calib, scores, d = saved
    data = json.loads(open(scores).read())
    assert data["kind"] == "block" and len(data["scores"]) >= 4
    low = sorted(data["scores"].values())
    thr = (low[1] + low[2]) / 2
    a, b = d / "from_method.onnx", d / "from_file.onnx"
    r1 = _cli(p, "--method", "lacoot", "--calib", calib, "--remove-blocks", str(thr), "-o", str(a))
    r2 = _cli(p, "--scores", scores, "--remove-blocks", str(thr), "-o", str(b), "--report", str(d / "r.json"))
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    assert a.read_bytes() == b.read_bytes()
    rep = json.loads((d / "r.json").read_text())
    assert sorted(x["key"] for x in rep["blocks"] if x["removed"]) == sorted(
        k for k, v in data["scores"].items() if v <= thr)


def test_saved_block_scores_with_threshold_or_unknown_block_is_one_line(saved, tmp_path):
    _, p, _, scores, _ = saved
    r = _cli(p, "--scores", scores, "--threshold", "0.3", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "residual blocks, not activations" in r.stderr and len(r.stderr.splitlines()) == 1
    bad = tmp_path / "bad.json"
    data = json.loads(open(scores).read())
    data["scores"]["layer9.9"] = 0.0
    bad.write_text(json.dumps(data))
    r = _cli(p, "--scores", str(bad), "--remove-blocks", "0.1", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "'layer9.9' names no residual block" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_saved_block_scores_on_the_torch_module(saved):
    m, _, _, scores, _ = saved
    data = json.loads(open(scores).read())
    low = sorted(data["scores"].values())
    thr = (low[0] + low[1]) / 2
    res = cp.collapse(m, scores=scores, remove_blocks=thr, example_inputs=(torch.randn(1, 3, 32, 32),))
    assert [b["key"] for b in res.report["blocks"] if b["removed"]] == [
        k for k, v in data["scores"].items() if v <= thr]
    with pytest.raises(CollapseError, match="residual blocks, not activations"):
        cp.collapse(m, scores=scores, threshold=0.3, example_inputs=(torch.randn(1, 3, 32, 32),))
