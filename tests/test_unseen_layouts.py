"""Real-world layouts the passes were not written against: torchvision-faithful MobileNetV3 (SE with
Hardsigmoid gate, Hardswish) and EfficientNet-B0 (SiLU, SE with SiLU inside and Sigmoid gate), exported
by both torch exporters with torchvision's init and BatchNorm statistics set from random data (outputs that
depend on the input); plus the bad-input cases found attacking them."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError, VerificationError
from collapse_passes.onnx.keys import module_path_from_scope_name
from conftest import export_quiet

TINY_V3 = dict(width_mult=0.25, num_classes=10, last_channel=64)
TINY_B0 = dict(width_mult=0.25, depth_mult=0.34, num_classes=10)
ACT_TYPES = ("ReLU", "Hardswish", "Hardsigmoid", "SiLU", "ReLU6")


def _build(name, kw, seed=0, zero_gamma=0.0, size=32):
    """torchvision's init with BatchNorm statistics set from random data (models.tv_init.calibrate_bn): with the
    fresh statistics the logits differ by ~1e-8 between inputs and every output comparison passes."""
    import torch

    from models import build
    from models.tv_init import calibrate_bn

    torch.manual_seed(seed)
    m = calibrate_bn(build(name, **kw), (8 if size <= 64 else 2, 3, size, size), seed=seed)
    if zero_gamma:   # constant channels (BN gamma 0, negative beta): exact pruning must remove them
        g = torch.Generator().manual_seed(seed + 1)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                k = torch.rand(mod.num_features, generator=g) < zero_gamma
                mod.weight.data[k] = 0.0
                mod.bias.data[k] = -1.0
    return m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(name, dynamo, zero_gamma=0.0) -> (path, torch module); cached per module."""
    d = tmp_path_factory.mktemp("unseen")
    cache = {}
    kws = {"mobilenet_v3_small": TINY_V3, "efficientnet_b0": TINY_B0}

    def get(name, dynamo, zero_gamma=0.0):
        key = (name, dynamo, zero_gamma)
        if key not in cache:
            m = _build(name, kws[name], zero_gamma=zero_gamma)
            p = export_quiet(m, d / f"{name}_{int(dynamo)}_{zero_gamma}.onnx", (1, 3, 32, 32), dynamo)
            cache[key] = (p, m)
        return cache[key]

    return get


def _run(model, x):
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _torch_act_paths(m):
    return [n for n, mod in m.named_modules() if type(mod).__name__ in ACT_TYPES]


# ----------------------------------------------------------------------------------------- keys

def test_scope_name_of_nested_containers():
    # torchvision's MobileNetV3/EfficientNet nest Sequentials: features.1 -> block -> block.0 -> block.0.2
    assert module_path_from_scope_name("/features/features.1/block/block.0/block.0.2/Relu") == "features.1.block.0.2"
    assert module_path_from_scope_name(
        "/features/features.2/features.2.0/block/block.2/scale_activation/HardSigmoid") \
        == "features.2.0.block.2.scale_activation"


@pytest.mark.parametrize("name", ["mobilenet_v3_small", pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_keys_are_torch_module_paths_on_both_exporters(tiny, name):
    (p_ts, m), (p_dyn, _) = tiny(name, False), tiny(name, True)
    k_ts = [d["key"] for d in cp.list_keys(p_ts)]
    k_dyn = [d["key"] for d in cp.list_keys(p_dyn)]
    assert k_ts == k_dyn
    assert all(k_ts) and len(set(k_ts)) == len(k_ts)
    # every collapsible activation module is one key (SE Sigmoid gates are known but never collapsed)
    want = [n for n in _torch_act_paths(m)]
    assert set(want) <= set(k_ts) | {n for n, mod in m.named_modules() if type(mod).__name__ == "Sigmoid"}
    assert set(k_ts) <= set(want)


# ------------------------------------------------------------------------------- collapse all

def _no_gates(keys):
    """Every key but the SE gates: a linearized gate makes its block quadratic in x (x * (a*mean(x) + b)), so with
    all of them the network is a polynomial of degree 2**blocks that overflows float32 on any input it responds to."""
    return [k for k in keys if not k.endswith("scale_activation")]


@pytest.mark.parametrize("dynamo", [False, True])
def test_collapse_every_activation_of_mobilenet_v3(tiny, dynamo):
    p, _ = tiny("mobilenet_v3_small", dynamo)
    keys = [d["key"] for d in cp.list_keys(p)]
    if not dynamo:   # the gates too: refused (NaN/Inf in the requested semantics), nothing written
        with pytest.raises(VerificationError, match="NaN/Inf"):
            cp.collapse(p, scores={k: 0.0 for k in keys}, threshold=0.5)
    keys = _no_gates(keys)
    r = cp.collapse(p, scores={k: 0.0 for k in keys}, threshold=0.5)
    rep = r.report
    assert rep["passed"] and rep["collapsed"] == len(keys)
    assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]
    assert rep["after"]["depth_nonlinear"] < rep["before"]["depth_nonlinear"]
    json.dumps(rep)   # the report is plain JSON (numpy bools once leaked into it)
    # a bias map is added only where a merge put the first bias into a per-position map
    maps = sum(1 for n in r.model.graph.node if n.op_type == "Add" and n.name.endswith("_bias_map"))
    assert maps <= sum("per-position" in m.get("reason", "") for m in rep["merges"])
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.all(np.isfinite(_run(r.model, x)))


@pytest.mark.slow
def test_collapse_every_activation_of_efficientnet(tiny):
    p, _ = tiny("efficientnet_b0", False)
    keys = [d["key"] for d in cp.list_keys(p)]   # EfficientNet's Sigmoid gates are no keys
    rep = cp.collapse(p, scores={k: 0.0 for k in keys}, threshold=0.5).report
    assert rep["passed"] and rep["collapsed"] == len(keys)
    assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]


@pytest.mark.slow
def test_mobilenet_v3_large_224_external_data(tmp_path):
    """Full width at 224x224, saved with external data, through the command line."""
    m = _build("mobilenet_v3_large", {}, size=224)
    p = export_quiet(m, tmp_path / "full.onnx", (1, 3, 224, 224), False)
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(p), str(ext), save_as_external_data=True, location="m.data")
    keys = [d["key"] for d in cp.list_keys(str(ext))]
    assert len(keys) == len(set(keys)) == 48
    # every third activation, gates kept: with all 42 others collapsed the linear map is so ill-conditioned that
    # float32 rounding differences (onnxruntime's NCHWc kernels vs plain ones) change the logits by 100%, and the
    # check refuses it (float64 second look)
    keys = _no_gates(keys)[::3]
    s = tmp_path / "s.json"
    s.write_text(json.dumps({"scores": {k: 0.0 for k in keys}}))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main([str(ext), "-o", str(out), "--scores", str(s), "--threshold", "0.5", "--report", str(rep), "-q"]) == 0
    r = json.loads(rep.read_text())
    assert r["passed"] and r["after"]["depth_ops"] < r["before"]["depth_ops"]
    onnx.checker.check_model(str(out))


# ------------------------------------------------------------------------- scores round trip

def test_easier_scores_saved_and_reused_select_the_same_sites(tiny, tmp_path):
    p, _ = tiny("mobilenet_v3_small", False)
    rng = np.random.default_rng(0)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    s, r1, r2 = tmp_path / "s.json", tmp_path / "r1.json", tmp_path / "r2.json"
    assert main([p, "--method", "easier", "--calib", str(calib), "--threshold", "0.05", "--save-scores", str(s),
                 "--report", str(r1), "--dry-run", "-q"]) == 0
    assert main([p, "--scores", str(s), "--threshold", "0.05", "--report", str(r2), "--dry-run", "-q"]) == 0
    sel = [sorted(a["key"] for a in json.loads(f.read_text())["activations"] if a["collapsed"]) for f in (r1, r2)]
    assert sel[0] == sel[1] and 0 < len(sel[0]) < len(json.loads(s.read_text())["scores"])


# ---------------------------------------------------------------------------------- pruning

@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_exact_pruning_through_se_blocks_keeps_outputs(tiny, dynamo):
    p, m = tiny("mobilenet_v3_small", dynamo, zero_gamma=0.3)
    keys = [d["key"] for d in cp.list_keys(p)]
    r = cp.collapse(p, scores={k: 1.0 for k in keys}, threshold=0.5)   # collapse nothing: pruning alone
    assert r.report["pruning"]["removed_channels"] > 0
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(r.model, x), _run(p, x), rtol=1e-4, atol=1e-5)


def test_prune_ratio_round_to_gives_valid_model(tiny):
    p, _ = tiny("mobilenet_v3_small", False)
    before = {n.name: n for n in onnx.load(p).graph.node}
    r = cp.collapse(p, collapse=["features.1.block.0.2"], prune_ratio=0.3, round_to=8, force=True)
    onnx.checker.check_model(r.model)
    ratio = r.report["pruning"]["ratio"]
    assert ratio["removed_channels"] > 0
    assert all(g["channels_after"] % 8 == 0 or g["channels_after"] == g["channels_before"] for g in ratio["groups"])
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert _run(r.model, x).shape == (1, 10) and before


# -------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw", [
    dict(collapse=[None]), dict(collapse=""), dict(collapse=",", ), dict(collapse=5),
    dict(scores={"features.0.2": 0.1}, remove=1.5), dict(scores={"features.0.2": 0.1}, remove=True),
    dict(scores={"features.0.2": 0.1}, threshold="0.3"),
    dict(method="lacoot", calib={"input": np.zeros((4, 3, 32, 32), np.float32)}, remove_blocks=math.nan),
    dict(method="easier", threshold=0.1, calib=12),
])
def test_api_bad_selection_is_collapse_error(tiny, kw):
    p, _ = tiny("mobilenet_v3_small", False)
    with pytest.raises(CollapseError):
        cp.collapse(p, **kw)


def test_api_accepts_numpy_scores_key_string_and_calib_array(tiny):
    p, _ = tiny("mobilenet_v3_small", False)
    r = cp.collapse(p, scores={"features.0.2": np.float32(0.1), "features.12.2": np.float64(0.9)}, threshold=0.5)
    assert r.report["collapsed"] == 1
    r = cp.collapse(p, collapse="features.0.2,classifier.1")
    assert r.report["collapsed"] == 2
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    r = cp.collapse(p, method="easier", calib=x, threshold=0.0)
    assert r.passed


@pytest.mark.parametrize("extra", [["--collapse", ""], ["--collapse", ","],
                                   ["--method", "lacoot", "--calib", "CALIB", "--remove-blocks", "nan"]])
def test_cli_bad_selection_one_line_exit_2_nothing_written(tiny, tmp_path, capsys, extra):
    p, _ = tiny("mobilenet_v3_small", False)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.zeros((4, 3, 32, 32), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    extra = [str(calib) if a == "CALIB" else a for a in extra]
    capsys.readouterr()
    assert main([p, "-o", str(out / "o.onnx")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert os.listdir(out) == []


def test_result_save_never_overwrites_the_input_or_its_external_data(tiny, tmp_path):
    p, _ = tiny("mobilenet_v3_small", False)
    src = tmp_path / "m.onnx"
    onnx.save(onnx.load(p), str(src), save_as_external_data=True, location="m.data", size_threshold=0)
    before = {f: (tmp_path / f).read_bytes() for f in ("m.onnx", "m.data")}
    r = cp.collapse(str(src), collapse=["features.0.2"])
    with pytest.raises(CollapseError, match="folder .*sub does not exist"):   # the system cannot resolve it
        r.save(tmp_path / "sub" / ".." / "m.onnx")
    (tmp_path / "sub").mkdir()   # now it names the input
    for target in (src, tmp_path / "m.data", tmp_path / "sub" / ".." / "m.onnx"):
        with pytest.raises(CollapseError, match="never overwritten"):
            r.save(target)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    out = r.save(tmp_path / "o.onnx")
    onnx.checker.check_model(str(out))
