"""benchmarks/gpu_torch_check.py and gpu_check.py, the prepared GPU checks, without a GPU: their checks can fail.

Random weights with fresh or randomly set BatchNorm statistics give a MobileNet whose logits are the
same to ~1e-8 for every input, so an absolute error on them passes whatever the device computes. The
script calibrates BN from data, refuses outputs that barely depend on the input, and gates on the error
relative to the input-dependent part of the float64 reference."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("gpu_torch_check", os.path.join(ROOT, "benchmarks", "gpu_torch_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _case(collapsed: nn.Module, dense: nn.Module, x: torch.Tensor) -> dict:
    with torch.inference_mode():
        ref = copy.deepcopy(dense).double()(x.double())
    return {"name": "toy", "x": x, "collapsed": collapsed, "dense": dense, "ref_requested": ref, "ref_dense": ref}


def test_check_passes_a_right_result_and_fails_a_wrong_one():
    g = _script()
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    x = torch.randn(8, 3, 6, 6)
    assert g.check(_case(dense, dense, x), torch.device("cpu"))["ok"]
    wrong = copy.deepcopy(dense)
    with torch.no_grad():
        wrong[2].weight[0, 0] += 0.05                          # one weight off: a merge bug's size or less
    row = g.check(_case(wrong, dense, x), torch.device("cpu"))
    assert not row["ok"] and "relative error" in row["problems"][0]


def test_check_refuses_outputs_that_ignore_the_input_whatever_the_error():
    g = _script()
    torch.manual_seed(0)

    class Flat(nn.Module):       # a big constant plus 1e-9 of the input: what a fresh-BN MobileNet gives
        def forward(self, x):
            return 3.0 + 1e-9 * x.flatten(1)[:, :5]

    x = torch.randn(8, 3, 6, 6)
    row = g.check(_case(Flat(), Flat(), x), torch.device("cpu"))
    assert row["output_spread"] < g.MIN_SPREAD and not row["ok"]
    assert any("barely depend on the input" in p for p in row["problems"])


def test_a_randomize_bn_mobilenet_is_refused_and_a_calibrated_one_is_not():
    g = _script()
    from models import build
    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    fresh = build("mobilenet_v2", width_mult=0.5).eval()        # fresh BN statistics (mean 0, var 1)
    cal = calibrate_bn(copy.deepcopy(fresh), (8, 3, 32, 32), batches=2)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert g.spread(fresh.double()(x.double())) < g.MIN_SPREAD
        assert g.spread(cal.double()(x.double())) > 100 * g.MIN_SPREAD


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less path")
def test_without_cuda_one_line_and_exit_2(tmp_path, capsys):
    assert _script().main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and not os.listdir(tmp_path)


@pytest.mark.slow
def test_dry_run_runs_the_cpu_side_of_the_cifar_case(tmp_path):
    assert _script().main(["--dry-run", "--out", str(tmp_path), "--cases", "mobilenet_v2_cifar"]) == 0
    res = json.load(open(tmp_path / "gpu_torch_check.json"))
    (row,) = res["checks"]
    assert res["dry_run"] and row["ok"] and row["collapsed_keys"] == 33 and row["output_spread"] > 0.01
    assert row["rel_err_collapsed_vs_requested_f64"] < 1e-4 and res["rows"] == []


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tvm_gpu_check_gates_on_the_input_dependent_scale():
    """benchmarks/gpu_check.py: a model ignoring its input is refused; the error is relative to the
    outputs' input-dependent part (the ORT CPU outputs for two inputs), not absolute."""
    g = _gpu_check()
    feed = {"input": np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)}
    flat = lambda f: [np.float32(5.0) + np.float32(1e-8) * f["input"]]      # noqa: E731
    scale, spread = g.input_scale(flat, feed)
    row = {"output_spread": spread, "rel_err_vs_ort_cpu": g.relative_error(flat(feed), flat(feed), scale)}
    assert any("barely depend" in p for p in g._problems(row))
    live = lambda f: [np.tanh(f["input"]) + 5.0]                                # noqa: E731
    scale, spread = g.input_scale(live, feed)
    ref = live(feed)
    ok = {"output_spread": spread, "rel_err_vs_ort_cpu": g.relative_error([ref[0] + 1e-5], ref, scale)}
    bad = {"output_spread": spread, "rel_err_vs_ort_cpu": g.relative_error([ref[0] + 1e-2], ref, scale)}
    assert g._problems(ok) == [] and "rel_err_vs_ort_cpu" in g._problems(bad)[0]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the GPU-less path")
def test_tvm_gpu_check_without_a_gpu_one_line_and_exit_2(tmp_path, capsys):
    assert _gpu_check().main(["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU visible" in err[0] and not (tmp_path / "o").exists()
