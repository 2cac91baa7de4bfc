"""Merge-planner settings with merging off were ignored silently (H3, adversarial round 12).

`--no-merge --allow-border-approx`, `--no-merge --cost measured` (which even timed every op for nothing) and,
in the library, `approx_max_error` without `allow_border_approx` ran and exited 0 as if the flag had not
been given. They are refused now in config.check_settings, the one check every front end runs: one line,
exit 2, nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import make_model, rnd, vinfo


def _chain(path):
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="act"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["y"], name="conv1")]
    inits = {"w0": rnd(4, 3, 3, 3), "b0": rnd(4, seed=1), "w1": rnd(5, 4, 1, 1, seed=2), "b1": rnd(5, seed=3)}
    onnx.save(make_model(nodes, [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 5, 8, 8])], inits), str(path))
    return str(path)


@pytest.mark.parametrize("flags,named", [
    (["--no-merge", "--allow-border-approx"], "--allow-border-approx"),
    (["--no-merge", "--cost", "measured"], "--cost measured"),
    (["--no-merge", "--allow-border-approx", "--approx-max-error", "0.1"], "--allow-border-approx"),
])
def test_cli_refuses_merge_settings_with_no_merge(tmp_path, capsys, flags, named):
    p = _chain(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    capsys.readouterr()
    assert main([p, "--collapse", "act", "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "--no-merge" in err, err
    assert not out.exists()


@pytest.mark.parametrize("kw,named", [
    (dict(merge=False, allow_border_approx=True), "allow_border_approx"),
    (dict(merge=False, cost="measured"), "cost"),
    (dict(merge=False, per_op_overhead=5.0), "per_op_overhead"),
    (dict(approx_max_error=0.1), "allow_border_approx"),
])
def test_library_refuses_settings_that_would_be_ignored(tmp_path, kw, named):
    with pytest.raises(CollapseError, match=named):
        cp.collapse(_chain(tmp_path / "m.onnx"), collapse=["act"], **kw)


def test_per_op_overhead_still_prices_target_speedup_without_merging(tmp_path):
    """--target-speedup prices ops with per_op_overhead, merging or not: that combination stays allowed."""
    res = cp.collapse(_chain(tmp_path / "m.onnx"), scores={"act": 0.0}, target_speedup=1.01, merge=False,
                      per_op_overhead=1000.0)
    assert res.passed


def test_torch_front_end_refuses_them_too():
    import torch

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1)).eval()
    with pytest.raises(CollapseError, match="allow_border_approx"):
        cp.collapse(m, collapse=["1"], example_inputs=(torch.randn(1, 3, 8, 8),), merge=False,
                    allow_border_approx=True)
