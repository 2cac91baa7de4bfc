"""Residual blocks (onnx.blocks), the LaCoOT score, and the remove_blocks pass end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from collapse_passes.errors import CollapseError
from collapse_passes.onnx.blocks import find_residual_blocks
from collapse_passes.onnx.graph import node_key_names, to_graph
from collapse_passes.scores import compute_scores
from test_scores_helpers import export_ts, residual_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def resnet_tiny(tmp_path_factory):
    import torch

    from models import build

    d = tmp_path_factory.mktemp("rb")
    torch.manual_seed(0)
    net = build("resnet18", width=4, in_channels=1).eval()
    return {"ts": export_ts(net, d / "r.onnx", (1, 1, 8, 8)),
            "bn": export_ts(net, d / "r_bn.onnx", (1, 1, 8, 8), do_constant_folding=False),
            "dynamo": export_ts(net, d / "r_dyn.onnx", (1, 1, 8, 8), dynamo=True)}


@pytest.fixture(scope="module")
def zeroed(tmp_path_factory):
    d = tmp_path_factory.mktemp("zb")
    path = export_ts(residual_net(zero_block=1), d / "res.onnx", (1, 1, 8, 8))
    x = np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", input=x)
    return {"model": path, "npz": str(d / "calib.npz"), "x": x, "dir": d}


# ------------------------------------------------------------------------------------ find blocks

@pytest.mark.parametrize("variant", ["ts", "bn", "dynamo"])
def test_find_residual_blocks_resnet(resnet_tiny, variant):
    model = onnx.load(resnet_tiny[variant])
    blocks = find_residual_blocks(to_graph(model), node_key_names(model))
    assert [b.key for b in blocks] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                                       "layer4.0", "layer4.1"]
    kinds = {b.key: b.skip_kind for b in blocks}
    assert [k for k, v in kinds.items() if v == "projection"] == ["layer2.0", "layer3.0", "layer4.0"]
    proj = blocks[2]
    assert proj.projection[0].op == "Conv"
    assert [n.op for n in proj.projection] == (["Conv", "BatchNormalization"] if variant == "bn" else ["Conv"])
    ident = blocks[1]
    assert ident.identity and ident.skip is ident.input
    assert ident.input.name == blocks[0].output.name or ident.input.inputs[0].op == "Relu"  # post-add ReLU between
    assert ident.add.name in ident.keys


def test_dynamo_blocks_without_metadata_use_add_names(resnet_tiny):
    model = onnx.load(resnet_tiny["dynamo"])
    blocks = find_residual_blocks(to_graph(model))
    assert all(b.key == b.add.name for b in blocks) and len(blocks) == 8


def test_find_blocks_transformer_and_plain_cnn(tmp_path):
    import torch

    from models import build

    torch.manual_seed(0)
    swin = build("swin_t", dim=16, depth=2, heads=2, patch=2, img_size=8, in_channels=1).eval()
    blocks = find_residual_blocks(to_graph(onnx.load(export_ts(swin, tmp_path / "s.onnx", (1, 1, 8, 8)))))
    assert [b.key for b in blocks] == ["blocks.0/Add", "blocks.0/Add_1", "blocks.1/Add", "blocks.1/Add_1"]
    assert all(b.identity for b in blocks)
    vgg = build("vgg16_bn", width=4, pools=3, in_channels=1).eval()
    model = onnx.load(export_ts(vgg, tmp_path / "v.onnx", (1, 1, 8, 8)))
    assert find_residual_blocks(to_graph(model)) == []
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(CollapseError, match="no residual blocks"):
        compute_scores("lacoot", model, calib={"input": x})


# ------------------------------------------------------------------------------------ LaCoOT

def test_lacoot_scores_zeroed_branch_lowest(zeroed):
    model = onnx.load(zeroed["model"])
    before = model.SerializeToString()
    res = compute_scores("lacoot", model, calib={"input": zeroed["x"]})
    assert model.SerializeToString() == before
    assert res.kind == "block" and res.method == "lacoot"
    assert list(res.scores) == ["layers.0", "layers.1", "layers.2"]
    assert res.ranked()[0][0] == "layers.1"
    assert res.scores["layers.1"] < 1e-6
    assert min(res.scores["layers.0"], res.scores["layers.2"]) > 0.05
    d = res.details["layers.0"]
    assert d["skip"] == "identity" and d["samples"] == 48 and d["dim"] == 4 * 8 * 8 and d["search_dim"] == 4 * 8 * 8  # d <= 8n: own coordinates
    # the paired coupling bounds the distance: score <= relative branch RMS
    assert d["score"] <= d["relative_branch_rms"] + 1e-9
    json.dumps(res.as_dict())


def test_lacoot_projection_blocks_get_no_score(resnet_tiny):
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    res = compute_scores("lacoot", onnx.load(resnet_tiny["ts"]), calib={"input": x})
    assert set(res.scores) == {"layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"}
    assert res.details["layer2.0"]["score"] is None and "projection" in res.details["layer2.0"]["reason"]
    assert any("projection shortcut get no score" in n for n in res.notes)
    assert any("32 or more" in n for n in res.notes)


def test_lacoot_scores_do_not_depend_on_the_point_budget(zeroed, monkeypatch):
    """Over the memory budget the blocks take more passes over the calibration data (the first one in
    feature slices here): the scores are those of one pass."""
    from collapse_passes.scores import lacoot

    full = compute_scores("lacoot", onnx.load(zeroed["model"]), calib={"input": zeroed["x"]})
    monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", 48 * 4 * 8 * 8 * 8 // 2)
    res = compute_scores("lacoot", onnx.load(zeroed["model"]), calib={"input": zeroed["x"]})
    assert any("passes over the calibration data" in n and "layers.0" in n for n in res.notes)
    assert res.ranked()[0][0] == "layers.1"
    for k in full.scores:
        assert res.scores[k] == pytest.approx(full.scores[k], rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------------ the pass

def _ctx(model, keys):
    from collapse_passes.onnx.context import OnnxContext

    return OnnxContext(graph=to_graph(model), remove_blocks=set(keys))


def test_pass_unknown_key_suggests(resnet_tiny):
    from collapse_passes.onnx.passes.remove_blocks import RemoveResidualBlocks

    with pytest.raises(CollapseError) as e:
        RemoveResidualBlocks()(_ctx(onnx.load(resnet_tiny["ts"]), ["layer1.O"]))
    assert "unknown residual block 'layer1.O'" in str(e.value) and "'layer1.0'" in str(e.value)


def test_pass_removes_identity_and_projection_blocks(resnet_tiny):
    from collapse_passes.onnx.graph import to_model
    from collapse_passes.onnx.passes.remove_blocks import RemoveResidualBlocks
    from collapse_passes.verify import session

    model = onnx.load(resnet_tiny["ts"])
    ctx = _ctx(model, ["layer1.0", "layer1.1", "layer2.0", "/layer4/layer4.1/Add"])  # Add names work too
    res = RemoveResidualBlocks()(ctx)
    assert res.modified and len(res.notes) == 4
    assert any("layer2.0 by its projection shortcut (Conv)" in n for n in res.notes)
    out = to_model(ctx.graph, model)
    onnx.checker.check_model(out)
    names = {n.name for n in out.graph.node}
    assert "/layer1/layer1.0/conv1/Conv" not in names and "/layer2/layer2.0/conv1/Conv" not in names
    assert "/layer2/layer2.0/shortcut/shortcut.0/Conv" in names      # the projection stays
    assert "/layer1/layer1.0/relu2/Relu" in names                    # the post-add ReLU stays
    left = find_residual_blocks(to_graph(out))
    assert [b.key for b in left] == ["layer2.1", "layer3.0", "layer3.1", "layer4.0"]
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    assert session(out).run(None, {"input": x})[0].shape == (1, 10)
    assert not RemoveResidualBlocks()(_ctx(model, [])).modified


def test_cli_lacoot_remove_blocks(zeroed):
    out, rep = zeroed["dir"] / "out.onnx", zeroed["dir"] / "rep.json"
    proc = subprocess.run([sys.executable, "-m", "collapse_passes", zeroed["model"], "--method", "lacoot", "--calib",
                           zeroed["npz"], "--remove-blocks", "0.01", "-o", str(out), "--report", str(rep)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(rep.read_text())
    assert [b["key"] for b in report["blocks"] if b["removed"]] == ["layers.1"]
    assert report["passed"] and report["verification"]["against_requested"]["passed"]
    # the removed branch was exactly zero: the result still computes the original function
    assert report["verification"]["against_original"]["max_abs"] < 1e-4
    assert any("replaced residual block layers.1 by its identity skip" in n for n in report["notes"])
    result = onnx.load(str(out))
    convs = [n for n in result.graph.node if n.op_type == "Conv"]
    assert not any("layers.1/conv" in n.name for n in convs)
    assert len([n for n in result.graph.node if n.op_type == "Add"]) <= 2


def test_cli_remove_blocks_needs_lacoot(zeroed):
    proc = subprocess.run([sys.executable, "-m", "collapse_passes", zeroed["model"], "--method", "easier", "--calib",
                           zeroed["npz"], "--remove-blocks", "0.01", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "--remove-blocks needs --method lacoot" in proc.stderr
