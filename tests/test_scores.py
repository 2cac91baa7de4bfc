"""Collapse scores computed by the tool: EASIER, TLC (bn / empirical / mixed), Layer Folding (prelu),
the torch-hook front end, determinism, and the CLI paths that use them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from collapse_passes.errors import CollapseError
from collapse_passes.scores import METHODS, compute_scores
from collapse_passes.scores.tlc import tlc_scores
from test_scores_helpers import bn_branches_model, dead_linear_cnn, export_ts, prelu_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dead_linear(tmp_path_factory):
    d = tmp_path_factory.mktemp("dl")
    net = dead_linear_cnn()
    folded = export_ts(net, d / "dl.onnx", (1, 2, 8, 8))
    with_bn = export_ts(net, d / "dl_bn.onnx", (1, 2, 8, 8), do_constant_folding=False)
    x = np.random.default_rng(0).standard_normal((48, 2, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", input=x)
    return {"net": net, "folded": folded, "bn": with_bn, "x": x, "npz": str(d / "calib.npz"), "dir": d}


def _two_lowest(res):
    return {k for k, _ in res.ranked()[:2]}


# ------------------------------------------------------------------------------------ API basics

def test_unknown_method_lists_valid_ones(dead_linear):
    with pytest.raises(CollapseError) as e:
        compute_scores("entropy", onnx.load(dead_linear["folded"]))
    for m in METHODS:
        assert m in str(e.value)


@pytest.mark.parametrize("method", ["easier", "lacoot", "tlc"])
def test_methods_needing_data_name_calib(dead_linear, method):
    with pytest.raises(CollapseError) as e:
        compute_scores(method, onnx.load(dead_linear["folded"]))
    assert "--calib" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ EASIER / TLC

@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_dead_and_linear_layers_score_lowest(dead_linear, method):
    model = onnx.load(dead_linear["folded"])
    before = model.SerializeToString()
    res = compute_scores(method, model, calib={"input": dead_linear["x"]})
    assert model.SerializeToString() == before  # the graph is untouched
    assert res.method == method and res.kind == "activation"
    assert list(res.scores) == ["relu0", "relu1", "relu2", "relu3"]
    assert _two_lowest(res) == {"relu2", "relu3"}
    assert res.scores["relu2"] < 1e-3 and res.scores["relu3"] < 1e-3
    assert min(res.scores["relu0"], res.scores["relu1"]) > 0.5
    assert all(0.0 <= v <= 1.0 for v in res.scores.values())
    d = res.details
    assert d["relu2"]["frac_dead"] == 1.0 and d["relu2"]["frac_linear"] == 0.0
    assert d["relu3"]["frac_linear"] == 1.0 and d["relu3"]["frac_dead"] == 0.0
    assert d["relu0"]["channels"] == 6 and len(d["relu0"]["p_on"]) == 6 and d["relu0"]["channel_axis"] == 1
    if method == "tlc":
        assert res.variant == "empirical"  # the exporter folded BN into Conv
        assert any("empirical" in n and "folded" in n for n in res.notes)
    json.dumps(res.as_dict())
    assert set(res.as_dict()) >= {"method", "variant", "kind", "scores", "details"}


def test_tlc_bn_variant_agrees_with_empirical_handbuilt():
    # BN output is N(beta, gamma^2) by construction: data-free and empirical TLC must agree
    model = bn_branches_model(gammas=[1.0, 2.0, 0.5, 1.0], betas=[0.0, 1.0, 1.5, -0.8])
    bn = compute_scores("tlc", model)
    assert bn.variant == "bn" and any("data-free" in n for n in bn.notes)
    x = np.random.default_rng(1).standard_normal((96, 4, 6, 6)).astype(np.float32)
    emp = tlc_scores(model, calib={"input": x}, variant="empirical")
    assert emp.variant == "empirical"
    assert [k for k, _ in bn.ranked()] == [k for k, _ in emp.ranked()]
    for k in bn.scores:
        assert abs(bn.scores[k] - emp.scores[k]) < 0.03
    assert bn.details["b2.relu"]["source"] == "bn" and bn.details["b2.relu"]["bn"] == "/b2/bn/BatchNormalization"


def test_tlc_bn_kept_export_ranks_like_empirical(dead_linear):
    bn = compute_scores("tlc", onnx.load(dead_linear["bn"]))
    assert bn.variant == "bn"
    emp = compute_scores("tlc", onnx.load(dead_linear["folded"]), calib={"input": dead_linear["x"]})
    assert _two_lowest(bn) == _two_lowest(emp) == {"relu2", "relu3"}


def test_tlc_mixed_variant_and_its_error(tmp_path):
    import torch

    from models import build

    torch.manual_seed(0)
    net = build("resnet18", width=4, in_channels=1).eval()
    path = export_ts(net, tmp_path / "r.onnx", (1, 1, 8, 8), do_constant_folding=False)
    model = onnx.load(path)
    with pytest.raises(CollapseError) as e:
        compute_scores("tlc", model)
    msg = str(e.value)
    assert "--calib" in msg and "no BatchNormalization right before" in msg and "layer1.0.relu2" in msg
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    res = compute_scores("tlc", model, calib={"input": x})
    assert res.variant == "mixed"
    assert res.details["layer1.0.relu1"]["source"] == "bn"
    assert res.details["layer1.0.relu2"]["source"] == "empirical"  # fed by the residual Add
    assert any("mixed" in n for n in res.notes)


def test_token_tensors_use_last_axis(tmp_path):
    import torch

    from models import build

    torch.manual_seed(0)
    net = build("swin_t", dim=16, depth=1, heads=2, patch=2, img_size=8, in_channels=1).eval()
    model = onnx.load(export_ts(net, tmp_path / "s.onnx", (1, 1, 8, 8)))
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    res = compute_scores("easier", model, calib={"input": x})
    d = res.details["blocks.0.mlp.act"]
    assert d["kind"] == "gelu" and d["channel_axis"] == 2 and d["channels"] == 64
    assert d["positions_per_channel"] == 6 * 16


@pytest.mark.parametrize("method", ["easier", "tlc", "lacoot"])
def test_scores_are_deterministic(dead_linear, tmp_path, method):
    if method == "lacoot":
        from test_scores_helpers import residual_net

        path = export_ts(residual_net(), tmp_path / "res.onnx", (1, 1, 8, 8))
        x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    else:
        path, x = dead_linear["folded"], dead_linear["x"]
    model = onnx.load(path)
    a = compute_scores(method, model, calib={"input": x}).as_dict()
    b = compute_scores(method, model, calib={"input": x}).as_dict()
    assert a == b


def test_easier_streams_in_batches(dead_linear):
    model = onnx.load(dead_linear["folded"])
    full = compute_scores("easier", model, calib=dead_linear["npz"])
    assert full.details["relu0"]["samples"] == 48
    part = compute_scores("easier", model, calib=dead_linear["npz"], calib_batches=3)
    assert part.details["relu0"]["samples"] == 3  # batch size 1 (the model has a static batch of 1)


# ------------------------------------------------------------------------------------ Layer Folding

def test_prelu_scores(tmp_path):
    model = onnx.load(export_ts(prelu_net(), tmp_path / "p.onnx", (1, 1, 8, 8)))
    res = compute_scores("prelu", model)
    assert res.variant == "slopes"
    assert set(res.scores) == {"act0", "act1", "act2"}  # the ReLU gets no score
    assert res.scores["act0"] == pytest.approx(0.05, abs=1e-6)
    assert res.scores["act1"] == pytest.approx(0.75, abs=1e-6)
    assert res.scores["act2"] == pytest.approx(0.9, abs=1e-6)  # LeakyRelu(0.1)
    assert res.details["act0"]["channels"] == 4 and res.details["act0"]["frac_foldable"] == 0.75
    assert any("relu: 1" in n for n in res.notes)


def test_prelu_on_model_without_prelu(dead_linear):
    with pytest.raises(CollapseError, match="PReLU"):
        compute_scores("prelu", onnx.load(dead_linear["folded"]))


# ------------------------------------------------------------------------------------ torch hooks

def test_torch_hooks_match_onnx(dead_linear):
    import torch

    from collapse_passes.scores.torch_hooks import module_scores

    net, x = dead_linear["net"], dead_linear["x"]
    batches = [torch.from_numpy(x[:20]), torch.from_numpy(x[20:])]
    easier = module_scores(net, "easier", batches)
    ref = compute_scores("easier", onnx.load(dead_linear["folded"]), calib={"input": x})
    assert list(easier.scores) == list(ref.scores)
    for k in ref.scores:
        assert abs(easier.scores[k] - ref.scores[k]) < 0.02
    tlc = module_scores(net, "tlc")  # data-free: torch.fx finds the BN before every ReLU
    assert tlc.variant == "bn"
    ref_bn = compute_scores("tlc", onnx.load(dead_linear["bn"]))
    for k in ref_bn.scores:
        assert tlc.scores[k] == pytest.approx(ref_bn.scores[k], abs=1e-6)
    with pytest.raises(CollapseError, match="calib_batches"):
        module_scores(net, "easier")
    with pytest.raises(CollapseError, match="valid methods"):
        module_scores(net, "nope")


def test_torch_hooks_inplace_and_prelu():
    import torch

    from collapse_passes.scores.torch_hooks import module_scores

    net = dead_linear_cnn()
    for i in range(4):
        getattr(net, f"relu{i}").inplace = True
    x = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    res = module_scores(net, "easier", [x])
    assert res.scores["relu2"] == 0.0 and res.scores["relu3"] == 0.0  # read before the in-place op
    assert res.scores["relu0"] > 0.5
    assert not net.training
    p = module_scores(prelu_net(), "prelu")
    assert p.scores["act1"] == pytest.approx(0.75) and "act3" not in p.scores


# ------------------------------------------------------------------------------------ CLI

def _main(argv, capsys):
    from collapse_passes.cli import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_easier_threshold_save_plot_and_reuse(dead_linear, tmp_path, capsys):
    s, p, r1, r2 = tmp_path / "s.json", tmp_path / "p.png", tmp_path / "r1.json", tmp_path / "r2.json"
    rc, out, err = _main([dead_linear["folded"], "--method", "easier", "--calib", dead_linear["npz"],
                          "--threshold", "0.01", "--save-scores", s, "--plot", p, "-o", tmp_path / "o.onnx",
                          "--report", r1], capsys)
    assert rc == 0, err
    saved = json.loads(s.read_text())
    assert saved["method"] == "easier" and set(saved["scores"]) == {"relu0", "relu1", "relu2", "relu3"}
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads(r1.read_text())
    collapsed = {a["key"] for a in rep["activations"] if a["collapsed"]}
    assert collapsed == {"relu2", "relu3"} and rep["passed"]
    assert rep["score_details"]["method"] == "easier"
    rc, out, err = _main([dead_linear["folded"], "--scores", s, "--threshold", "0.01", "-o", tmp_path / "o2.onnx",
                          "--report", r2], capsys)
    assert rc == 0, err
    rep2 = json.loads(r2.read_text())
    assert {a["key"] for a in rep2["activations"] if a["collapsed"]} == collapsed


def test_cli_tlc_dry_run(dead_linear, tmp_path, capsys):
    rc, out, err = _main([dead_linear["folded"], "--method", "tlc", "--calib", dead_linear["npz"], "--remove", "2",
                          "--dry-run"], capsys)
    assert rc == 0, err
    assert "dry run" in out and "variant empirical" in " ".join(out.split())
    assert not list(dead_linear["dir"].glob("*.collapsed.onnx"))


def _bad_calib_cases(x):
    return {
        "wrong name": ({"images": x}, "no array named 'input'"),
        "wrong shape": ({"input": x[:, :1]}, "shape"),
        "wrong dtype": ({"input": (x * 10).astype(np.int64)}, "dtype"),
        "too few samples": ({"input": x[:1]}, "at least 2 needed"),
        "nan": ({"input": np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32)}, "NaN"),
    }


@pytest.mark.parametrize("case", ["wrong name", "wrong shape", "wrong dtype", "too few samples", "nan"])
def test_cli_bad_calibration_exit_2(dead_linear, tmp_path, capsys, case):
    arrays, needle = _bad_calib_cases(dead_linear["x"][:4])[case]
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    out_model = tmp_path / "o.onnx"
    rc, out, err = _main([dead_linear["folded"], "--method", "easier", "--calib", npz, "--threshold", "0.1",
                          "-o", out_model], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out_model.exists()


def test_cli_subprocess_missing_calib_exit_2(dead_linear):
    proc = subprocess.run([sys.executable, "-m", "collapse_passes", dead_linear["folded"], "--method", "easier",
                           "--threshold", "0.1", "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--calib" in proc.stderr


def test_torch_hooks_tlc_untraceable_model_uses_hooks():
    import torch
    from torch import nn

    from collapse_passes.scores.torch_hooks import module_scores

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 4)
            self.gelu = nn.GELU()

        def forward(self, x):
            y = self.act(self.bn(self.conv(x)))
            if x.sum() > -1e9:
                y = y * 1.0
            return self.gelu(self.fc(y.mean(dim=(2, 3)).unsqueeze(1))).squeeze(1)

    net = Branchy().eval()
    with torch.no_grad():
        net.bn.bias.copy_(torch.tensor([5.0, -5.0, 0.0, 0.0]))
    with pytest.raises(CollapseError, match="calib_batches"):
        module_scores(net, "tlc")
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    res = module_scores(net, "tlc", [x])
    assert res.variant == "mixed"
    assert res.details["act"]["source"] == "bn" and res.details["act"]["bn"] == "bn"
    assert res.details["act"]["frac_dead"] == 0.25 and res.details["act"]["frac_linear"] == 0.25
    assert res.details["gelu"]["source"] == "empirical" and res.details["gelu"]["channel_axis"] == 2
